"""The conversion benchmark (sparsify / save / load per format vs a dense safetensors save and
load+copy) runs end to end on a tiny Llama and reports every stage; its timings are not asserted."""
import json

import pytest

pytest.importorskip("transformers")

from sparseinfer.benchmarks import conversion  # noqa: E402

TINY = {"hidden_size": 64, "intermediate_size": 160, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 96}


def test_run_reports_every_stage(tmp_path):
    doc = conversion.run(layers=1, formats=("csr", "2:4", "int8"), out_dir=str(tmp_path), repeats=1,
                         workdir=str(tmp_path), shape=TINY)
    stages = {(r["format"], r["stage"]) for r in doc["results"]}
    assert stages == {("dense", "save"), ("dense", "load")} | {
        (f, s) for f in ("csr", "2:4", "int8") for s in ("sparsify", "save", "load")}
    assert all(r["seconds"] > 0 and r["ratio"] > 0 and r["file_bytes"] > 0 for r in doc["results"])
    saved = json.loads((tmp_path / "conversion_1layers.json").read_text())
    assert saved["params"]["shape"]["hidden_size"] == 64 and "int8" in saved["table"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("sparseinfer-conversion-")]  # cleaned up


def test_cli_help_and_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        conversion.main(["--help"])
    assert "--layers" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        conversion.main(["--layers", "0"])
