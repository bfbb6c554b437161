"""The tilefuse command line: compile, run, show."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..deps import EXTRAS, missing
from ..errors import TilefuseError
from ..fileio import write_atomic
from .common import BUCKETS_HELP, UsageError, load_graph_arg, parse_buckets

MANIFEST_SCHEMA = 1
# Exit codes, the same for every command: 0 success; 1 `run` computed a result outside the tolerance of
# the reference (FAIL); 2 the input could not be used (a malformed file, option, target or database).
EXIT_FAIL = 1
EXIT_BAD_INPUT = 2
EXIT_CODES = "exit codes: 0 ok; 1 a result outside the reference tolerance (run); 2 bad input (one 'error:' line)"


def cmd_show(args: argparse.Namespace) -> int:
    from ..kernels import fusion_rules
    from ..passes import run_pipeline
    from ..report import format_pipeline

    print(format_pipeline(run_pipeline(load_graph_arg(args.file, args.set), fusion_rules())))
    return 0


def check_against_reference(cg: Any, seed: int = 0, inputs: Any = None) -> list[tuple[str, float, float, bool]]:
    """compiler.check_against_reference (imported on use: the compiler is not needed for --help)."""
    from ..compiler import check_against_reference as check

    return check(cg, seed, inputs)


def cmd_run(args: argparse.Namespace) -> int:
    if args.target == "interp":
        from ..compiler import ensure_interpreter

        ensure_interpreter()
    import tilefuse

    g = load_graph_arg(args.file, args.set)
    cg = tilefuse.compile(g, target=args.target, **_buckets(args))
    print(cg.report())
    ok = True
    for name, err, bound, good in check_against_reference(cg, args.seed):
        ok &= good
        print(f"  {name}: max |err| vs reference {err:.3e} (bound {bound:.3e}) {'OK' if good else 'FAIL'}")
    return 0 if ok else EXIT_FAIL


def _buckets(args: argparse.Namespace) -> dict[str, Any]:
    """compile's `buckets=` from --buckets, when given."""
    buckets = parse_buckets(args.buckets)
    return {} if buckets is None else {"buckets": buckets}


def _kernel_entry(ck: Any, backend: str) -> dict[str, Any]:
    """A kernel's manifest entry without its binaries. On Triton targets the launch plan says what an
    embedder runs: `launches` in order (function, grid, argument names, constexprs, warps, stages),
    `arguments` (each backed by an input, output, auxiliary tensor or workspace) and `workspaces`
    (shape, dtype, bytes) to allocate; `grid` and `constexprs` are the first launch's."""
    spec = ck.spec
    ext = "py" if backend == "triton" else "tir.py"
    plan = spec.launch_plan(ck.config) if backend == "triton" else None
    entry: dict[str, Any] = {
        "name": spec.name, "family": spec.family, "workload_key": spec.key, "source": f"{spec.name}.{ext}",
        "config": dict(ck.config), "config_source": ck.config_source,
        "grid": list(plan.launches[0].grid if plan is not None else spec.grid(ck.config)),
        "signature": [{"name": a, "dtype": b.dtype.name, "shape": list(b.shape), "buffer": b.name, "role": r}
                      for a, b, r in zip(spec.arg_names(), spec.inputs + spec.outputs,
                                         ["input"] * len(spec.inputs) + ["output"] * len(spec.outputs))],
        "constexprs": dict(plan.launches[0].constexprs) if plan is not None else {},
        "binaries": {},
    }
    if plan is not None:
        entry.update(plan.to_json())
    return entry


def write_bundle(cg: Any, out: Path) -> Path:
    """Write each kernel's source, PTX and cubin plus manifest.json into `out` (nothing when a Triton
    kernel's launch grid is beyond CUDA's limits: a LimitError naming it)."""
    entries = [_kernel_entry(ck, cg.target.backend) for ck in cg.kernels]  # the launch plans check grids
    out.mkdir(parents=True, exist_ok=True)
    kernels = []
    for ck, entry in zip(cg.kernels, entries):
        (out / entry["source"]).write_text(ck.source, encoding="utf-8")
        for arch, bins in ck.binaries.items():
            for fn, b in bins.items():
                (out / f"{fn}.{arch}.ptx").write_text(b.ptx, encoding="utf-8")
                (out / f"{fn}.{arch}.cubin").write_bytes(b.cubin)
                entry["binaries"].setdefault(arch, []).append({
                    "function": fn, "mangled_name": b.fn_name, "ptx": f"{fn}.{arch}.ptx",
                    "cubin": f"{fn}.{arch}.cubin", "shared_mem_bytes": b.shared_mem_bytes,
                    "num_warps": b.num_warps, "num_stages": b.num_stages, "resources": b.resources.to_dict()})
        kernels.append(entry)
    manifest = {"schema_version": MANIFEST_SCHEMA, "graph": cg.graph.name, "graph_key": cg.graph.key,
                "target": cg.target.name, "inputs": [{"name": n.attr("name"), "dtype": n.dtype.name,
                                                      "shape": list(n.shape)} for n in cg.graph.inputs],
                "outputs": [{"name": n, "buffer": b.name} for n, b in cg.pipeline.kernels.outputs],
                "kernels": kernels}
    write_atomic(out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True))
    return out / "manifest.json"


def cmd_compile(args: argparse.Namespace) -> int:
    import tilefuse

    if args.out is not None and not args.out.strip():
        raise UsageError("--out needs a directory path, got an empty one; leave --out out to write no bundle")
    g = load_graph_arg(args.file, args.set)
    if args.out is not None and g.is_dynamic:
        dyn = ", ".join(f"{k}={p.text()}" for k, p in g.params.items())
        raise UsageError(f"--out writes binaries for static sizes, and {args.file} has dynamic ones ({dyn}); "
                         "bind them with --set")
    t0 = time.perf_counter()
    db = None if args.db == "none" else args.db
    model = None if args.costmodel == "none" else args.costmodel
    cg = tilefuse.compile(g, target=args.target, db=db, cost_model=model, **_buckets(args))
    dt_s = time.perf_counter() - t0
    print(cg.report())
    print(f"compiled in {dt_s:.2f} s")
    if args.out is not None:
        path = write_bundle(cg, Path(args.out))
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tilefuse` command."""
    from .. import __version__

    p = argparse.ArgumentParser(prog="tilefuse", description="ahead-of-time kernel compiler for tensor-op graphs",
                                epilog=EXIT_CODES)
    p.add_argument("--version", action="version", version=f"tilefuse {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, fn, help_ in (("compile", cmd_compile, "compile a .tf graph and write kernels + manifest"),
                            ("run", cmd_run, "run a .tf graph on random inputs and check it against the reference"),
                            ("show", cmd_show, "print the graph after each pass")):
        sp = sub.add_parser(name, help=help_, description=help_, epilog=EXIT_CODES)
        sp.add_argument("file")
        sp.add_argument("--set", action="append", default=[], metavar="NAME=INT", help="override a size parameter")
        if name != "show":
            sp.add_argument("--target", default="cpu" if name == "run" else "sm_90",
                            help="cpu | interp | sm_80 | sm_90")
            sp.add_argument("--buckets", metavar="N,N,...", help=BUCKETS_HELP)
        if name == "compile":
            sp.add_argument("--out", help="directory for sources, PTX, cubins and manifest.json")
        if name == "run":
            sp.add_argument("--seed", type=int, default=0)
        if name == "compile":
            sp.add_argument("--db", default="auto", help="tuning database URL ('none' to ignore it)")
            sp.add_argument("--costmodel", default="auto", help="cost model directory ('none' to ignore it)")
        sp.set_defaults(fn=fn)
    from .db import register as register_db
    from .tune import register as register_tune
    from .costmodel import register as register_costmodel
    from .export import register as register_export
    from .render import register as register_render

    register_tune(sub)
    register_db(sub)
    register_costmodel(sub)
    register_export(sub)
    register_render(sub)
    args = p.parse_args(argv)
    try:
        rc = int(args.fn(args))
        sys.stdout.flush()  # here, so that a closed pipe is handled below, not at interpreter exit
        return rc
    except BrokenPipeError:
        # the reader went away (`tilefuse db show | head`): stop quietly, as Unix tools do on SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as err:
        message = _expected_error(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _expected_error(err: Exception) -> str | None:
    """The message for a failure the user can act on (every TilefuseError: bad input, target, database,
    model, settings) or a file they named; None for anything else, which is a bug and keeps its traceback."""
    if isinstance(err, TilefuseError):
        return str(err)
    if isinstance(err, ModuleNotFoundError) and (err.name or "").split(".")[0] in EXTRAS:
        # an optional dependency imported where no require() names the feature: still one line and the extra
        return str(missing(err.name or "", "this command"))
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.filename}: {err.strerror or err}"
    return None


if __name__ == "__main__":
    sys.exit(main())
