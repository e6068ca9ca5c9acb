"""Per-layer plans of sparsify: fallback formats for the layers the main format cannot take,
format="auto" (timed choice among the allowed formats, cached in memory and on disk), tied heads,
the report, the checkpoint of a mixed model, and the argument errors."""
import json
import warnings

import pytest
import torch
from torch import nn

import sparseinfer
from sparseinfer import CSRLinear, Int8Linear, Sparse24Linear, plan, sparsify
from sparseinfer.compress import prune_2_4
from checkpoint_models import mlp


@pytest.fixture(autouse=True)
def _fresh_memory():
    plan.AutoPlanner.clear_memory()
    yield
    plan.AutoPlanner.clear_memory()


def _pruned(layer: nn.Linear, kind: str) -> nn.Linear:
    with torch.no_grad():
        if kind == "csr":
            layer.weight[torch.rand(layer.weight.shape) < 0.8] = 0
        elif kind == "2:4":
            layer.weight.copy_(prune_2_4(layer.weight))
    return layer


def _net(kinds=("csr", "2:4", "dense"), width=64) -> nn.Sequential:
    """Linears of one shape each pruned as `kinds` says, ReLU between."""
    torch.manual_seed(0)
    layers = []
    for kind in kinds:
        layers += [_pruned(nn.Linear(width, width), kind), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).eval()


def _outputs(model, x):
    with torch.no_grad():
        return model(x)


# ------------------------------------------------------------------ fallback
def test_fallback_takes_what_the_main_format_cannot():
    net, x = _net(), torch.randn(3, 64)
    expected = _outputs(net, x)
    report = sparsify(net, "csr", min_sparsity=0.6, fallback="int8")
    assert [type(net[i]) for i in (0, 2, 4)] == [CSRLinear, Int8Linear, Int8Linear]
    assert report.formats == {"0": "csr", "2": "int8", "4": "int8"}
    rows = {l.name: l for l in report.layers}
    assert rows["0"].reason == "" and rows["0"].options == {}
    assert rows["4"].reason == "csr: sparsity below 0.6 -> fallback int8 (act=dynamic)"
    assert rows["4"].options == {"act": "dynamic", "group_size": None}  # the format's defaults
    assert net[4].act == "dynamic"
    torch.testing.assert_close(_outputs(net, x), expected, rtol=0.05, atol=0.05)


def test_fallbacks_are_tried_in_order_with_their_own_options():
    net = _net()
    report = sparsify(net, "csr", min_sparsity=0.6,
                      fallback=["2:4", ("int8", {"act": "none", "group_size": 32})])
    assert [type(net[i]) for i in (0, 2, 4)] == [CSRLinear, Sparse24Linear, Int8Linear]
    assert (net[4].act, net[4].group_size) == ("none", 32)
    rows = {l.name: l for l in report.layers}
    assert rows["2"].reason == "csr: sparsity below 0.6 -> fallback 2:4"
    assert rows["4"].reason == "csr: sparsity below 0.6 -> fallback int8 (act=none, group_size=32)"
    assert rows["4"].options == {"act": "none", "group_size": 32}
    # a single (name, options) pair is one fallback, not two names
    net = _net()
    sparsify(net, "2:4", fallback=("int8", {"act": "none"}))
    assert [type(net[i]) for i in (0, 2, 4)] == [Int8Linear, Sparse24Linear, Int8Linear]


def test_main_options_go_to_the_main_format_only():
    net = _net()
    sparsify(net, "int8", act="none", fallback="csr")  # int8 takes every layer here
    assert {net[i].act for i in (0, 2, 4)} == {"none"}
    with pytest.raises(ValueError, match=r"format: unknown option\(s\) \['act'\] for format 'csr'"):
        sparsify(_net(), "csr", fallback="int8", act="none")  # int8's options go in the pair


def test_dense_ends_the_fallbacks_and_refusals_are_reported():
    net = _net()
    report = sparsify(net, "csr", min_sparsity=0.6, fallback=("2:4", "dense", "int8"))
    assert [type(net[i]) for i in (0, 2, 4)] == [CSRLinear, Sparse24Linear, nn.Linear]
    assert report.layers[2].reason == "csr: sparsity below 0.6 -> dense (fallback)"
    net = _net()
    report = sparsify(net, "2:4", fallback="csr")
    assert type(net[4]) is nn.Linear
    assert report.layers[2].reason.startswith("2:4: not 2:4: row 0")
    assert report.layers[2].reason.endswith("; no fallback takes it (csr: sparsity below 0.5)")


def test_no_fallback_keeps_the_blocker_as_the_reason():
    net = _net()
    report = sparsify(net, "csr")
    assert report.formats == {"0": "csr", "2": "csr", "4": "dense"}  # 2:4 is 50% sparse
    assert report.layers[2].reason == "sparsity below 0.5" and not report.layers[2].converted


def test_filtered_layers_get_no_fallback():
    net = _net()
    report = sparsify(net, "csr", fallback="int8", filter=lambda name, m: name != "4")
    assert type(net[4]) is nn.Linear
    assert report.layers[2].reason == "excluded by filter" and report.formats["4"] == "dense"
    net = _net()
    report = sparsify(net, "auto", filter=lambda name, m: name == "0")
    assert report.formats["2"] == report.formats["4"] == "dense"
    assert report.layers[1].reason == "excluded by filter" and report.layers[1].timings_ms == {}


# ------------------------------------------------------------------ tied heads
class _TiedLM(nn.Module):
    def __init__(self, vocab=96, dim=48):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.body = _pruned(nn.Linear(dim, dim), "csr")
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # tie_word_embeddings

    def forward(self, ids):
        return self.head(torch.relu(self.body(self.embed(ids))))


def test_tied_head_gets_a_packed_copy_and_the_embedding_keeps_its_weight():
    torch.manual_seed(0)
    model = _TiedLM().eval()
    weight = model.embed.weight
    dense_copy = weight.detach().clone()
    ids = torch.tensor([[1, 5, 7, 95]])
    expected = _outputs(model, ids)
    report = sparsify(model, "csr", fallback=("int8", {"act": "none"}))
    assert isinstance(model.head, Int8Linear) and isinstance(model.body, CSRLinear)
    assert model.embed.weight is weight and torch.equal(weight.detach(), dense_copy)
    assert torch.equal(_outputs(model.embed, ids), dense_copy[ids])
    head = {l.name: l for l in report.layers}["head"]
    assert head.reason == ("csr: sparsity below 0.5 -> fallback int8 (act=none); weight tied with "
                           "embed.weight (kept dense there; this layer holds a packed copy)")
    scale = dense_copy.abs().amax(1, keepdim=True) / 127  # int8's per-row rounding bound (x2)
    assert ((model.head.weight.to_dense() - dense_copy).abs() <= scale).all()
    torch.testing.assert_close(_outputs(model, ids), expected, rtol=0, atol=0.1)


def test_tied_hugging_face_head():
    transformers = pytest.importorskip("transformers", reason="transformers is an optional test dependency")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, vocab_size=100,
                                      num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=2, tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(config).eval()
    embed = model.model.embed_tokens.weight
    assert model.lm_head.weight is embed
    ids = torch.tensor([[1, 5, 7]])
    expected = _outputs(model, ids).logits
    report = sparsify(model, "csr", fallback=("int8", {"act": "none"}))
    assert report.formats["lm_head"] == "int8" and model.model.embed_tokens.weight is embed
    torch.testing.assert_close(_outputs(model, ids).logits, expected, rtol=0.02, atol=0.02)


# ------------------------------------------------------------------ checkpoint
def test_csr_with_int8_fallback_saves_and_loads(tmp_path):
    model = mlp().eval()
    for i in (0, 2):
        _pruned(model[i], "csr")
    report = sparsify(model, "csr", fallback=("int8", {"act": "none"}))
    assert report.formats == {"0": "csr", "2": "csr", "4": "int8"}
    x = torch.randn(4, 72)
    expected = _outputs(model, x)
    sparseinfer.save(model, tmp_path)
    loaded = sparseinfer.load(tmp_path, mlp())
    assert [type(m) for m in loaded[::2]] == [CSRLinear, CSRLinear, Int8Linear] and loaded[4].act == "none"
    assert torch.equal(_outputs(loaded, x), expected)


# ------------------------------------------------------------------ format="auto"
FAKE_MS = {"csr": 1.0, "2:4": 2.0, "int8": 0.5, "int4": 0.6, "codebook": 0.7, "dense": 3.0}


@pytest.fixture
def fake_timer(monkeypatch):
    """plan.measure replaced: fixed times per format; records what was timed."""
    calls = []

    def measure(choices, weight, m):
        calls.append(([c.label for c in choices], tuple(weight.shape), m))
        return {c.label: FAKE_MS[c.name] for c in choices}, []

    monkeypatch.setattr(plan, "measure", measure)
    return calls


def test_auto_picks_the_fastest_allowed_candidate(fake_timer):
    net, x = _net(), torch.randn(2, 64)
    expected = _outputs(net, x)
    report = sparsify(net, "auto")  # default allow: lossless only, int8 is never a candidate
    assert report.formats == {"0": "csr", "2": "csr", "4": "dense"}
    assert all("int8" not in labels for labels, _, _ in fake_timer)
    assert fake_timer[0] == (["csr", "dense"], (64, 64), 1)
    rows = {l.name: l for l in report.layers}
    assert rows["0"].reason == "auto: csr 1 ms, dense 3 ms; n/a: 2:4 (not 2:4)"
    assert rows["0"].timings_ms == {"csr": 1.0, "dense": 3.0}
    assert rows["4"].reason == "auto: dense (the only candidate); n/a: csr (sparsity below 0.5), 2:4 (not 2:4)"
    torch.testing.assert_close(_outputs(net, x), expected)  # lossless formats only (up to summation order)

    net = _net()
    report = sparsify(net, "auto", allow=("csr", "2:4", ("int8", {"act": "none"}), "dense"), m=4)
    assert report.formats == {"0": "int8", "2": "int8", "4": "int8"} and net[0].act == "none"
    assert fake_timer[-1][2] == 4
    assert {l.name: l.reason for l in report.layers}["2"] == \
        "auto: int8 (act=none) 0.5 ms, csr 1 ms, 2:4 2 ms, dense 3 ms"


def test_auto_runs_real_timings():
    net, x = _net(("csr", "csr"), width=48), torch.randn(1, 48)
    expected = _outputs(net, x)
    report = sparsify(net, "auto", allow=("csr", "dense"))
    for row in report.layers:
        assert set(row.timings_ms) == {"csr", "dense"} and all(t > 0 for t in row.timings_ms.values())
        assert row.format == min(row.timings_ms, key=row.timings_ms.get)
    torch.testing.assert_close(_outputs(net, x), expected)


def test_auto_times_each_key_once_per_process(fake_timer):
    report = sparsify(_net(("csr", "csr", "csr")), "auto")  # three layers of one shape and sparsity
    assert len(fake_timer) == 1
    assert ["(cached)" in l.reason for l in report.layers] == [False, True, True]
    sparsify(_net(("csr",)), "auto")
    assert len(fake_timer) == 1
    sparsify(_net(("csr",)), "auto", m=2)  # another m, another key
    assert len(fake_timer) == 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads != 1 else 2)  # the thread count is in the key too
    try:
        sparsify(_net(("csr",)), "auto")
    finally:
        torch.set_num_threads(threads)
    assert len(fake_timer) == 3


def test_auto_cache_file_is_written_and_reused(fake_timer, tmp_path):
    path = tmp_path / "plan.json"
    sparsify(_net(), "auto", cache=path)  # two keys: csr or dense, csr or 2:4 or dense
    assert len(fake_timer) == 2
    data = json.loads(path.read_text())
    assert data["version"] == 1 and len(data["entries"]) == 2
    keys = sorted(data["entries"], key=len)
    assert json.loads(keys[0])["shape"] == [64, 64] and json.loads(keys[0])["candidates"] == ["csr", "dense"]
    assert {e["choice"] for e in data["entries"].values()} == {"csr"}
    plan.AutoPlanner.clear_memory()
    report = sparsify(_net(), "auto", cache=str(path))
    assert len(fake_timer) == 2 and report.formats == {"0": "csr", "2": "csr", "4": "dense"}
    assert report.layers[0].reason == "auto: csr 1 ms, dense 3 ms (cached); n/a: 2:4 (not 2:4)"


def test_auto_cache_file_is_data_only(fake_timer, tmp_path):
    path = tmp_path / "plan.json"
    sparsify(_net(("csr",)), "auto", cache=path)
    data = json.loads(path.read_text())
    key = next(iter(data["entries"]))
    # a decision naming a candidate this call does not allow (or garbage) is a miss, re-timed
    for bad in ({"choice": "int8", "times_ms": {"int8": 0.1}}, {"choice": "csr", "times_ms": {"csr": "0"}},
                {"choice": "__import__('os')", "times_ms": {"__import__('os')": 0}}, "csr", None):
        plan.AutoPlanner.clear_memory()
        path.write_text(json.dumps({"version": 1, "entries": {key: bad}}))
        before = len(fake_timer)
        report = sparsify(_net(("csr",)), "auto", cache=path)
        assert len(fake_timer) == before + 1 and report.formats == {"0": "csr"}
        assert json.loads(path.read_text())["entries"][key]["choice"] == "csr"  # rewritten


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b"[1, 2]", b'{"version": 99, "entries": {}}'])
def test_auto_corrupt_cache_file_warns_and_is_rewritten(fake_timer, tmp_path, content):
    path = tmp_path / "plan.json"
    path.write_bytes(content)
    with pytest.warns(UserWarning, match="ignoring the auto-tuning cache"):
        report = sparsify(_net(("csr",)), "auto", cache=path)
    assert report.formats == {"0": "csr"} and len(fake_timer) == 1
    assert json.loads(path.read_text())["version"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sparsify(_net(("csr",)), "auto", cache=path)


def test_auto_with_one_candidate_times_nothing(fake_timer):
    report = sparsify(_net(), "auto", allow=["dense"])
    assert report.formats == {"0": "dense", "2": "dense", "4": "dense"} and fake_timer == []
    report = sparsify(_net(("2:4",)), "auto", allow=["2:4"])
    assert report.formats == {"0": "2:4"} and report.layers[0].reason == "auto: 2:4 (the only candidate)"
    report = sparsify(_net(("dense",)), "auto", allow=["2:4", "csr"])
    assert report.formats == {"0": "dense"}
    assert report.layers[0].reason == "auto: no allowed format takes it; n/a: 2:4 (not 2:4), csr (sparsity below 0.5)"


def test_auto_skips_a_candidate_that_cannot_run(monkeypatch):
    def measure(choices, weight, m):
        return {"dense": 2.0}, ["csr: refused"]

    monkeypatch.setattr(plan, "measure", measure)
    report = sparsify(_net(("csr",)), "auto")
    assert report.formats == {"0": "dense"}
    assert report.layers[0].reason == "auto: dense 2 ms; failed: csr: refused; n/a: 2:4 (not 2:4)"


# ------------------------------------------------------------------ the report
def test_report_rows_and_json(fake_timer):
    net = _net()
    report = sparsify(net, "csr", min_sparsity=0.6, fallback=("int8", {"act": "none"}))
    text = str(report)
    assert "int8 (act=none)" in text and "csr: sparsity below 0.6 -> fallback int8 (act=none)" in text
    assert text.splitlines()[-1].startswith("3/3 Linear layers -> csr x1, int8 (act=none) x2; ")
    assert len(report.converted) == 3 and report.format == "csr"
    assert report.sparse_bytes < report.dense_bytes == 3 * 64 * 64 * 4
    data = json.loads(json.dumps(report.to_dict()))
    assert data["format"] == "csr" and data["converted"] == 3
    assert data["layers"][1] == {**data["layers"][1], "name": "2", "shape": [64, 64], "format": "int8",
                                 "options": {"act": "none", "group_size": None}, "converted": True}
    report = sparsify(_net(("csr", "dense")), "auto")
    text = str(report)
    assert "auto: csr 1 ms, dense 3 ms" in text
    assert text.splitlines()[-1].startswith("1/2 Linear layers -> csr x1; ")
    assert report.formats == {"0": "csr", "2": "dense"} and report.format == "auto"
    report = sparsify(_net(("csr",)), "csr")
    assert str(report).splitlines()[-1].startswith("1/1 Linear layers -> csr; ")


# ------------------------------------------------------------------ argument errors
@pytest.mark.parametrize("kwargs, message", [
    (dict(fallback=5), "fallback must be a format name"),
    (dict(fallback="blocked"), "fallback: unknown format 'blocked'"),
    (dict(fallback=["int8", 3]), "fallback: each entry must be"),
    (dict(fallback=("int8", {"act": "bad"})), "fallback: .*act"),
    (dict(fallback=("int8", {"nope": 1})), r"fallback: unknown option\(s\) \['nope'\]"),
    (dict(fallback=("int8", ["act"])), "fallback: each entry must be"),
    (dict(fallback="auto"), "fallback: 'auto' is not a format"),
    (dict(fallback=[("dense", {"x": 1})]), "fallback: 'dense' takes no options"),
    (dict(fallback=["int8", "int8"]), r"fallback: 'int8 \(act=dynamic\)' is given twice"),
    (dict(allow=["csr"]), "allow: only format='auto'"),
    (dict(m=4, cache="x.json"), "m, cache: only format='auto'"),
    (dict(format="auto", allow=[]), "allow must name at least one"),
    (dict(format="auto", allow=["csr", "fast"]), "allow: unknown format 'fast'"),
    (dict(format="auto", m=0), "m must be a positive int"),
    (dict(format="auto", m=1.5), "m must be a positive int"),
    (dict(format="auto", cache=5), "cache must be a file path"),
    (dict(format="auto", act="none"), "format='auto' takes no format options"),
    (dict(format="auto", fallback="int8"), "fallback does not apply to format='auto'"),
    (dict(format="blocked"), "format: unknown format 'blocked'"),
])
def test_bad_arguments_name_the_argument(kwargs, message):
    net = _net(("csr",))
    with pytest.raises(ValueError, match=message):
        sparsify(net, **kwargs)
    assert type(net[0]) is nn.Linear  # nothing swapped
