"""generate's fused fp32 RMSNorm and rotary embedding (sparseinfer.ops.decode) against torch:
rope bit-identical, rms_norm within fp32 rounding; anything else takes torch's path."""
import torch
import torch.nn.functional as F

from sparseinfer.ops import decode


def test_rope_is_bit_identical_to_torch():
    for tokens, heads, dim in ((1, 32, 64), (7, 4, 128), (3, 1, 2)):
        x, c, s = torch.randn(1, tokens, heads, dim), torch.randn(tokens, dim), torch.randn(tokens, dim)
        assert torch.equal(decode.rope(x, c, s), decode.rotate_reference(x, c[:, None], s[:, None]))


def test_rope_falls_back_for_other_layouts():
    x, c, s = torch.randn(2, 5, 3, 8), torch.randn(5, 8), torch.randn(5, 8)  # batch 2
    assert torch.equal(decode.rope(x, c, s), decode.rotate_reference(x, c[:, None], s[:, None]))
    xb = x[:1].bfloat16()
    assert decode.rope(xb, c.bfloat16(), s.bfloat16()).dtype == torch.bfloat16


def test_rms_norm_matches_torch():
    for shape in ((1, 1, 2048), (3, 5, 64), (4, 1)):
        x, w = torch.randn(*shape) * 3, torch.randn(shape[-1])
        torch.testing.assert_close(decode.rms_norm(x, w, 1e-5), F.rms_norm(x, (shape[-1],), w, 1e-5),
                                   rtol=2e-6, atol=1e-6)
    x = torch.randn(2, 16).bfloat16()
    w = torch.ones(16).bfloat16()
    assert torch.equal(decode.rms_norm(x, w, 1e-6), F.rms_norm(x, (16,), w, 1e-6))  # torch's path


def test_rms_norm_of_zeros_is_zero():
    assert torch.equal(decode.rms_norm(torch.zeros(1, 8), torch.ones(8), 1e-6), torch.zeros(1, 8))
