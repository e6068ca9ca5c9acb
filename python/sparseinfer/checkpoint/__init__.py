"""Compressed checkpoints: save/load in the compressed-tensors layouts (safetensors +
config.json quantization_config), and inspect what a checkpoint holds. The sparse layouts
(sparse-bitmask, sparse-24-bitmask, alone or holding int8 values) are sparseinfer's own
checkpoint format from now on, kept as compressed-tensors 0.14 wrote them (>= 0.15 marks them
legacy); see compression_config."""
from .errors import CheckpointError
from .inspection import CheckpointInfo, LayerInfo, inspect
from .load import load
from .save import save

__all__ = ["CheckpointError", "CheckpointInfo", "LayerInfo", "inspect", "load", "save"]
