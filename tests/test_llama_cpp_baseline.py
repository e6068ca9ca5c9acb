"""The llama.cpp baseline computes the model the other formats compute: a random-weight HF Llama
written to GGUF (gguf_export.write_gguf) decodes greedily to the same token ids in llama.cpp as in
transformers, with the same prompt logits."""
import copy

import numpy as np
import pytest
import torch

pytest.importorskip("gguf", reason="the llama.cpp baseline needs the gguf package (pip install gguf)")
pytest.importorskip("llama_cpp", reason="the llama.cpp baseline needs llama-cpp-python (pip install llama-cpp-python)")
pytest.importorskip("transformers", reason="the llama.cpp baseline converts a transformers LlamaForCausalLM")

from sparseinfer.benchmarks import llama_cpp as bench  # noqa: E402
from sparseinfer.benchmarks.gguf_export import (  # noqa: E402
    dequantized_state_dict, random_llama, tinyllama_config, write_gguf)

NEW_TOKENS = 16
PROMPT = [1, 17, 300, 42, 511, 7, 99, 250, 3, 128, 64, 400]


@pytest.fixture(scope="module")
def tiny():
    config = tinyllama_config(2, vocab_size=512, hidden_size=256, intermediate_size=512,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = random_llama(config, seed=0)
    with torch.no_grad():
        ids = torch.tensor([PROMPT])
        logits = model(ids).logits[0, -1].numpy()
        model.generation_config.eos_token_id = None  # never stop early: llama.cpp's loop does not
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
    return model, out[0, len(PROMPT):].tolist(), logits


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("gguf")


def test_f32_greedy_tokens_and_logits_match_transformers(tiny, gguf_dir):
    model, hf_tokens, hf_logits = tiny
    path = write_gguf(model, gguf_dir / "tiny-F32.gguf", "F32")["path"]
    # an F32 KV cache: llama.cpp's default f16 one would round K and V
    llm = bench.load_llama(path, n_threads=2, n_ctx=64, n_batch=64, kv_type="f32")
    try:
        tokens, logits = bench.greedy(llm, PROMPT, NEW_TOKENS)
    finally:
        llm.close()
    assert tokens == hf_tokens
    np.testing.assert_allclose(logits, hf_logits, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("qtype", ["BF16", "Q8_0", "Q4_0"])
def test_quantized_files_match_transformers_on_their_dequantized_weights(tiny, gguf_dir, qtype):
    """A BF16/Q8_0/Q4_0 file loads, and its prompt logits are those of the HF model given the
    file's weights dequantized, up to llama.cpp's activation rounding (it quantizes activations to
    Q8 for Q8_0/Q4_0 matmuls): about 1% relative L2 error here, while the weight rounding alone
    moves the logits by 0.5% (BF16), 1.5% (Q8_0), 26% (Q4_0) from the unquantized model."""
    model, _, _ = tiny
    path = write_gguf(model, gguf_dir / f"tiny-{qtype}.gguf", qtype)["path"]
    dequantized = copy.deepcopy(model)
    dequantized.load_state_dict(dequantized_state_dict(path, model.config))
    with torch.no_grad():
        expected = dequantized(torch.tensor([PROMPT])).logits[0, -1].numpy()
    llm = bench.load_llama(path, n_threads=2, n_ctx=64, n_batch=64, kv_type="f32")
    try:
        _, logits = bench.greedy(llm, PROMPT, 1)
    finally:
        llm.close()
    error = np.linalg.norm(logits - expected) / np.linalg.norm(expected)
    assert error < 0.03, f"{qtype}: relative logit error {error:.4f}"


def test_time_llama_cpp_reports(tiny, gguf_dir):
    model, hf_tokens, _ = tiny
    path = gguf_dir / "tiny-F32-timed.gguf"
    write_gguf(model, path, "F32")
    result = bench.time_llama_cpp(path, PROMPT, new_tokens=4, n_threads=2, reps=2, kv_type="f32")
    assert result["tokens"] == hf_tokens[:5]  # the prefill's token and 4 decoded ones
    for key in ("prefill_tok_s", "decode_tok_s"):
        stats = result[key]
        assert len(stats["per_rep"]) == 2 and 0 < stats["min"] <= stats["median"] <= stats["max"]
    info = result["llama_cpp"]
    assert info["llama_cpp_python"] and info["system_info"]
