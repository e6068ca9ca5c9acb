"""A Hugging Face model built from a checkpoint's config.json with its parameters on the meta
device: no hub access, no memory and no time spent on random initialisation that the load
overwrites. Buffers computed at construction (rotary frequencies, masks) stay real.

config.json is untrusted. It never makes anything run code: ``auto_map`` (custom code) is refused,
or ignored for a model type transformers ships; only model types and classes transformers ships, the config object is built from the parsed
dict (transformers never re-reads the directory, never asks "run the custom code? [y/N]"), and no
hub attention kernels. Its dimensions are checked against the stored tensors (hf_checks) on a
skeleton built entirely on meta before the real build. Nothing here changes process-wide state:
the meta device context and the dtype mode are thread-local in torch, and the parameter /
module registration hooks act only in the building thread."""
from __future__ import annotations

import contextlib
import math
import threading
import warnings
from typing import Optional

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from . import hf_checks
from .errors import CheckpointError
from .files import TensorReader

# the activation dtypes our kernels take (a float64 model would feed them float64)
_FLOAT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_ATTN_IMPLEMENTATIONS = ("eager", "sdpa")  # anything else may fetch kernels (code) from the hub
_ATTN_KEYS = ("attn_implementation", "_attn_implementation", "_attn_implementation_internal")


def build_hf_model(directory: str, config_data: dict, reader: Optional[TensorReader] = None) -> nn.Module:
    """The transformers model named by config.json ``architectures`` (or, without it, the causal-LM
    class transformers maps its ``model_type`` to), parameters on meta, checked against the
    checkpoint's tensors (`reader`, opened from `directory` if None) before it is built."""
    transformers = _transformers()
    config_cls = _config_class(transformers, config_data)
    _check_value_types(config_cls, config_data)
    class_name = _class_name(transformers, config_data)
    cls = _model_class(transformers, class_name, config_cls)
    dtype = _dtype(config_data)
    reader = TensorReader(directory) if reader is None else reader
    try:
        hf_checks.check_layer_counts(_config(config_cls, config_data), reader)
        budget = hf_checks.module_budget(reader)
        probe = _build(cls, _config(config_cls, config_data), dtype, budget, meta=True)
        probe.tie_weights()
        hf_checks.check_has_parameters(probe, class_name)
        hf_checks.check_against_tensors(probe, reader)
        hf_checks.check_buffer_bytes(probe, reader)
        del probe
        model = _build(cls, _config(config_cls, config_data), dtype, budget, meta=False)
        model.tie_weights()  # tied embeddings are stored once: the load fills both names
    except CheckpointError:
        raise
    except Exception as exc:  # transformers validates the config with many exception types
        raise CheckpointError(f"config.json: transformers cannot build {class_name} from it "
                              f"({type(exc).__name__}: {exc})") from None
    return model.eval()


def _transformers():
    try:
        import transformers
    except ImportError:
        raise CheckpointError("building the model from config.json needs the 'transformers' package; "
                              "install it or pass model=") from None
    return transformers


def _config_class(transformers, data: dict):
    """The config class transformers ships for ``model_type``; refuses custom code and unknown types."""
    model_type = data.get("model_type")
    known = isinstance(model_type, str) and model_type in transformers.CONFIG_MAPPING
    if "auto_map" in data and not known:
        raise CheckpointError("config.json has 'auto_map' (a model with custom Python code); sparseinfer never runs "
                              "code from a checkpoint: build the model yourself and pass sparseinfer.load(directory, "
                              "model=...)")
    if not isinstance(model_type, str) or not model_type:
        raise CheckpointError("config.json is not a Hugging Face model config (needs 'model_type'); pass the model "
                              "to sparseinfer.load(directory, model=...)")
    if "auto_map" in data:  # a type transformers ships (e.g. Phi-3 configs keep theirs): its own classes
        warnings.warn(f"config.json auto_map ignored: transformers' own {model_type!r} classes are built (no code "
                      "from the checkpoint runs)", stacklevel=3)
    if not known:
        raise CheckpointError(f"config.json model_type {model_type!r} is not a model type transformers "
                              f"{transformers.__version__} knows (custom code is never run); pass model=")
    _check_attn_implementation(data)
    return transformers.CONFIG_MAPPING[model_type]


def _check_attn_implementation(data: dict) -> None:
    """No attention implementation that transformers would fetch from the hub, at any level."""
    stack = [("", data)]
    while stack:
        path, node = stack.pop()
        for key, value in node.items():
            if isinstance(value, dict):
                stack.append((f"{path}{key}.", value))
            elif key in _ATTN_KEYS and value is not None and value not in _ATTN_IMPLEMENTATIONS:
                raise CheckpointError(f"config.json {path}{key} is {value!r}; a load uses "
                                      f"{' or '.join(_ATTN_IMPLEMENTATIONS)} (others may fetch code from the hub)")


def _class_name(transformers, data: dict) -> str:
    archs = data.get("architectures")
    if archs is None or archs == []:
        # as transformers' AutoModelForCausalLM does: the class its mapping names for model_type
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(data["model_type"])
        if name is None:
            raise CheckpointError(f"config.json has no 'architectures', and transformers has no causal-LM class for "
                                  f"model_type {data['model_type']!r}; add architectures or pass model=")
        return name
    if not isinstance(archs, list) or not isinstance(archs[0], str):
        raise CheckpointError(f"config.json architectures must be a list of class names, got {archs!r}")
    return archs[0]


def _model_class(transformers, name: str, config_cls):
    cls = getattr(transformers, name, None) if name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise CheckpointError(f"config.json architectures[0] = {name!r} is not a transformers model class")
    if cls is transformers.PreTrainedModel or name.endswith("PreTrainedModel"):
        raise CheckpointError(f"config.json architectures[0] = {name!r} is an abstract base class, not a concrete "
                              "architecture (name the model class, e.g. LlamaForCausalLM)")
    wanted = getattr(cls, "config_class", None)
    if isinstance(wanted, type) and not issubclass(config_cls, wanted):
        raise CheckpointError(f"config.json architectures[0] = {name!r} takes a {wanted.__name__}, but model_type "
                              f"names {config_cls.__name__}")
    return cls


def _dtype(data: dict) -> torch.dtype:
    value = data.get("dtype", data.get("torch_dtype"))
    if value is None:
        return torch.float32
    if not isinstance(value, str) or value not in _FLOAT_DTYPES:
        raise CheckpointError(f"config.json dtype {value!r} is not one of {sorted(_FLOAT_DTYPES)}")
    return _FLOAT_DTYPES[value]


def _check_value_types(config_cls, data: dict) -> None:
    """Every scalar setting has the type of the config class's default (an int where it expects a
    float is fine; token ids are ints): transformers accepts e.g. "rms_norm_eps": "x" and the model
    then fails at its first forward."""
    defaults = _defaults(config_cls)
    for key, value in data.items():
        default = defaults.get(key)
        if value is None:
            continue
        if key.endswith("_token_id"):
            ok = _is_int(value) or (isinstance(value, list) and all(_is_int(v) for v in value))
        elif isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = _is_int(value)
        elif isinstance(default, float):
            ok = _is_int(value) or (isinstance(value, float) and math.isfinite(value))
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:
            continue
        if not ok:
            raise CheckpointError(f"config.json {key} is {value!r}; {config_cls.__name__} expects "
                                  f"{'an integer token id' if key.endswith('_token_id') else type(default).__name__}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _defaults(config_cls) -> dict:
    try:
        return {k: v for k, v in config_cls().to_dict().items()}
    except Exception:  # a config class that cannot be built without arguments: no defaults to compare
        return {}


def _config(config_cls, data: dict):
    """A fresh config object from the parsed, type-checked dict (never from the directory: no
    second read; auto_map dropped; fresh because a build may change its config). The quantization config is ours to apply; transformers would try its own
    quantizer."""
    try:
        return config_cls.from_dict({k: v for k, v in data.items() if k not in ("quantization_config", "auto_map")})
    except Exception as exc:
        raise CheckpointError(f"config.json: transformers cannot read it as a {config_cls.__name__} "
                              f"({type(exc).__name__}: {exc})") from None


# --- thread-scoped build state --------------------------------------------------------------

_state = threading.local()
_hooks_lock = threading.Lock()
_hooks_installed = False


def _on_parameter(module, name, param):
    """Global parameter-registration hook that acts only in a thread building a skeleton."""
    if getattr(_state, "meta_parameters", False) and param is not None and param.device.type != "meta":
        return nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
    return None


def _on_module(module, name, submodule):
    """Global module-registration hook: counts this thread's registrations against its budget."""
    budget = getattr(_state, "module_budget", None)
    if budget is not None:
        budget[0] -= 1
        if budget[0] < 0:
            raise CheckpointError(f"config.json describes a model of more than {budget[1]} submodules, more than "
                                  "its checkpoint's tensors can fill (a count in config.json, e.g. of layers, "
                                  "experts or heads, disagrees with the stored tensors)")
    return None


def _install_hooks() -> None:
    """Register the two hooks once per process; they do nothing outside a building thread."""
    global _hooks_installed
    with _hooks_lock:
        if not _hooks_installed:
            from torch.nn.modules.module import (register_module_module_registration_hook,
                                                 register_module_parameter_registration_hook)
            register_module_parameter_registration_hook(_on_parameter)
            register_module_module_registration_hook(_on_module)
            _hooks_installed = True


class _ThreadDefaultDtype(TorchFunctionMode):
    """torch.set_default_dtype(dtype) for this thread only (set_default_dtype is process-wide, so
    transformers' own _from_config changes the dtype of modules other threads build meanwhile):
    a tensor factory called without a dtype that would make the default float dtype makes
    `dtype` instead."""

    _factories = None

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype
        if _ThreadDefaultDtype._factories is None:
            try:  # the factories torch's own device context redirects
                from torch.utils._device import _device_constructors
                factories = _device_constructors()
            except ImportError:  # a torch without it: the ones module constructors use
                factories = (torch.empty, torch.zeros, torch.ones, torch.full, torch.tensor, torch.arange,
                             torch.rand, torch.randn, torch.linspace, torch.logspace, torch.eye)
            _ThreadDefaultDtype._factories = frozenset(factories)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._factories and kwargs.get("dtype") is None \
                and not any(isinstance(a, torch.Tensor) for a in args):
            probe = func(*args, **{**kwargs, "device": "meta"})
            if isinstance(probe, torch.Tensor) and probe.dtype == torch.get_default_dtype():
                kwargs = {**kwargs, "dtype": self.dtype}
        return func(*args, **kwargs)


def _build(cls, config, dtype: torch.dtype, budget: int, meta: bool) -> nn.Module:
    """cls(config) in `dtype`: everything on meta (meta=True), or parameters on meta and buffers
    real; at most `budget` submodules. Only this thread is affected."""
    _install_hooks()
    saved = (getattr(_state, "meta_parameters", False), getattr(_state, "module_budget", None))
    _state.meta_parameters, _state.module_budget = not meta, [budget, budget]
    try:
        with contextlib.ExitStack() as stack:
            if meta:
                stack.enter_context(torch.device("meta"))
            if dtype != torch.get_default_dtype():
                stack.enter_context(_ThreadDefaultDtype(dtype))
            return cls(config)
    finally:
        _state.meta_parameters, _state.module_budget = saved
