"""gpu-check's results: bench/results/gpu-check-<device>.json (the machine, versions, every check with its
status, error and timings) and a Markdown summary beside it, both written atomically."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from ..fileio import write_atomic

SCHEMA_VERSION = 1
FAILING = ("fail", "timeout")


def device_slug(machine: dict[str, Any]) -> str:
    """The file name part for the device: 'nvidia-h200', or 'interp' without a GPU."""
    gpu = machine["gpu"]
    if machine["mode"] != "gpu":
        return "interp"
    return re.sub(r"[^a-z0-9]+", "-", str(gpu.get("name", "gpu")).lower()).strip("-") or "gpu"


def summary(checks: list[dict[str, Any]]) -> dict[str, int]:
    """Checks per status."""
    return dict(sorted(Counter(c["status"] for c in checks).items()))


def passed(checks: list[dict[str, Any]]) -> bool:
    """True when no check failed or timed out."""
    return not any(c["status"] in FAILING for c in checks)


def build(machine: dict[str, Any], checks: list[dict[str, Any]], started: str, seconds: float) -> dict[str, Any]:
    """The JSON document."""
    gpu = machine["gpu"]
    return {"schema_version": SCHEMA_VERSION, "tool": "tilefuse gpu-check", "mode": machine["mode"],
            "target": machine["target"], "date": started, "seconds": round(seconds, 1),
            "budget_s": machine["budget_s"], "seed": machine["seed"], "host": machine.get("host"),
            "device": {"name": gpu.get("name"), "compute_capability": gpu.get("capability"),
                       "driver": gpu.get("driver"), "cuda_driver": gpu.get("cuda_driver"),
                       "torch_cuda": gpu.get("torch_cuda"), "memory_bytes": gpu.get("memory_bytes"),
                       "sms": gpu.get("sms"), "status": gpu.get("nvml"), "why_no_gpu": gpu.get("why")},
            "versions": machine["versions"], "ok": passed(checks), "summary": summary(checks), "checks": checks}


def _cell(text: Any) -> str:
    first = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return (first[:157] + "...") if len(first) > 160 else first.replace("|", "\\|")


def markdown(doc: dict[str, Any]) -> str:
    """The summary: machine, versions, counts, a table of checks, then each failure's error in full."""
    dev, ver = doc["device"], doc["versions"]
    lines = [f"# tilefuse gpu-check: {'PASS' if doc['ok'] else 'FAIL'}", "",
             f"- date: {doc['date']}, {doc['seconds']} s of a {doc['budget_s']} s budget, seed {doc['seed']}",
             f"- mode: {doc['mode']} (target {doc['target']})",
             f"- device: {dev['name'] or 'none'} (compute capability {dev['compute_capability'] or '-'}, "
             f"driver {dev['driver'] or '-'})" + (f"; {dev['why_no_gpu']}" if dev.get("why_no_gpu") else ""),
             "- versions: " + ", ".join(f"{k} {v}" for k, v in ver.items() if v),
             "- checks: " + ", ".join(f"{n} {s}" for s, n in doc["summary"].items()), "",
             "| check | step | status | seconds | error |", "|---|---|---|---:|---|"]
    for c in doc["checks"]:
        lines.append(f"| {_cell(c['name'])} | {c['step']} | {c['status']} | {c['seconds']:.1f} | {_cell(c['error'])} |")
    lines += _kernel_table(doc["checks"]) + _bench_tables(doc["checks"])
    failures = [c for c in doc["checks"] if c["status"] in FAILING]
    if failures:
        lines += ["", "## Failures"]
        for c in failures:
            lines += ["", f"### {c['name']} ({c['status']})", "", "```", str(c["error"]).strip(), "```"]
    return "\n".join(lines) + "\n"


def _num(v: Any, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else "-"


def _kernel_table(checks: list[dict[str, Any]]) -> list[str]:
    """Per kernel case: families, compile, first launch + check, a steady run, the worst error/bound."""
    rows = [c for c in checks if c["step"] == "kernels" and "outputs" in c["details"]]
    if not rows:
        return []
    out = ["", "## Kernel cases", "", "| case | families | compile s | launch+check s | run ms | max err / bound |",
           "|---|---|---:|---:|---:|---:|"]
    for c in rows:
        d = c["details"]
        worst = max((o["max_err"] / o["bound"] if o["bound"] else 0.0 for o in d["outputs"]), default=0.0)
        run_ms = d["run_s"] * 1e3 if isinstance(d.get("run_s"), (int, float)) else None
        out.append(f"| {c['name']} | {', '.join(d['families'])} | {_num(d['compile_s'], '.2f')} | "
                   f"{_num(d['check_s'], '.2f')} | {_num(run_ms, '.3f')} | {worst:.3f} |")
    return out


def _bench_tables(checks: list[dict[str, Any]]) -> list[str]:
    """Each benchmark's rows: the case and its speed columns (ratios are torch's time over ours)."""
    out: list[str] = []
    for c in checks:
        if c["step"] != "bench" or not c["details"].get("rows"):
            continue
        out += ["", f"## {c['name']} ({c['details'].get('mode', '')})", "", "| case | numbers |", "|---|---|"]
        for r in c["details"]["rows"]:
            label = " ".join([str(r.get("case", "")), *(f"{k}={r[k]}" for k in ("hdim", "batch", "seqlen", "causal")
                                                          if k in r)])
            nums = ", ".join(f"{k} {v:.3g}" for k, v in r.items() if isinstance(v, float))
            out.append(f"| {_cell(label)} | {_cell(nums)} |")
    return out


def write(doc: dict[str, Any], out_dir: Path, slug: str) -> tuple[Path, Path]:
    """Write gpu-check-<slug>.json and .md into `out_dir`; their paths."""
    base = out_dir / f"gpu-check-{slug}"
    json_path, md_path = base.with_suffix(".json"), base.with_suffix(".md")
    write_atomic(json_path, json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    write_atomic(md_path, markdown(doc))
    return json_path, md_path
