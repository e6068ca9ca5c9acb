"""A Hugging Face model built from a checkpoint's config.json with its parameters on the meta
device: no hub access, no memory and no time spent on random initialisation that the load
overwrites. Buffers computed at construction (rotary frequencies, masks) stay real."""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

from .errors import CheckpointError


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Every nn.Parameter registered inside lives on the meta device (buffers are untouched)."""
    original = nn.Module.register_parameter

    def register(module, name, param):
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def build_hf_model(directory: str, config_data: dict) -> nn.Module:
    """The transformers model named by config.json ``architectures``, parameters on meta."""
    archs = config_data.get("architectures")
    if not config_data.get("model_type") or not isinstance(archs, list) or not archs \
            or not isinstance(archs[0], str):
        raise CheckpointError("config.json is not a Hugging Face model config (needs 'model_type' and "
                              "'architectures'); pass the model to sparseinfer.load(directory, model=...)")
    try:
        import transformers
    except ImportError:
        raise CheckpointError("building the model from config.json needs the 'transformers' package; "
                              "install it or pass model=") from None
    cls = getattr(transformers, archs[0], None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise CheckpointError(f"config.json architectures[0] = {archs[0]!r} is not a transformers model class")
    try:
        config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
        # The quantization config is ours to apply; transformers would try its own quantizer.
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        no_init = getattr(transformers.modeling_utils, "no_init_weights", contextlib.nullcontext)
        with parameters_on_meta(), no_init():
            model = cls._from_config(config)  # in the config's dtype
        model.tie_weights()  # tied embeddings are stored once: the load fills both names
    except CheckpointError:
        raise
    except Exception as exc:  # transformers validates the config with many exception types
        raise CheckpointError(f"config.json: transformers cannot build {archs[0]} from it ({type(exc).__name__}: {exc})") from None
    return model.eval()
