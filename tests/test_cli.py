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
    assert len(data["results"]) == 4 and data["machine"]["sparseinfer"]["active_isa"]
    for r in data["results"]:
        assert r["speedup"] > 0 and r["dense_ms"] > 0 and r["path"] in ("rows_expand", "rows_gather", "tokens")


def test_bench_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--shapes", "10"])
    with pytest.raises(SystemExit):
        main(["bench", "--sparsity", "1.5"])
    assert main(["bench", "--shapes", "8x8", "--m", "1", "--sparsity", "0.5", "--isa", "sse9",
                 "--min-time", "0.01"]) == 2
    assert "unknown CPU ISA" in capsys.readouterr().err


def test_info(capsys):
    assert main(["info"]) == 0
    assert "supported_isas" in capsys.readouterr().out
