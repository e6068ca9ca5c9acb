"""Tensor parallelism without processes: plans checked before anything changes (clear errors for
bad ones), every registered format's shard rule exact on rows and columns, the boundaries each
format needs, the dequantize/re-pack fallback, and the sliced checkpoint reader (reads only the
shard, validates untrusted data)."""
import dataclasses

import pytest
import torch

transformers = pytest.importorskip("transformers")

import sparseinfer
from sparseinfer import registry
from sparseinfer.checkpoint import CheckpointError
from sparseinfer.checkpoint import sharded_load
from sparseinfer.checkpoint.compression_config import CompressionConfig
from sparseinfer.checkpoint.files import TensorReader, read_json
from sparseinfer.checkpoint.layer_decode import Notes
from sparseinfer.distributed import check_plan, shard as rules, shard_linear
from sparseinfer.distributed.plan import LLAMA_PLAN


def _model(heads=8, kv_heads=4, hidden=128, intermediate=256, **extra):
    config = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=1,
                                      num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=100,
                                      max_position_embeddings=32, **extra)
    with torch.device("meta"):
        return transformers.LlamaForCausalLM(config)


# ------------------------------------------------------------------------------------ plans
def test_default_plan_splits_the_llama_blocks():
    layers = {p.name: p for p in check_plan(_model(), world_size=4)}
    assert layers["model.layers.0.self_attn.q_proj"].style == "colwise"
    assert layers["model.layers.0.self_attn.k_proj"].unit == 16          # whole heads (head_dim 16)
    assert layers["model.layers.0.mlp.down_proj"].style == "rowwise" and layers["model.layers.0.mlp.down_proj"].dim == 1
    assert layers["lm_head"].style == "colwise_rep" and layers["model.embed_tokens"].style == "vocab"
    assert layers["model.layers.0.self_attn.k_proj"].bounds(3, 4) == (48, 64)


@pytest.mark.parametrize("model, world, match", [
    (dict(kv_heads=2), 4, "num_key_value_heads=2 does not divide evenly over 4 ranks"),
    (dict(heads=6, kv_heads=6, hidden=96), 4, "num_attention_heads=6 does not divide"),
    (dict(intermediate=90), 4, "90 output features do not divide evenly over 4 ranks"),
])
def test_sizes_that_do_not_divide(model, world, match):
    with pytest.raises(ValueError, match=match):
        check_plan(_model(**model), world_size=world)


@pytest.mark.parametrize("plan, match", [
    ({**LLAMA_PLAN, "lm_head": "columnwise"}, "unknown style"),
    ({**LLAMA_PLAN, "model.layers.*.mlp.fc1": "colwise"}, "match no module"),
    ({**LLAMA_PLAN, "model.layers.*.self_attn.o_proj": "replicate"}, "must feed a rowwise layer"),
    ({**LLAMA_PLAN, "model.layers.*.mlp.up_proj": "replicate"}, "rowwise but not"),
    ({**LLAMA_PLAN, "model.embed_tokens": "colwise"}, "needs a Linear"),
    ({**LLAMA_PLAN, "lm_head": "vocab"}, "needs an nn.Embedding"),
    ({**LLAMA_PLAN, "model.layers.0.mlp.*": "replicate"}, "conflicting styles"),
    (["lm_head"], "plan must be a dict"),
])
def test_bad_plans_name_the_problem(plan, match):
    with pytest.raises(ValueError, match=match):
        check_plan(_model(), plan, world_size=2)


def test_other_models_need_a_plan_and_processes_need_a_group():
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="no default tensor-parallel plan for GPT2LMHeadModel"):
        check_plan(gpt2, world_size=2)
    with pytest.raises(ValueError, match="world size"):
        check_plan(_model(), world_size=0)
    assert check_plan(_model(), {"lm_head": "replicate"}, world_size=2) == ()
    with pytest.raises(RuntimeError, match="init_process_group"):
        sparseinfer.distributed.parallelize(_model())


# ------------------------------------------------------------------------------- shard rules
ROWS, COLS = 48, 256


def _layer(name: str):
    spec = registry.get(name)
    dense, packed = spec.example(ROWS, COLS, 0.5, torch.float32, 0)
    return spec.layer_cls.from_weight(packed), packed.to_dense()


@pytest.mark.parametrize("name", registry.names())
def test_every_format_shards_exactly(name):
    layer, dense = _layer(name)
    for dim, cuts in ((0, (0, 20, 48)), (1, (0, 128, 256))):
        parts = [shard_linear(layer, dim, a, b) for a, b in zip(cuts, cuts[1:])]
        assert all(type(p) is type(layer) for p in parts)
        joined = torch.cat([p.weight.to_dense() for p in parts], dim=dim)
        assert torch.equal(joined, dense), (name, dim)
        x = torch.randn(3, parts[0].in_features)
        if dim == 0:  # the shard runs on its own kernels
            torch.testing.assert_close(parts[0](x), layer(x)[:, :20], rtol=1e-3, atol=1e-3)


def test_csr_columns_at_any_bound_repack_the_bits():
    layer = sparseinfer.CSRLinear.from_dense(torch.randn(37, 100) * (torch.rand(37, 100) > 0.6))
    for a, b in ((0, 13), (13, 57), (57, 100), (5, 5)):
        assert torch.equal(shard_linear(layer, 1, a, b).weight.to_dense(), layer.weight.to_dense()[:, a:b])


def test_formats_name_the_boundaries_they_need():
    w24 = sparseinfer.Sparse24Linear.from_dense(torch.randn(8, 64), prune=True)
    with pytest.raises(ValueError, match="multiples of 4"):
        shard_linear(w24, 1, 2, 34)
    grouped = sparseinfer.Int8Linear.from_dense(torch.randn(8, 128), group_size=64)
    with pytest.raises(ValueError, match="grouped by 64 columns split on columns only at group boundaries"):
        shard_linear(grouped, 1, 0, 32)
    assert torch.equal(shard_linear(grouped, 1, 64, 128).weight.to_dense(), grouped.weight.to_dense()[:, 64:])


@pytest.mark.parametrize("name", registry.names())
def test_without_a_rule_the_fallback_is_exact_or_refuses(name, monkeypatch):
    """A format with no rule (and no known canonical layout): dequantize, slice, re-pack, only if
    that gives back the same values; else a ValueError naming the format."""
    spec = registry.get(name)
    monkeypatch.setitem(registry.FORMATS, name, dataclasses.replace(spec, shard=None))
    monkeypatch.setattr(sparseinfer.distributed.tensor_parallel, "layout_rule", lambda keys: None)
    layer, dense = _layer(name)
    try:
        part = shard_linear(layer, 0, 0, 24)
    except ValueError as exc:
        assert f"format {name!r} registers no sharding rule" in str(exc)
    else:
        assert torch.equal(part.weight.to_dense(), dense[:24])


def test_split_bounds_cover_uneven_sizes():
    assert [rules.split_bounds(10, 4, r) for r in range(4)] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert [rules.split_bounds(96, 2, r, 32) for r in range(2)] == [(0, 64), (64, 96)]


# --------------------------------------------------------------------- the sliced checkpoint reader
def _saved(tmp_path, fmt, **options):
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=64, max_position_embeddings=32)).eval()
    spec = registry.get(fmt)
    if spec.prune is not None:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.Linear):
                    m.weight.copy_(spec.prune(m.weight, 0.6))
    sparseinfer.sparsify(model, fmt, **options)
    sparseinfer.save(model, str(tmp_path))
    return model


def _shard(tmp_path, name, dim, start, stop):
    reader = TensorReader(str(tmp_path))
    config = CompressionConfig.parse(read_json(str(tmp_path / "config.json")).get("quantization_config"))
    with torch.device("meta"):
        module = torch.nn.Linear(256, 128, bias=False) if "down" in name else torch.nn.Linear(128, 256, bias=False)
    return sharded_load._load_linear_shard(reader, name, module, dim, start, stop, config, 0.5, Notes())


@pytest.mark.parametrize("fmt", ["csr", "2:4", "int8"])
def test_a_rank_reads_about_its_share(tmp_path, monkeypatch, fmt):
    model = _saved(tmp_path, fmt)
    read = []
    original = sharded_load._LazyTensor.__getitem__

    def counting(self, index):
        t = original(self, index)
        read.append(t.numel() * t.element_size())
        return t
    monkeypatch.setattr(sharded_load._LazyTensor, "__getitem__", counting)
    name = "model.layers.0.mlp.down_proj"
    part = _shard(tmp_path, name, 1, 128, 256)
    full = model.get_submodule(name).weight
    assert torch.equal(part.weight.to_dense(), full.to_dense()[:, 128:])
    stored = sum(t.numel() * t.element_size() for t in full.to_canonical().values())
    bitmask = 128 * 256 // 8 if fmt != "int8" else 0   # CSR / 2:4 read every row's bits to find the values
    assert sum(read) <= stored / 2 + bitmask + 4096, (sum(read), stored)


def test_sliced_load_validates_untrusted_data(tmp_path):
    _saved(tmp_path, "csr")
    from safetensors.torch import load_file, save_file
    path = tmp_path / "model.safetensors"
    tensors = load_file(str(path))
    key = "model.layers.0.mlp.up_proj.row_offsets"
    tensors[key] = tensors[key] + 1
    save_file(tensors, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"tensor model.layers.0.mlp.up_proj.row_offsets: row_offsets\[0\]"):
        _shard(tmp_path, "model.layers.0.mlp.up_proj", 0, 0, 128)
    key = "model.layers.0.mlp.down_proj.compressed"
    tensors[key] = tensors[key][:-1].clone()
    save_file(tensors, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="tensor model.layers.0.mlp.down_proj.compressed"):
        _shard(tmp_path, "model.layers.0.mlp.down_proj", 1, 0, 128)


def test_allreduce_paper_estimate():
    from sparseinfer.benchmarks.tp_bench import allreduce_estimate
    e = allreduce_estimate(hidden=8192, layers=80, world=8, link_gbps=100, act_bytes=2, latency_us=10)
    # 160 all-reduces of 16 KiB: 2 * 7/8 * 16 KiB each per rank, plus the 32000-logit all-gather
    assert e["allreduces_per_token"] == 160
    assert e["bytes_per_token_per_rank"] == 160 * 2 * 7 / 8 * 16384 + 7 / 8 * 32000 * 4
    assert abs(e["bandwidth_ms"] - e["bytes_per_token_per_rank"] / 12.5e9 * 1e3) < 1e-9
    assert e["latency_ms_tree"] == (160 * 2 * 3 + 3) * 10 / 1e3


def test_tied_embedding_loads_one_shared_shard(tmp_path, monkeypatch):
    """A checkpoint with tie_word_embeddings stores the table once: the lm_head shard of each rank
    is the embedding shard (read once), and the ranks' shards make up the table."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=50, max_position_embeddings=32, tie_word_embeddings=True)).eval()
    sparseinfer.save(model, str(tmp_path))
    table = model.model.embed_tokens.weight.detach()
    parts = []
    for rank in range(2):
        monkeypatch.setattr(sharded_load, "group_info", lambda group, rank=rank: (None, rank, 2))
        split = sparseinfer.load(str(tmp_path), tp_group="no processes: group_info is patched")
        assert split.lm_head.local.weight is split.model.embed_tokens.weight
        assert split.sparseinfer_tp.local_heads == 2 and split.sparseinfer_tp.local_kv_heads == 1
        parts.append(split.model.embed_tokens.weight.detach())
    assert torch.equal(torch.cat(parts), table)
