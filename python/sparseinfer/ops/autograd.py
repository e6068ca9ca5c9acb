"""When an op goes through its torch.library custom op, and the backward every linear op shares.

Eager calls go straight to the native function (the dispatcher costs ~20 us, a tenth of an m=1
call) unless something needs the custom op (``via_custom_op``): torch.compile / torch.export
(the op must be visible in the graph), torch.jit.trace (the trace records the op; a native call
would be recorded as the bare ``aten::empty`` of its output) or autograd (the op's backward).

The weights are frozen (packed kernel tensors, never Parameters), so the backward of
``y = x @ W.T + bias`` is ``dX = dY @ W`` with ``W`` rebuilt dense from the packed tensors by
the format's ``<op>_dense`` custom op (plain torch or a native kernel: O(rows * cols) per
backward, no cache kept), and ``dBias = dY.sum(tokens)`` when a user made the bias trainable.
For int8 ``W`` is the dequantized weight: with act="dynamic" the per-token quantization of x
is treated as the identity (the straight-through estimator), so dX = dY @ dequant(W) for both
activation modes.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F


def via_custom_op(x: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """Whether a call must go through the custom op rather than straight to native code:
    compiling, autograd recording (x or bias requires grad under grad mode) or jit tracing."""
    return (torch.compiler.is_compiling()
            or (torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad)))
            or torch.jit.is_tracing())


def register_frozen_weight_grad(op, dense: Callable[[list], torch.Tensor], bias_arg: int) -> None:
    """Register the backward of a raw linear custom op ``op(x [m, ldx], <weight args>, ...)``
    that returns x[:, :cols] @ W.T + bias (ldx >= cols: extra x columns are padding).

    dense(args) -> W [rows, cols] from op's arguments (x and bias replaced by None);
    bias_arg: the index of the bias argument (None or a [rows] tensor).
    """
    def setup_context(ctx, inputs, output):
        args = [None if i in (0, bias_arg) else a for i, a in enumerate(inputs)]
        ctx.tensor_at = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        ctx.save_for_backward(*(args[i] for i in ctx.tensor_at))
        ctx.args = [None if isinstance(a, torch.Tensor) else a for a in args]
        ctx.x_cols = inputs[0].shape[1]

    def backward(ctx, grad):
        args = list(ctx.args)
        for i, t in zip(ctx.tensor_at, ctx.saved_tensors):
            args[i] = t
        grads: list = [None] * len(args)
        if ctx.needs_input_grad[0]:
            grad_x = grad @ dense(args).to(grad.dtype)
            if grad_x.shape[1] != ctx.x_cols:  # padded x (CUDA 2:4): zero gradient for the padding
                grad_x = F.pad(grad_x, (0, ctx.x_cols - grad_x.shape[1]))
            grads[0] = grad_x
        if ctx.needs_input_grad[bias_arg]:
            grads[bias_arg] = grad.sum(0)
        return tuple(grads)

    op.register_autograd(backward, setup_context=setup_context)
