"""Compare before/after `sparseinfer bench` JSON: per case the ratio to dense (same run) and the
absolute ms, before vs after, and the run-to-run spread of each side."""
import json, statistics, sys

def load_before(path):
    d = json.load(open(path))
    out = {}
    for r in d["results"]:
        out[(r["format"], "", r["out_features"], r["in_features"], r["m"], round(r["sparsity"], 2))] = (r["sparse_ms"], r["dense_ms"])
    for r in d.get("int8_results", []):
        out[("int8", r["act"], r["out_features"], r["in_features"], r["m"], 0.0)] = (r["int8_ms"], r["dense_ms"], r["torch_dynamic_ms"], r["ort_ms"])
    return out

def load_after(path):
    d = json.load(open(path))
    out = {}
    for r in d["results"]:
        act = r["options"].get("act", "")
        sp = 0.0 if r["format"] == "int8" else round(r["sparsity"], 2)
        b = r["baseline_ms"]
        v = (r["ours_ms"], r["dense_ms"]) if r["format"] != "int8" else (r["ours_ms"], r["dense_ms"], b.get("torch_dynamic_int8"), b.get("ort_int8"))
        out[(r["format"], act, r["out_features"], r["in_features"], r["m"], sp)] = v
    return out

B = [load_before(f"bench/results/refactor_ab/before_{i}.json") for i in (1, 2)]
A = [load_after(f"bench/results/refactor_ab/after_{i}.json") for i in (1, 2)]
keys = [k for k in B[0] if k in A[0]]
print(f"{'case':44s} {'ours ms before':>16s} {'after':>16s} {'after/before':>12s} {'speedup b':>10s} {'a':>6s}")
ratios = []
for k in keys:
    ob = [b[k][0] for b in B]; oa = [a[k][0] for a in A]
    sb = [b[k][1] / b[k][0] for b in B]; sa = [a[k][1] / a[k][0] for a in A]
    r = statistics.mean(oa) / statistics.mean(ob)
    ratios.append(r)
    name = f"{k[0]} {k[1]} {k[2]}x{k[3]} m={k[4]} sp={k[5]}"
    print(f"{name:44s} {ob[0]:7.3f} {ob[1]:7.3f}  {oa[0]:7.3f} {oa[1]:7.3f}  {r:11.3f} {statistics.mean(sb):9.2f}x {statistics.mean(sa):5.2f}x")
# noise: the spread between the two 'before' runs and between the two 'after' runs
within = [abs(b2[k][0] / b1[k][0] - 1) for k in keys for b1, b2 in [(B[0], B[1])]] + [abs(a2[k][0] / a1[k][0] - 1) for k in keys for a1, a2 in [(A[0], A[1])]]
print(f"\ncases {len(keys)}; after/before ours-ms: geomean {statistics.geometric_mean(ratios):.3f}, "
      f"min {min(ratios):.3f}, max {max(ratios):.3f}; run-to-run spread (same code): median {statistics.median(within):.3f}, max {max(within):.3f}")

mins = [min(a[k][0] for a in A) / min(b[k][0] for b in B) for k in keys]
spd = [statistics.mean(a[k][1] / a[k][0] for a in A) / statistics.mean(b[k][1] / b[k][0] for b in B) for k in keys]
r1 = [A[0][k][0] / B[0][k][0] for k in keys]; r2 = [A[1][k][0] / B[1][k][0] for k in keys]
bb = [B[1][k][0] / B[0][k][0] for k in keys]; aa = [A[1][k][0] / A[0][k][0] for k in keys]
g = statistics.geometric_mean
print(f"best-of-two ours ms after/before: geomean {g(mins):.3f} (min {min(mins):.3f}, max {max(mins):.3f}); "
      f"same-run speedup vs dense after/before: geomean {g(spd):.3f}")
print(f"per round after/before: round 1 {g(r1):.3f}, round 2 {g(r2):.3f}; same code, round 2/round 1: before {g(bb):.3f}, after {g(aa):.3f}")
