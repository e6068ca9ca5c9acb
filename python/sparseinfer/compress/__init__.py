"""Compression toolkit: turn dense weights into ones our kernels run fast."""
from .n_m import n_m_mask, prune_2_4, prune_n_m

__all__ = ["n_m_mask", "prune_n_m", "prune_2_4"]
