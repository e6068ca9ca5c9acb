import json

import pytest

from sparseinfer.cli import main


def test_bench_writes_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["bench", "--shapes", "96x200", "--sparsity", "0.5", "0.9", "--m", "1", "17",
                 "--min-time", "0.01", "--no-bandwidth", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "96 x 200" in text and "speedup" in text
    data = json.loads(out.read_text())
    assert data["machine"]["sparseinfer"]["active_isa"]
    assert [(r["format"], r["m"]) for r in data["results"]] == ([
        ("csr", 1), ("csr", 17), ("csr", 1), ("csr", 17), ("2:4", 1), ("2:4", 17),
        ("int8", 1), ("int8", 17), ("int8", 1), ("int8", 17), ("int4", 1), ("int4", 17), ("int4", 1), ("int4", 17),
        ("codebook", 1), ("codebook", 17), ("codebook", 1), ("codebook", 17)]
        + [("csr+int8", m) for _ in range(2) for m in (1, 17)]  # 2 sparsities, W8A8
        + [("2:4+int8", m) for m in (1, 17)])  # every registered format by default
    lut4 = ("reference_dynamic", "reference_float", "avx2_dynamic", "avx2_float")
    paths = {"csr": ("rows_expand", "rows_gather", "tokens"), "2:4": ("rows", "tokens"),
             "int8": ("reference", "avx2_rows", "vnni_rows", "amx_tiles", "dequant_rows", "dequant_tiles"),
             "int4": lut4, "codebook": lut4, "csr+int8": lut4, "2:4+int8": lut4}
    for r in data["results"]:
        assert r["speedup"] > 0 and r["dense_ms"] > 0 and r["path"] in paths[r["format"]]


def test_bench_one_format_and_dtype(capsys):
    assert main(["bench", "--format", "2:4", "--dtype", "bf16", "--shapes", "64x64", "--m", "3",
                 "--min-time", "0.01", "--no-bandwidth"]) == 0
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


def test_bench_int8(tmp_path, capsys):
    out = tmp_path / "int8.json"
    assert main(["bench", "--format", "int8", "--shapes", "64x256", "--m", "1", "20",
                 "--min-time", "0.01", "--no-ort", "--no-bandwidth", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "torch_dynamic_int8" in text and "64 x 256" in text
    data = json.loads(out.read_text())
    rows = data["results"]
    assert [(r["options"]["act"], r["m"]) for r in rows] == [("dynamic", 1), ("dynamic", 20), ("none", 1), ("none", 20)]
    for r in rows:
        assert r["speedup"] > 0 and r["vs"]["torch_dynamic_int8"] > 0 and "ort_int8" not in r["baseline_ms"]
    assert main(["bench", "--format", "int8", "--group-size", "48", "--shapes", "8x64"]) == 2
