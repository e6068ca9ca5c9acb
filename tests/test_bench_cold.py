"""Cold ("streaming") kernel benchmarks: LLC size, weight copies in distinct memory, rotation call
by call, the bytes-ceiling flag and the cold + warm JSON. Tiny LLC overrides keep the copies few."""
import dataclasses
import json

import pytest
import torch

from sparseinfer import registry
from sparseinfer.benchmarks import baselines as bl
from sparseinfer.benchmarks import bandwidth
from sparseinfer.benchmarks.linear import LinearResult, apply_roofline, figures, format_notes, format_table, measure
from sparseinfer.benchmarks.streaming import (DEFAULT_LLC, LLC_ENV, Streaming, build_cold_set, clone_weight,
                                              llc_size, parse_size, rotate, weight_tensors)
from sparseinfer.cli import main


def test_parse_size():
    assert parse_size("32768K") == 32 << 20
    assert parse_size("32M") == parse_size("32MiB") == 32 << 20
    assert parse_size("2G") == 2 << 30 and parse_size("4096") == 4096
    for bad in ("", "12Q", "-3M", "0"):
        with pytest.raises(ValueError):
            parse_size(bad)


def _fake_sysfs(root, caches):
    for i, (level, kind, size) in enumerate(caches):
        d = root / f"index{i}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    return str(root)


def test_llc_size_sources(tmp_path, monkeypatch):
    monkeypatch.delenv(LLC_ENV, raising=False)
    root = _fake_sysfs(tmp_path, [(1, "Data", "48K"), (1, "Instruction", "32K"), (2, "Unified", "2048K"),
                                  (3, "Unified", "107520K")])
    assert llc_size(root=root) == (107520 << 10, "sysfs L3")
    assert llc_size(root=str(tmp_path / "none")) == (DEFAULT_LLC, "fallback")
    monkeypatch.setenv(LLC_ENV, "8M")
    assert llc_size(root=root) == (8 << 20, f"${LLC_ENV}")
    assert llc_size("1M", root=root) == (1 << 20, "given")


def test_copies_reach_four_times_llc_within_the_caps():
    s = Streaming(llc_bytes=1000)
    assert s.target_bytes == 4000
    assert s.copies(1000) == 4 and s.copies(999) == 5 and s.copies(5000) == 1
    assert s.reaches(999, 5) and not s.reaches(999, 4)
    capped = Streaming(llc_bytes=1000, max_copies=3)
    assert capped.copies(100) == 3 and not capped.reaches(100, 3)
    assert Streaming(llc_bytes=1000, max_bytes=250).copies(100) == 2


@pytest.mark.parametrize("name", list(registry.names()))
def test_clone_weight_is_equal_in_new_memory(name):
    spec = registry.get(name)
    _, packed = spec.example(32, 96, 0.5 if spec.tunable_sparsity else spec.bench_sparsities[0],
                             spec.bench_dtype or torch.float32, 0)
    twin = clone_weight(packed)
    assert type(twin) is type(packed) and twin.shape == packed.shape and twin.nnz == packed.nnz
    old = {t.untyped_storage().data_ptr() for t in weight_tensors(packed)}
    assert not old & {t.untyped_storage().data_ptr() for t in weight_tensors(twin)}
    x = torch.randn(3, 96).to(packed.dtype)
    torch.testing.assert_close(spec.op(x, twin), spec.op(x, packed), rtol=0, atol=0)


def test_rotate_calls_in_turn():
    seen = []
    fn = rotate([lambda i=i: seen.append(i) for i in range(3)])
    for _ in range(7):
        fn()
    assert seen == [0, 1, 2, 0, 1, 2, 0]


def _recording_baseline(seen, made):
    """A fake dense baseline: records which copy each call used; its copies are numbered."""
    tag = len(made)
    made.append(tag)
    return bl.Baseline("dense", lambda x: (lambda: seen.append(tag)), nbytes=600,
                       replicate=lambda: _recording_baseline(seen, made))


def test_cold_timing_rotates_through_distinct_weights():
    spec = registry.get("csr")
    _, packed = spec.example(16, 64, 0.5, torch.float32, 0)
    used = []
    recording = dataclasses.replace(spec, op=lambda x, w, **kw: used.append(id(w)) or spec.op(x, w, **kw))
    dense_calls = []
    baselines = {"dense": _recording_baseline(dense_calls, []), "other": bl.Baseline("other", lambda x: (lambda: None))}
    read = 500
    cold = build_cold_set(packed, read, baselines, Streaming(llc_bytes=600, max_copies=8))
    assert len(cold.ours) == 5 and cold.ours[0] is packed  # ceil(2400 / 500)
    assert len({id(w) for w in cold.ours}) == 5
    ptrs = [w.packed.values.data_ptr() for w in cold.ours]
    assert len(set(ptrs)) == 5
    assert cold.copies() == {"ours": 5, "dense": 4} and cold.warm_only == ("other",)
    r = measure(recording, packed, baselines, 1, {}, min_time=0.002, cold=cold, warm=True)
    assert {id(w) for w in cold.ours} <= set(used)
    assert set(dense_calls) == {0, 1, 2, 3}
    assert r.cache == "cold" and r.cold["copies"]["ours"] == 5 and r.cold["warm_only"] == ["other"]
    assert r.warm is not None and r.ours_ms == r.cold["ours_ms"]
    assert not r.cold["streamed"] and "cold*" in format_table([r])  # a warm-only side


def _result(**figs) -> LinearResult:
    ceiling = {"dense": 3.99, "torch_dynamic_int8": 1.0}
    cold = {**figures(figs, 4_200_000, {"dense": 16_760_000, "torch_dynamic_int8": 4_200_000}, ceiling),
            "copies": {"ours": 8}, "short": [], "warm_only": [], "streamed": True}
    return LinearResult("int8", {"act": "dynamic"}, 4096, 4096, 1, 0.0, "float32", "vnni_rows", cold["ours_ms"],
                        cold["dense_ms"], cold["speedup"], cold["baseline_ms"], cold["vs"], 16_760_000, 4_200_000,
                        3.99, "cold", {}, ceiling, cold["above_ceiling"], cold["above_bytes_ceiling"], cold["gbps"],
                        cold, None)


def test_ceiling_flag_on_a_fabricated_result():
    flagged = _result(ours=1.0, dense=28.0, torch_dynamic_int8=1.02)  # the 28x a cached 16 MB int8 printed
    assert flagged.above_ceiling == ["dense"] and flagged.above_bytes_ceiling  # 1.02x is within the noise slack
    assert flagged.gbps["ours"] == pytest.approx(4.2)
    fine = _result(ours=1.0, dense=3.9, torch_dynamic_int8=1.0)
    assert fine.above_ceiling == [] and not fine.above_bytes_ceiling
    text = format_table([flagged, fine])
    assert "28.00x!" in text and "3.90x" in text and "3.90x!" not in text
    notes = format_notes([flagged, fine])
    assert "1 flagged" in notes and "vs dense 28.00x > 3.99x" in notes
    json.dumps(dataclasses.asdict(flagged))


def test_roofline_is_gbps_over_the_larger_bandwidth():
    r = _result(ours=1.0, dense=4.0, torch_dynamic_int8=1.0)  # ours 4.2 GB/s, dense 4.19, torch int8 4.2
    r.cold["warm_only"] = ["torch_dynamic_int8"]  # timed warm: its GB/s is no roofline figure
    assert apply_roofline([r], 5.0, 8.4) == {"read_bandwidth_gbs": 8.4, "read_bandwidth_gbs_before_after": [5.0, 8.4]}
    assert r.roofline_fraction == pytest.approx(0.5)
    assert r.baseline_roofline_fraction == pytest.approx({"dense": 16.76 / 4.0 / 8.4})
    assert "0.50" in format_table([r]) and "0.50 dense" in format_table([r])
    assert apply_roofline([r], None, None) == {"read_bandwidth_gbs": None, "read_bandwidth_gbs_before_after": None}
    assert r.roofline_fraction is None and r.baseline_roofline_fraction is None


def _cell(text: str, header: str, row: int) -> str:
    """The cell of a right-aligned column `header` in data row `row` of a table printed by format_table."""
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if " speedup " in line and header in line)
    end = lines[head].index(header) + len(header)
    return lines[head + 2 + row][:end].split()[-1]


@pytest.mark.parametrize("measured", [True, False])
def test_bench_roofline_column_and_json(tmp_path, capsys, monkeypatch, measured):
    reads = iter([20.0, 40.0])
    monkeypatch.setattr(bandwidth, "read_bandwidth_gbs", lambda: next(reads))  # before, after: fixed
    out = tmp_path / "roof.json"
    assert main(["bench", "--format", "csr", "--shapes", "64x128", "--sparsity", "0.9", "--m", "1", "32",
                 "--min-time", "0.01", "--llc", "16K", "--json", str(out)] + ([] if measured else ["--no-bandwidth"])) == 0
    text = capsys.readouterr().out
    data = json.loads(out.read_text())
    one, big = data["results"]
    assert big["roofline_fraction"] is None and _cell(text, " roofline", 1) == "-"  # the warm row
    if not measured:
        assert next(reads) == 20.0  # never measured
        assert data["read_bandwidth_gbs"] is None and data["read_bandwidth_gbs_before_after"] is None
        assert one["roofline_fraction"] is None and _cell(text, " roofline", 0) == "-"
        assert "not measured" in text
        return
    assert data["read_bandwidth_gbs"] == 40.0 and data["read_bandwidth_gbs_before_after"] == [20.0, 40.0]
    assert one["roofline_fraction"] == pytest.approx(one["cold"]["gbps"]["ours"] / 40.0)
    assert _cell(text, " roofline", 0) == f"{one['roofline_fraction']:.2f}"
    assert one["baseline_roofline_fraction"]["dense"] == pytest.approx(one["cold"]["gbps"]["dense"] / 40.0)
    assert "40.0 GB/s" in text and "roofline = ours GB/s" in text


def test_bench_json_has_cold_and_warm(tmp_path, capsys):
    out = tmp_path / "cold.json"
    assert main(["bench", "--format", "csr", "--shapes", "64x128", "--sparsity", "0.9", "--m", "1", "32",
                 "--min-time", "0.01", "--llc", "16K", "--no-bandwidth", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "warm (cache)" in text and "cold" in text and "bytes ceiling" in text and "GB/s" in text
    data = json.loads(out.read_text())
    assert data["streaming"]["llc_bytes"] == 16 << 10 and data["streaming"]["cache"] == "both"
    one, big = data["results"]
    assert one["m"] == 1 and one["cache"] == "cold" and one["cold"]["copies"]["ours"] > 1
    assert one["warm"]["ours_ms"] > 0 and one["cold"]["ours_ms"] == one["ours_ms"]
    assert one["cold"]["gbps"]["ours"] > 0 and "dense" in one["ceiling"]
    assert isinstance(one["above_bytes_ceiling"], bool)
    assert big["m"] == 32 and big["cache"] == "warm" and big["cold"] is None and big["warm"]["ours_ms"] > 0


@pytest.mark.parametrize("cache", ["cold", "warm"])
def test_bench_cache_modes(tmp_path, cache):
    out = tmp_path / "r.json"
    assert main(["bench", "--format", "2:4", "--shapes", "32x64", "--m", "1", "--min-time", "0.005",
                 "--llc", "8K", "--cache", cache, "--no-bandwidth", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["results"]
    assert row["cache"] == cache
    assert (row["cold"] is None) == (cache == "warm") and (row["warm"] is None) == (cache == "cold")


def test_bench_rejects_a_bad_llc(capsys):
    assert main(["bench", "--format", "csr", "--shapes", "8x8", "--m", "1", "--llc", "lots"]) == 2
    assert "size must look like" in capsys.readouterr().err


def test_ort_copies_are_separate_sessions():
    if not bl.ort_available():
        pytest.skip("onnxruntime not installed")
    w = torch.randn(24, 40)
    b = bl.ort_int8(w, torch.get_num_threads())
    twin = b.replicate()
    assert twin is not None and twin.nbytes == b.nbytes == 24 * 40 + 4 * 24
    x = torch.randn(2, 40)
    (y,), (y2,) = b.bind(x)(), twin.bind(x)()
    assert (y == y2).all()
