"""The report of `sparseinfer fuzz-load`: a JSON document (parameters, machine, outcome histogram,
CheckpointError message classes, per-family counts, slowest cases, every failure with the command
that reproduces it) and its plain-text rendering."""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict

from .report import machine_info

TOP_CLASSES = 25
SLOWEST = 10
SHOWN_FAILURES = 40


def reproduce(options, index: int) -> str:
    """The command that runs this case alone and keeps its directory."""
    filters = "".join(f" --{name} {' '.join(values)}" for name, values in
                      (("families", options.families), ("seeds", options.seeds)) if values)
    return f"sparseinfer fuzz-load --seed {options.seed} --only {index}{filters} --keep /tmp/fuzz-case"


def report_json(options, outcomes, elapsed, setup_seconds, baselines, jobs, stopped, family_help,
                failure_kinds) -> dict:
    histogram = Counter(o.outcome for o in outcomes)
    classes = Counter(o.message_class for o in outcomes if o.outcome == "CheckpointError")
    families: dict[str, Counter] = {}
    for o in outcomes:
        for name in o.families:
            families.setdefault(name, Counter())[o.outcome] += 1
    failures = [dict(asdict(o), reproduce=reproduce(options, o.index))
                for o in sorted(outcomes, key=lambda o: o.index) if o.outcome in failure_kinds]
    slowest = sorted(outcomes, key=lambda o: -o.seconds)[:SLOWEST]
    ok = [o for o in outcomes if o.outcome not in failure_kinds and o.rss_budget]
    worst_memory = max(ok, key=lambda o: o.rss_growth / o.rss_budget, default=None)
    return {
        "command": "sparseinfer fuzz-load",
        "params": {"cases": options.cases, "seed": options.seed, "only": options.only, "jobs": jobs,
                   "timeout_s": options.timeout, "mem_cap_mb": options.mem_cap_mb,
                   "rss_slack_mb": options.rss_slack_mb, "time_budget_s": options.time_budget,
                   "families": options.families, "seeds": options.seeds},
        "machine": machine_info(),
        "summary": {
            "cases_run": len(outcomes), "stopped_by_time_budget": stopped,
            "failures": sum(histogram[k] for k in failure_kinds),
            "elapsed_s": round(elapsed, 2), "setup_s": round(setup_seconds, 2),
            "cases_per_s": round(len(outcomes) / elapsed, 2) if elapsed else None,
            "inspect": dict(Counter(o.inspect or "n/a" for o in outcomes)),
            "max_rss_growth_vs_budget": None if worst_memory is None else {
                "index": worst_memory.index, "growth_bytes": worst_memory.rss_growth,
                "budget_bytes": worst_memory.rss_budget},
        },
        "histogram": {k: histogram.get(k, 0) for k in ("loaded", "CheckpointError", *failure_kinds)},
        "message_classes": dict(classes.most_common()),
        "families": {name: {"cases": sum(c.values()), **dict(c), "mutates": family_help.get(name, "")}
                     for name, c in sorted(families.items())},
        "seed_baseline_rss_bytes": baselines,
        "slowest": [{"index": o.index, "seconds": o.seconds, "seed": o.seed, "families": o.families,
                     "outcome": o.outcome, "mutations": o.mutations} for o in slowest],
        "failures": failures,
    }


def report_text(doc: dict) -> str:
    s, p = doc["summary"], doc["params"]
    lines = [f"sparseinfer fuzz-load: {s['cases_run']} cases (seed {p['seed']}), {p['jobs']} jobs, "
             f"timeout {p['timeout_s']:g} s, memory cap +{p['mem_cap_mb']} MiB, RSS budget 4x data "
             f"bytes + seed cost + {p['rss_slack_mb']} MiB",
             f"{s['elapsed_s']:.1f} s ({s['cases_per_s']} cases/s) after {s['setup_s']:.1f} s of setup"
             + (" - STOPPED by the time budget" if s["stopped_by_time_budget"] else ""),
             f"machine: {doc['machine']['cpu']}, {doc['machine']['cores']} cores, torch {doc['machine']['torch']}",
             "", "outcomes:"]
    total = max(1, s["cases_run"])
    for name, count in doc["histogram"].items():
        lines.append(f"  {name:16s} {count:7d}  {100 * count / total:5.1f}%")
    lines.append(f"  (inspect: {', '.join(f'{k} {v}' for k, v in sorted(s['inspect'].items()))})")
    classes = list(doc["message_classes"].items())
    lines += ["", f"CheckpointError messages ({len(classes)} classes, top {min(TOP_CLASSES, len(classes))}):"]
    for text, count in classes[:TOP_CLASSES]:
        lines.append(f"  {count:6d}  {text}")
    rest = sum(c for _, c in classes[TOP_CLASSES:])
    if rest:
        lines.append(f"  {rest:6d}  (other classes)")
    lines += ["", f"{'family':18s} {'cases':>6s} {'loaded':>7s} {'CkptErr':>7s} {'failed':>6s}  mutates"]
    for name, c in doc["families"].items():
        failed = c["cases"] - c.get("loaded", 0) - c.get("CheckpointError", 0)
        lines.append(f"{name:18s} {c['cases']:6d} {c.get('loaded', 0):7d} {c.get('CheckpointError', 0):7d} "
                     f"{failed:6d}  {c['mutates']}")
    lines += ["", "slowest cases:"]
    for o in doc["slowest"]:
        lines.append(f"  #{o['index']:<6d} {o['seconds']:7.3f} s  {o['outcome']:15s} {o['seed']:12s} "
                     f"{'; '.join(o['mutations'])[:110]}")
    worst = s["max_rss_growth_vs_budget"]
    if worst:
        lines.append(f"largest RSS growth vs budget (non-failing): case #{worst['index']}, "
                     f"{worst['growth_bytes'] / 2**20:.1f} of {worst['budget_bytes'] / 2**20:.1f} MiB")
    failures = doc["failures"]
    lines += ["", f"failures: {len(failures)}" + (" (first shown)" if len(failures) > SHOWN_FAILURES else "")]
    for f in failures[:SHOWN_FAILURES]:
        lines.append(f"  #{f['index']} {f['outcome']} [{f['seed']}] {'; '.join(f['mutations'])[:160]}")
        lines.append(f"      {f['detail'][:300]}")
        lines.append(f"      reproduce: {f['reproduce']}")
    return "\n".join(lines)
