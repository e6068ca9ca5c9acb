"""Loading a layer's weight from its canonical (checkpoint) arrays in a state_dict."""
from __future__ import annotations

from typing import Callable, Sequence

from torch import nn


class CanonicalWeightModule(nn.Module):
    """Base for layers whose state_dict holds a weight format's canonical arrays (never the
    kernel layout). Subclasses set STATE_KEYS, implement `_weight_from_state(*arrays)` (which
    validates untrusted data and raises ValueError) and `_set_weight(weight)`."""

    STATE_KEYS: Sequence[str] = ()
    _weight_from_state: Callable

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        present = [prefix + k in state_dict for k in self.STATE_KEYS]
        if all(present):
            try:
                weight = self._weight_from_state(*(state_dict[prefix + k] for k in self.STATE_KEYS))
            except ValueError as exc:
                error_msgs.append(f"{prefix}weight: {exc}")
            else:
                if weight.shape != (self.out_features, self.in_features):
                    error_msgs.append(f"{prefix}weight: shape {weight.shape} does not match "
                                      f"({self.out_features}, {self.in_features})")
                else:
                    self._set_weight(weight)
        else:
            missing_keys.extend(prefix + k for k, ok in zip(self.STATE_KEYS, present) if not ok)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        # The parent marks our canonical keys as unexpected: they are ours.
        ours = {prefix + k for k in self.STATE_KEYS}
        unexpected_keys[:] = [k for k in unexpected_keys if k not in ours]
