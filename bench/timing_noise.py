"""How much one CPU measurement moves on this machine, unpaired and paired with the default kernel.

Builds tilefuse's default f32 GEMM kernel for MxNxK and one other config, then for --seconds
repeats the runner's protocol (caches flushed before every sample, --samples samples): the other
config measured alone (its median), and the same config paired with the default, sample by sample
(measure.time_paired; the median of the per-pair ratios). Prints the coefficient of variation
(stdev / mean) of each over the repetitions: what the tuner's ranking of two configs rests on.

Usage: python bench/timing_noise.py [--shape 1000x1000x1000] [--seconds 60] [--samples 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="1000x1000x1000")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--samples", type=int, default=5)
    args = ap.parse_args()
    import tilefuse as tf
    from tilefuse.schedule.config import Config
    from tilefuse.autotune.device import cpu_device
    from tilefuse.autotune.measure import CacheFlusher, kernel_inputs, time_paired, time_runs
    from tilefuse.autotune.runners import flush_bytes
    from tilefuse.codegen import tvm_runtime
    from tilefuse.codegen.cache import default_cache
    from tilefuse.kernels import fusion_rules, spec_for
    from tilefuse.passes import run_pipeline

    m, n, k = (int(x) for x in args.shape.split("x"))
    g = tf.GraphBuilder("gemm")
    g.output("c", g.input("a", (m, k), "f32") @ g.input("b", (k, n), "f32"))
    kg = run_pipeline(g.build(), fusion_rules()).kernels
    spec = spec_for(kg, kg.kernels[0], "tvm")
    dev = cpu_device()
    default = spec.default_config(dev.target)
    other = default.replace(tile_k=512 if default.int("tile_k") != 512 else 128)
    assert not spec.constraints(Config(other), dev.target), other
    inputs = kernel_inputs(spec, 0)
    runs = {}
    for name, cfg in (("default", default), ("other", other)):
        kern = tvm_runtime.build(spec, cfg, default_cache())
        kargs = kern._args(inputs, [np.zeros(b.shape, np.float32) for b in spec.outputs], alias_outputs=False)
        runs[name] = (lambda kern=kern, kargs=kargs: kern.func(*kargs))
    flush = CacheFlusher(flush_bytes(dev))
    alone: list[float] = []
    paired: list[float] = []
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        alone.append(statistics.median(time_runs(runs["other"], flush, samples=args.samples, warmup=2,
                                                 min_sample_seconds=2e-3)))
        s, r = time_paired(runs["other"], runs["default"], flush, samples=args.samples, warmup=2,
                           min_sample_seconds=2e-3)
        paired.append(statistics.median(x / y for x, y in zip(s, r)))
    print(f"f32 GEMM {args.shape}: config {other.to_json()} vs the default {default.to_json()}")
    print(f"{len(alone)} repetitions of {args.samples} samples each, over {args.seconds:.0f} s")
    for name, v in (("alone: median seconds", alone), ("paired: median ratio to the default", paired)):
        cv = statistics.pstdev(v) / statistics.mean(v)
        print(f"  {name:<38} median {statistics.median(v):.4g}  p10 {np.percentile(v, 10):.4g}  "
              f"p90 {np.percentile(v, 90):.4g}  CV {cv:.3f}")


if __name__ == "__main__":
    main()
