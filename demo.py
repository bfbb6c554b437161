"""`make demo`: compile examples/decoder_mlp.tf for cpu, interp, sm_80 and sm_90; run the CPU builds
against the reference evaluator (compiled once with the token count T dynamic, run at T = 1, 7 and 64);
print the fused kernels, knobs, the per-bucket dispatch table and per-arch resources."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

# The interpreter must be chosen before triton is imported (the demo runs the 'interp' target).
os.environ.setdefault("TRITON_INTERPRET", "1")

EXAMPLE = Path(__file__).resolve().parent / "examples" / "decoder_mlp.tf"
SMALL = {"H": 96, "I": 160}  # sizes for the CPU checks (not multiples of the blocks); T stays dynamic
TOKENS = (1, 7, 64)  # the token counts one compiled graph runs at


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns a process exit code."""
    import tilefuse
    from tilefuse.cli import check_against_reference, write_bundle
    from tilefuse.ir.sampling import random_inputs
    from tilefuse.ir.text import load_graph

    args = argv if argv is not None else sys.argv[1:]
    out = Path(args[0]) if args else Path("build") / "demo"
    ok = True
    small = load_graph(str(EXAMPLE), SMALL)
    for target in ("cpu", "interp"):
        t0 = time.perf_counter()
        cg = tilefuse.compile(small, target=target)
        print(f"\n=== {target}: {EXAMPLE.name} at {SMALL}, T dynamic (compiled once in "
              f"{time.perf_counter() - t0:.1f} s) ===")
        print(cg.report())
        for t in TOKENS:
            inputs = random_inputs(small.at({"T": t}), seed=t)
            for name, err, bound, good in check_against_reference(cg, inputs=inputs):
                ok &= good
                print(f"  check T={t} {name}: max |err| {err:.3e} <= {bound:.3e}: {'OK' if good else 'FAIL'}")
    full = load_graph(str(EXAMPLE), {"T": 16})  # the AOT bundles hold static sizes
    for target in ("sm_80", "sm_90"):
        t0 = time.perf_counter()
        cg = tilefuse.compile(full, target=target)
        took = time.perf_counter() - t0
        print(f"\n=== {target}: {EXAMPLE.name} at T=16, H=4096, I=11008 (AOT in {took:.1f} s) ===")
        print(cg.report())
        manifest = write_bundle(cg, out / target)
        print(f"  wrote {manifest}")
        if target == "sm_90":
            gemms = [ck for ck in cg.kernels if ck.spec.family == "matmul"]
            hg = all(b.resources.hgmma > 0 for ck in gemms for b in ck.binaries["sm_90"].values())
            print(f"  sm_90 GEMMs use HGMMA (wgmma): {'yes' if hg else 'NO'}")
            ok &= hg
        spills = [ck.spec.name for ck in cg.kernels for b in ck.binaries[target].values() if b.resources.spills]
        print(f"  register spills at the default configs: {', '.join(spills) if spills else 'none'}")
    print("\ndemo", "passed" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
