"""Range observers: watch tensors, then give quantization parameters (scale, zero point).

The three range-setting methods of Nagel et al. 2021, "A White Paper on Neural Network
Quantization" (sec. 3.4), also in Wu et al. 2020, "Integer Quantization for Deep Learning
Inference" (percentile calibration):
- ``MinMaxObserver``: the running min/max (nothing is clipped).
- ``PercentileObserver``: clip at a percentile of |x| (symmetric) or of x (both tails).
- ``MSEObserver``: shrink the min/max range by the factor, from a grid, that minimizes the mean
  squared quantization error of the observed data.
Percentile and MSE keep a bounded uniform random sample of the data (``max_samples`` values in
all, split over the channels); while everything observed fits, the sample is the data itself.

Ranges always include zero. Symmetric: signed narrow range [-(2^(b-1)-1), 2^(b-1)-1],
scale = max|range| / qmax, zero point 0 (what sparseinfer's Int8 weights use). Asymmetric:
[0, 2^b - 1], scale = (hi - lo) / (2^b - 1), zero point = round(-lo / scale).
"""
from __future__ import annotations

from typing import Optional

import torch

from .fake_quant import quant_range


def _range_to_qparams(lo: torch.Tensor, hi: torch.Tensor, qmin: int, qmax: int,
                      symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    if symmetric:
        scale = torch.maximum(-lo, hi) / qmax
        return scale.float(), torch.zeros(scale.shape, dtype=torch.int32)
    scale = (hi - lo) / (qmax - qmin)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero_point = torch.round(qmin - lo / safe).clamp(qmin, qmax)
    return scale.float(), zero_point.to(torch.int32)


def quantization_mse(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int,
                     qmax: int) -> torch.Tensor:
    """Mean squared error of quantize-dequantize per row of x [C, n] (scale, zero_point [C])."""
    s = scale.to(x.dtype).unsqueeze(1)
    zp = zero_point.to(x.dtype).unsqueeze(1)
    safe = torch.where(s > 0, s, torch.ones_like(s))
    deq = ((torch.round(x / safe) + zp).clamp(qmin, qmax) - zp) * s  # as fake_quantize
    return (deq - x).pow(2).mean(1)


class Observer:
    """Base observer: running min/max per channel (or of the whole tensor).

    Args:
        bits: 2..16.
        symmetric: signed range with zero point 0, else unsigned with a zero point.
        per_channel: one (scale, zero point) per index of dimension ``axis``.
        axis: the channel dimension when per_channel.
    """

    def __init__(self, bits: int = 8, symmetric: bool = True, per_channel: bool = False, axis: int = 0):
        self.qmin, self.qmax = quant_range(bits, symmetric)
        if not isinstance(per_channel, bool):
            raise TypeError(f"per_channel must be a bool, got {type(per_channel).__name__}")
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise TypeError(f"axis must be an int, got {type(axis).__name__}")
        self.bits, self.symmetric, self.per_channel, self.axis = bits, symmetric, per_channel, axis
        self.reset()

    def config(self) -> dict:
        """The constructor arguments (clone with ``type(obs)(**obs.config())``)."""
        return dict(bits=self.bits, symmetric=self.symmetric, per_channel=self.per_channel, axis=self.axis)

    def clone(self, **overrides) -> "Observer":
        """A fresh observer (nothing observed) with this one's settings, some overridden."""
        return type(self)(**{**self.config(), **overrides})

    def reset(self) -> None:
        """Forget everything observed."""
        self.min_val: Optional[torch.Tensor] = None
        self.max_val: Optional[torch.Tensor] = None

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """x as [channels, values] (one channel unless per_channel), checked."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"x must be floating point, got {x.dtype}")
        if x.numel() == 0:
            raise ValueError(f"x is empty (shape {tuple(x.shape)}); nothing to observe")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x holds inf or nan; observers need finite data")
        x = x.detach().to(torch.float64 if x.dtype == torch.float64 else torch.float32)
        if not self.per_channel:
            return x.reshape(1, -1)
        if not -x.dim() <= self.axis < x.dim():
            raise ValueError(f"axis {self.axis} out of range for x with {x.dim()} dims")
        rows = x.movedim(self.axis, 0).reshape(x.shape[self.axis], -1)
        if self.min_val is not None and rows.shape[0] != self.min_val.shape[0]:
            raise ValueError(f"x has {rows.shape[0]} channels along axis {self.axis}, but earlier "
                             f"observations had {self.min_val.shape[0]}")
        return rows

    def observe(self, x: torch.Tensor) -> None:
        """Accumulate statistics of ``x`` (any shape; channels along ``axis`` if per_channel)."""
        rows = self._rows(x)
        lo, hi = rows.amin(1), rows.amax(1)
        if self.min_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val = torch.minimum(self.min_val, lo.to(self.min_val.dtype))
            self.max_val = torch.maximum(self.max_val, hi.to(self.max_val.dtype))
        self._observe_rows(rows)

    def _observe_rows(self, rows: torch.Tensor) -> None:
        """Subclass hook: extra statistics of the checked [channels, values] data."""

    def _clip_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.min_val, self.max_val

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale fp32, zero_point int32): 0-dim tensors, or [channels] when per_channel."""
        if self.min_val is None:
            raise RuntimeError(f"{type(self).__name__}.qparams() called before any observe()")
        lo, hi = self._clip_range()
        scale, zero_point = _range_to_qparams(lo, hi, self.qmin, self.qmax, self.symmetric)
        if not self.per_channel:
            return scale.reshape(()), zero_point.reshape(())
        return scale, zero_point

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


class MinMaxObserver(Observer):
    """Range = running min/max of everything observed (no clipping)."""


class _SampledObserver(Observer):
    """An observer that also keeps a bounded uniform random sample of the observed values."""

    def __init__(self, bits: int = 8, symmetric: bool = True, per_channel: bool = False, axis: int = 0,
                 max_samples: Optional[int] = 2 ** 20):
        if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int)
                                        or max_samples < 1):
            raise ValueError(f"max_samples must be a positive int or None (keep all), got {max_samples!r}")
        self.max_samples = max_samples
        super().__init__(bits, symmetric, per_channel, axis)

    def config(self) -> dict:
        return {**super().config(), "max_samples": self.max_samples}

    def reset(self) -> None:
        super().reset()
        self._sample: Optional[torch.Tensor] = None  # [channels, k]
        self._seen = 0  # values per channel observed so far
        self._generator = torch.Generator().manual_seed(0)  # same data -> same sample

    def _observe_rows(self, rows: torch.Tensor) -> None:
        channels, n = rows.shape
        cap = n + self._seen if self.max_samples is None else max(1, self.max_samples // channels)
        old = rows.new_empty(channels, 0) if self._sample is None else self._sample.to(rows.dtype)
        if self._seen + n <= cap:
            self._sample = torch.cat([old, rows], 1)
        else:
            # Keep each part in proportion to how many values it stands for: a uniform sample of all.
            keep_old = min(old.shape[1], round(cap * self._seen / (self._seen + n)))
            keep_new = min(n, cap - keep_old)
            pick_old = torch.randperm(old.shape[1], generator=self._generator)[:keep_old]
            pick_new = torch.randperm(n, generator=self._generator)[:keep_new]
            self._sample = torch.cat([old[:, pick_old], rows[:, pick_new]], 1)
        self._seen += n

    @property
    def sample(self) -> Optional[torch.Tensor]:
        """The kept values [channels, k] (None before any observe)."""
        return self._sample


def _quantile(sorted_rows: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row quantile of rows sorted ascending, linear interpolation (torch.quantile's default)
    without torch.quantile's input size limit."""
    n = sorted_rows.shape[1]
    pos = q * (n - 1)
    below = int(pos)
    above = min(below + 1, n - 1)
    frac = pos - below
    return sorted_rows[:, below] + frac * (sorted_rows[:, above] - sorted_rows[:, below])


class PercentileObserver(_SampledObserver):
    """Range clipped at the ``percentile`` (0 < p <= 100) of the sample: of |x| when symmetric,
    else the lower (100 - p) and upper p percentiles of x."""

    def __init__(self, percentile: float = 99.99, bits: int = 8, symmetric: bool = True,
                 per_channel: bool = False, axis: int = 0, max_samples: Optional[int] = 2 ** 20):
        if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) \
                or not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be a number in (0, 100], got {percentile!r}")
        self.percentile = float(percentile)
        super().__init__(bits, symmetric, per_channel, axis, max_samples)

    def config(self) -> dict:
        return {"percentile": self.percentile, **super().config()}

    def _clip_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.percentile / 100.0
        if self.symmetric:
            hi = _quantile(self._sample.abs().sort(1).values, q)
            return -hi, hi
        ordered = self._sample.sort(1).values
        return _quantile(ordered, 1.0 - q), _quantile(ordered, q)


class MSEObserver(_SampledObserver):
    """Range = the min/max range times the shrink factor, out of ``steps`` factors spaced
    geometrically from 1 down to ``min_shrink``, that minimizes the sample's mean squared
    quantization error (per channel when per_channel). Factor 1 (min/max) is always a candidate,
    so the error never exceeds MinMaxObserver's on the sample."""

    def __init__(self, bits: int = 8, symmetric: bool = True, per_channel: bool = False, axis: int = 0,
                 max_samples: Optional[int] = 2 ** 20, steps: int = 100, min_shrink: float = 0.01):
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        if isinstance(min_shrink, bool) or not isinstance(min_shrink, (int, float)) or not 0.0 < min_shrink <= 1.0:
            raise ValueError(f"min_shrink must be in (0, 1], got {min_shrink!r}")
        self.steps, self.min_shrink = steps, float(min_shrink)
        super().__init__(bits, symmetric, per_channel, axis, max_samples)

    def config(self) -> dict:
        return {**super().config(), "steps": self.steps, "min_shrink": self.min_shrink}

    def shrink_factors(self) -> torch.Tensor:
        """The candidate factors, 1 first."""
        return torch.logspace(0.0, torch.log10(torch.tensor(self.min_shrink)).item(), self.steps,
                              dtype=torch.float64)

    def _clip_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.min_val.clamp(max=0.0), self.max_val.clamp(min=0.0)
        best_err = torch.full_like(lo, float("inf"))
        best = torch.ones_like(lo)
        for factor in self.shrink_factors().tolist():
            scale, zp = _range_to_qparams(lo * factor, hi * factor, self.qmin, self.qmax, self.symmetric)
            err = quantization_mse(self._sample, scale, zp, self.qmin, self.qmax)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, torch.full_like(best, factor), best)
        return lo * best, hi * best
