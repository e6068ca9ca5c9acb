"""Compression toolkit: produce the sparse and int8 weights sparseinfer's kernels run fast.

Pruning (masks that hold through training, then `.finish("csr" | "2:4")` swaps in sparse layers):
  prune_magnitude (layer / global / per row, N:M), GradualPruner (Zhu & Gupta cubic ramp),
  prune_wanda (Wanda), prune_sparsegpt (SparseGPT), prune_taylor (|w * grad| importance).
Structured pruning that physically shrinks models: structured.prune_channels (L1 filters, network
  slimming), heads.prune_heads / prune_heads_by_importance, layer_drop.drop_layers.
Quantization to Int8Linear: quant.quantize_ptq (observers + calibration), quant.prepare_qat /
  convert_qat (fake quant with a straight-through estimator).
Distillation (distillation_loss, distill) and low-rank SVD factorisation (low_rank).
Pruned + int8 together (joint.py): sparsify_quantize (SparseGPT with the rounding inside its sweep, or
  Wanda / magnitude then output-MSE PTQ), gradual_sparse_qat (gradual pruning + KD + QAT); both record
  each layer's int8 q and scales for packing.
Weight sharing (Deep Compression): cluster_weights (per-row / per-group k-means tables, storage report
  with Huffman coding), finetune_centroids (trained quantization of the shared values).
"""
from . import heads, layer_drop, quant, structured
from .cluster import ClusteredLayer, ClusterResult, cluster_weights, finetune_centroids
from .distill import causal_lm_forward, causal_lm_labels, distill, distillation_loss
from .joint import QuantizedWeight, SparseQuantResult, fake_quantize_inputs, gradual_sparse_qat, sparsify_quantize
from .heads import head_importance, prune_heads, prune_heads_by_importance
from .layer_drop import drop_layers, layer_importance
from .low_rank import choose_rank, factorize_linear, low_rank
from .magnitude import magnitude_masks, magnitude_scores, prune_magnitude
from .masks import PruningMasks
from ..formats.n_m import n_m_mask, prune_2_4, prune_n_m
from .quant import convert_qat, prepare_qat, quantize_ptq
from .schedule import GradualPruner
from .scores import masks_from_scores
from .sparsegpt import prune_sparsegpt
from .structured import channel_importance, prune_channels, slimming_penalty
from .taylor import prune_taylor, taylor_scores
from .wanda import prune_wanda, wanda_scores

__all__ = [
    "n_m_mask", "prune_n_m", "prune_2_4",
    "PruningMasks", "masks_from_scores", "magnitude_scores", "magnitude_masks", "prune_magnitude",
    "GradualPruner", "wanda_scores", "prune_wanda", "prune_sparsegpt", "taylor_scores", "prune_taylor",
    "channel_importance", "prune_channels", "slimming_penalty",
    "head_importance", "prune_heads", "prune_heads_by_importance", "layer_importance", "drop_layers",
    "quantize_ptq", "prepare_qat", "convert_qat",
    "distillation_loss", "distill", "causal_lm_forward", "causal_lm_labels",
    "choose_rank", "factorize_linear", "low_rank",
    "cluster_weights", "finetune_centroids", "ClusterResult", "ClusteredLayer",
    "sparsify_quantize", "gradual_sparse_qat", "fake_quantize_inputs", "SparseQuantResult", "QuantizedWeight",
    "heads", "layer_drop", "quant", "structured",
]
