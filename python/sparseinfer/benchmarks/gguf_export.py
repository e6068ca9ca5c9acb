"""A transformers LlamaForCausalLM written as a GGUF file (arch "llama") for llama.cpp, with the
`gguf` package (pip install gguf): hparams, a stand-in tokenizer, and the weights in F32, BF16, Q8_0
or Q4_0 (numpy quantizers of gguf.quants, bit-exact with ggml's reference ones).

Tensor types follow llama.cpp's convert_hf_to_gguf for a given file type: 1-D tensors (the RMSNorm
weights) stay F32; every 2-D matrix, token_embd and output included, takes the file's type. (For
Q4_0 that is where llama-quantize would differ: it keeps output.weight at Q6_K, which gguf.quants
cannot write; ours is Q4_0 throughout, a slightly smaller and faster head.)

Q and K rows are permuted from the Hugging Face rotate-half rope layout (the pair of a dimension i
in a head is i + head_dim/2) to the GGUF/Meta one that llama.cpp's rope (type NORM) expects (pairs
are adjacent: 2j, 2j+1), as the converter does.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

QTYPES = ("F32", "BF16", "Q8_0", "Q4_0")


def _gguf():
    try:
        import gguf
    except ImportError as error:
        raise ImportError("writing GGUF files needs the gguf package: pip install gguf") from error
    return gguf


def tinyllama_config(layers: int = 22, **overrides):
    """A LlamaConfig of the TinyLlama-1.1B shape (hidden 2048, MLP 5632, 32 heads / 4 KV heads,
    vocab 32000), with `layers` decoder blocks."""
    from transformers import LlamaConfig
    shape = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
                 num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                 rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                 bos_token_id=1, eos_token_id=2)
    shape.update(overrides)
    return LlamaConfig(**shape)


def random_llama(config, seed: int = 0):
    """LlamaForCausalLM(config) in eval mode, its weights drawn by transformers' own init after
    torch.manual_seed(seed) (the same draw for the same config and seed)."""
    from transformers import LlamaForCausalLM
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float().eval()


def rope_to_interleaved(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder the rows of a q_proj/k_proj weight [n_head*head_dim, in] from HF's half-split rope
    layout to the interleaved one: within each head, row h*head_dim + 2j + s comes from HF row
    h*head_dim + s*head_dim/2 + j (s = 0, 1)."""
    rows = weight.shape[0]
    half = rows // n_head // 2
    # view each head's rows as [s, j]; read them out as [j, s]
    return weight.reshape(n_head, 2, half, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def interleaved_to_rope(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """The inverse of rope_to_interleaved."""
    half = weight.shape[0] // n_head // 2
    return weight.reshape(n_head, half, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


_HF_NAMES = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
             "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj",
             "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def dequantized_state_dict(path, config) -> dict:
    """The weights of a GGUF file written by write_gguf, dequantized to fp32 and back in HF names
    and layout (Q/K un-permuted): load it into a LlamaForCausalLM(config) to get the model
    llama.cpp runs, up to llama.cpp's own activation rounding."""
    gguf = _gguf()
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    out = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        w = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))
        name = t.name.removesuffix(".weight")
        if name == "token_embd":
            out["model.embed_tokens.weight"] = w
        elif name == "output_norm":
            out["model.norm.weight"] = w
        elif name == "output":
            out["lm_head.weight"] = w
        else:
            _, i, kind = name.split(".")
            if kind == "attn_q":
                w = interleaved_to_rope(w, n_head)
            elif kind == "attn_k":
                w = interleaved_to_rope(w, n_kv)
            out[f"model.layers.{i}.{_HF_NAMES[kind]}.weight"] = w
    return out


def _tensors(model):
    """(gguf name, fp32 torch tensor) in llama.cpp's order, Q/K permuted."""
    config = model.config
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    sd = model.state_dict()
    yield "token_embd.weight", sd["model.embed_tokens.weight"]
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        yield f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"]
        yield f"blk.{i}.attn_q.weight", rope_to_interleaved(sd[p + "self_attn.q_proj.weight"], n_head)
        yield f"blk.{i}.attn_k.weight", rope_to_interleaved(sd[p + "self_attn.k_proj.weight"], n_kv)
        yield f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"]
        yield f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"]
        yield f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"]
        yield f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"]
        yield f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"]
        yield f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"]
    yield "output_norm.weight", sd["model.norm.weight"]
    # written even when tied (then it is the embedding again): llama.cpp would fall back to
    # token_embd, but one layout for both cases keeps the timing like for like
    yield "output.weight", sd.get("lm_head.weight", sd["model.embed_tokens.weight"])


def _check_supported(config) -> None:
    for attr in ("attention_bias", "mlp_bias"):
        if getattr(config, attr, False):
            raise ValueError(f"write_gguf: {attr}=True is not handled (llama.cpp's llama arch has none)")
    if getattr(config, "rope_scaling", None):
        raise ValueError("write_gguf: rope_scaling is not handled")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ValueError("write_gguf: only hidden_act='silu' matches llama.cpp's llama arch")


def _add_hparams(writer, config, file_type: int, gguf) -> None:
    n_head = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    writer.add_name("sparseinfer random llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(config.num_key_value_heads or n_head)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", 10000.0)))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_tokenizer(writer, config, gguf) -> None:
    """A stand-in SentencePiece ("llama") vocabulary with the model's size: <unk>, the bos/eos
    tokens, the 256 byte tokens <0x00>..<0xFF> when they fit (SPM looks up <0x0A> for newline),
    then "<tok_i>". All scores 0. Only ids are ever fed, never text."""
    n = config.vocab_size
    bos = config.bos_token_id if config.bos_token_id is not None else 1
    eos = config.eos_token_id if isinstance(config.eos_token_id, int) else 2
    tokens = [f"<tok_{i}>" for i in range(n)]
    types = [gguf.TokenType.NORMAL] * n
    specials = {0: "<unk>", bos: "<s>", eos: "</s>"}
    if n >= 3 + 256 and max(specials) < 3:
        for b in range(256):
            tokens[3 + b] = f"<0x{b:02X}>"
            types[3 + b] = gguf.TokenType.BYTE
    for i, text in specials.items():
        if i < n:
            tokens[i] = text
            types[i] = gguf.TokenType.UNKNOWN if i == 0 else gguf.TokenType.CONTROL
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * n)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(bos)
    writer.add_eos_token_id(eos)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)


def write_gguf(model, path, qtype: str = "F32") -> dict:
    """Write `model` (a transformers LlamaForCausalLM) to `path` as GGUF with its 2-D weights in
    `qtype` (one of QTYPES) and its norms in F32. Streams one tensor at a time (peak memory: the
    model plus one tensor). Returns {"path", "qtype", "bytes", "seconds", "quantize_seconds"}."""
    gguf = _gguf()
    if qtype not in QTYPES:
        raise ValueError(f"qtype must be one of {QTYPES}, not {qtype!r}")
    config = model.config
    _check_supported(config)
    ggml_type = gguf.GGMLQuantizationType[qtype]
    file_type = {"F32": gguf.LlamaFileType.ALL_F32, "BF16": gguf.LlamaFileType.MOSTLY_BF16,
                 "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[qtype]
    start = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    writer = gguf.GGUFWriter(tmp, "llama")
    try:
        _add_hparams(writer, config, int(file_type), gguf)
        _add_tokenizer(writer, config, gguf)
        # tensor infos first (sizes are known from shapes), then the data one tensor at a time
        plan = []
        for name, tensor in _tensors(model):
            t = gguf.GGMLQuantizationType.F32 if tensor.dim() == 1 else ggml_type
            b, ts = gguf.GGML_QUANT_SIZES[t]
            if tensor.shape[-1] % b:
                raise ValueError(f"{name}: row length {tensor.shape[-1]} is not a multiple of {qtype}'s block {b}")
            nbytes = tensor.numel() // b * ts
            writer.add_tensor_info(name, list(tensor.shape), np.dtype(np.float32), nbytes, raw_dtype=t)
            plan.append(t)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        quantize_s = 0.0
        with torch.no_grad():
            for (name, tensor), t in zip(_tensors(model), plan):
                data = tensor.detach().to(torch.float32).cpu().contiguous().numpy()
                q0 = time.perf_counter()
                data = gguf.quants.quantize(data, t)
                quantize_s += time.perf_counter() - q0
                writer.write_tensor_data(data)
        writer.close()
        os.replace(tmp, path)
    finally:
        writer.close()
        if tmp.exists():
            tmp.unlink()
    return {"path": str(path), "qtype": qtype, "bytes": path.stat().st_size,
            "seconds": time.perf_counter() - start, "quantize_seconds": quantize_s}


def gguf_cache_key(config, seed: int, qtype: str) -> str:
    """A file name for (config, seed, qtype): the config's JSON (sorted, without transformers'
    version) hashed."""
    d = config.to_dict()
    d.pop("transformers_version", None)
    digest = hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"llama-L{config.num_hidden_layers}-H{config.hidden_size}-s{seed}-{digest}-{qtype}.gguf"


def default_cache_dir() -> Path:
    return Path(os.environ.get("SPARSEINFER_GGUF_CACHE", Path.home() / ".cache" / "sparseinfer" / "gguf"))


def cached_gguf(config, seed: int, qtype: str, cache_dir=None,
                make_model: Optional[Callable[[], object]] = None) -> tuple[Path, Optional[dict]]:
    """The GGUF file of (config, seed, qtype) in cache_dir (default: $SPARSEINFER_GGUF_CACHE or
    ~/.cache/sparseinfer/gguf), written on a miss from make_model() (default: random_llama(config,
    seed)). Returns (path, write_gguf's dict on a miss else None). The key assumes make_model
    builds the weights from (config, seed) alone."""
    path = Path(cache_dir or default_cache_dir()) / gguf_cache_key(config, seed, qtype)
    if path.exists():
        return path, None
    model = make_model() if make_model is not None else random_llama(config, seed)
    return path, write_gguf(model, path, qtype)
