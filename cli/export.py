"""`tilefuse export`: a self-contained bundle (cubins, PTX, manifest, C launcher, Python loader)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import BUCKETS_HELP, load_graph_arg, parse_buckets, parse_sizes


def register(subparsers: Any) -> None:
    """Add the `export` subcommand to the tilefuse argparse CLI."""
    sp = subparsers.add_parser("export", help="write a bundle that runs the graph without tilefuse (C, Python; "
                                               "GPU, CPU)")
    sp.add_argument("file")
    sp.add_argument("--targets", default="sm_80,sm_90", help="GPU architectures and/or cpu, comma-separated "
                    "(default sm_80,sm_90)")
    sp.add_argument("--out", required=True, help="bundle directory")
    sp.add_argument("--name", help="C identifier prefixing the API (default: the graph's name)")
    sp.add_argument("--set", action="append", default=[], metavar="NAME=INT", help="override a size parameter")
    sp.add_argument("--buckets", metavar="N,N,...", help=BUCKETS_HELP)
    sp.add_argument("--db", default="auto", help="tuning database URL ('none' to ignore it)")
    sp.add_argument("--costmodel", default="auto", help="cost model directory ('none' to ignore it)")
    sp.set_defaults(fn=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    """Export the graph in args.file for args.targets into args.out."""
    from ..export import export_bundle, parse_targets

    targets = parse_targets(args.targets)
    g = load_graph_arg(args.file, args.set)
    path = export_bundle(g, targets, Path(args.out), name=args.name, db=None if args.db == "none" else args.db,
                         cost_model=None if args.costmodel == "none" else args.costmodel,
                         sizes=parse_sizes(args.set), buckets=parse_buckets(args.buckets))
    print(f"wrote {path} ({', '.join(targets)})")
    return 0
