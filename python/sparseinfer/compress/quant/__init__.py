"""Quantization to sparseinfer's Int8Linear: range observers, fake quantization (STE),
post-training quantization with calibration (PTQ) and quantization-aware training (QAT)."""
from .fake_quant import fake_quantize, fake_quantize_per_token, quant_range
from .observers import MinMaxObserver, MSEObserver, Observer, PercentileObserver
from .ptq import PTQLayerReport, PTQReport, quantize_ptq
from .qat import QATLinear, convert_qat, prepare_qat

__all__ = [
    "Observer", "MinMaxObserver", "PercentileObserver", "MSEObserver",
    "quant_range", "fake_quantize", "fake_quantize_per_token",
    "quantize_ptq", "PTQReport", "PTQLayerReport",
    "QATLinear", "prepare_qat", "convert_qat",
]
