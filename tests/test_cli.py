import json

import pytest

from sparseinfer.cli import main


def test_bench_writes_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["bench", "--shapes", "96x200", "--sparsity", "0.5", "0.9", "--m", "1", "17",
                 "--min-time", "0.01", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "96 x 200" in text and "speedup" in text
    data = json.loads(out.read_text())
    assert data["machine"]["sparseinfer"]["active_isa"]
    assert [(r["format"], r["m"]) for r in data["results"]] == [
        ("csr", 1), ("csr", 17), ("csr", 1), ("csr", 17), ("2:4", 1), ("2:4", 17)]
    paths = {"csr": ("rows_expand", "rows_gather", "tokens"), "2:4": ("rows", "tokens")}
    for r in data["results"]:
        assert r["speedup"] > 0 and r["dense_ms"] > 0 and r["path"] in paths[r["format"]]


def test_bench_one_format_and_dtype(capsys):
    assert main(["bench", "--format", "2:4", "--dtype", "bf16", "--shapes", "64x64", "--m", "3",
                 "--min-time", "0.01"]) == 0
    text = capsys.readouterr().out
    assert "2:4" in text and "bfloat16" in text


def test_bench_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--shapes", "10"])
    with pytest.raises(SystemExit):
        main(["bench", "--sparsity", "1.5"])
    with pytest.raises(SystemExit):
        main(["bench", "--format", "4:8"])
    assert main(["bench", "--shapes", "8x8", "--m", "1", "--sparsity", "0.5", "--isa", "sse9",
                 "--min-time", "0.01"]) == 2
    assert "unknown CPU ISA" in capsys.readouterr().err


def test_info(capsys):
    assert main(["info"]) == 0
    assert "supported_isas" in capsys.readouterr().out
