"""`sparseinfer bench-model` on the toy shape: every engine runs, the document holds what the
README promises (tok/s with min-max, GB per token, roofline fraction, glue share), files are
written, and the lossless sparse formats generate exactly the tokens of plain PyTorch on the same
pruned weights."""
import copy
import json

import pytest
import torch

pytest.importorskip("transformers")

from sparseinfer import registry, sparsify
from sparseinfer.benchmarks.decode import prompt_ids, time_generate
from sparseinfer.benchmarks.model_bench import ModelBenchConfig, format_table, run, write
from sparseinfer.benchmarks.model_configs import SHAPES, build_model
from sparseinfer.benchmarks.model_engines import format_engines, weight_bytes_per_token
from sparseinfer.cli import main


@pytest.fixture(scope="module")
def doc():
    return run(ModelBenchConfig(shape="tiny", new_tokens=4, reps=1, llama_cpp=False), progress=False)


def test_every_engine_has_a_row(doc):
    names = [r["engine"] for r in doc["results"]]
    for expected in ("torch fp32", "torch bf16", "torch quantize_dynamic int8", "csr 50%", "csr 90%", "2:4",
                     "int8 (act=dynamic)", "int8 (act=none)", "llama.cpp Q8_0", "llama.cpp Q4_0"):
        assert expected in names, names
    registered = {r["details"].get("format") for r in doc["results"] if r["kind"] == "sparseinfer"}
    assert registered == {s.name for s in registry.FORMATS.values() if "cpu" in s.devices}


def test_rows_hold_the_figures(doc):
    assert doc["read_bandwidth_gbs"] > 0
    for r in doc["results"]:
        if r["kind"] == "llama.cpp":
            assert r["skipped"] and "disabled" in r["skipped"]
            continue
        assert r["skipped"] is None
        tok = r["decode_tok_s"]
        assert 0 < tok["min"] <= tok["median"] <= tok["max"]
        assert r["prefill_tok_s"]["median"] > 0
        assert r["gb_per_token"] > 0
        assert r["roofline_fraction"] == pytest.approx(tok["median"] * r["gb_per_token"] / doc["read_bandwidth_gbs"])
        assert 0 <= r["glue"]["glue_share"] <= 1
        assert r["glue"]["linear_layers"] == 2 * 7 + 1
        assert r["in_model_over_standalone"] > 0
    table = format_table(doc)
    assert "csr 70%" in table and "GB/s" in table


def test_bytes_per_token_follow_the_format(doc):
    by_name = {r["engine"]: r["gb_per_token"] for r in doc["results"]}
    assert by_name["torch bf16"] == pytest.approx(by_name["torch fp32"] / 2, rel=0.01)
    assert by_name["int8 (act=none)"] < by_name["torch bf16"]
    assert by_name["csr 90%"] < by_name["csr 70%"] < by_name["csr 50%"]


def test_sparse_heads_get_the_int8_fallback(doc):
    row = next(r for r in doc["results"] if r["engine"] == "csr 70%")
    assert row["details"]["layers"] == {"csr": 14, "int8": 1}


def test_lossless_formats_generate_the_tokens_of_plain_pytorch():
    base = build_model(SHAPES["tiny"], seed=1)
    prompt = prompt_ids(8, base.config.vocab_size, seed=1)
    for engine in format_engines(["csr", "2:4"], [0.7], head_fallback=None):
        ours = engine.build(base)
        plain = copy.deepcopy(base)
        spec = registry.get(engine.details["format"])
        with torch.no_grad():  # the same pruned weights, run by plain PyTorch
            for name, module in plain.named_modules():
                if isinstance(module, torch.nn.Linear) and name != "lm_head":
                    module.weight.copy_(spec.prune(module.weight, 0.7))
        a = time_generate(ours, prompt, 12, reps=1, warmup=0).tokens
        b = time_generate(plain, prompt, 12, reps=1, warmup=0).tokens
        assert a == b, engine.name
        assert weight_bytes_per_token(ours) < weight_bytes_per_token(plain)


def test_write_json_txt_png(doc, tmp_path):
    json_path, png = write(doc, str(tmp_path / "out"))
    loaded = json.loads(json_path.read_text())
    assert loaded["results"][0]["engine"] == doc["results"][0]["engine"]
    assert (tmp_path / "out.txt").read_text().startswith("tiny")
    if png is not None:
        assert png.stat().st_size > 1000


def test_cli_runs_and_rejects_bad_arguments(tmp_path, capsys):
    assert main(["bench-model", "--shape", "tiny", "--engines", "int8 (act=none)", "--new-tokens", "3",
                 "--reps", "1", "--no-llama-cpp", "--no-glue", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "int8 (act=none)" in out and (tmp_path / "r.json").exists()
    assert main(["bench-model", "--shape", "tiny", "--new-tokens", "1"]) == 2
    assert "--new-tokens" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench-model", "--shape", "no-such-shape"])
