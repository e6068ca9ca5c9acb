"""Compressed checkpoints: save/load in the compressed-tensors layouts (safetensors +
config.json quantization_config), and inspect what a checkpoint holds."""
from .errors import CheckpointError
from .inspection import CheckpointInfo, LayerInfo, inspect
from .load import load
from .save import save

__all__ = ["CheckpointError", "CheckpointInfo", "LayerInfo", "inspect", "load", "save"]
