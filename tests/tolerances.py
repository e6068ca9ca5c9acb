"""The one tolerance table. Low precision: our error must be <= 2x the error of torch's own
computation at the same precision (plus a floor for fp32 rounding-order noise)."""
import torch
import torch.nn.functional as F

FLOOR = {torch.float32: 2e-6, torch.bfloat16: 1e-3, torch.float16: 1e-4}


def relative_error(y: torch.Tensor, exact: torch.Tensor) -> float:
    if y.numel() == 0:
        return 0.0
    return float((y.double() - exact).abs().max() / exact.abs().max().clamp_min(1.0))


def assert_linear_close(y, x, weight, bias=None):
    exact = x.double() @ weight.double().T
    if bias is not None:
        exact = exact + bias.double()
    assert y.dtype == x.dtype and y.shape == exact.shape
    torch_err = relative_error(F.linear(x, weight, bias), exact)
    ours = relative_error(y, exact)
    bound = 2 * torch_err + FLOOR[x.dtype]
    assert ours <= bound, f"error {ours:.3g} > bound {bound:.3g} (torch {torch_err:.3g}, {x.dtype})"
