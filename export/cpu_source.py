"""The C side of a bundle's CPU build: NAME_cpu.h, NAME_cpu.c (the runtime-hook template plus generated
call tables) and NAME_cpu.map (the linker's list of exported symbols: the API alone)."""

from __future__ import annotations

from typing import Any

from .csource import doc_lines, template


def _feature_check(features: list[str]) -> str:
    """tf_missing_cpu_feature(): the first instruction set of `features` this CPU lacks, else NULL."""
    checks = "".join(f'  if (!__builtin_cpu_supports("{f}")) return "{f}";\n' for f in features)
    body = f"  __builtin_cpu_init();\n{checks}" if features else ""
    return ("static const char* tf_missing_cpu_feature(void) {\n"
            "#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))\n"
            f"{body}#endif\n  return NULL;\n}}\n")


def _shape_fill(calls: list[dict[str, Any]], names: list[str]) -> str:
    """tf_shapes(): every argument's shape at the run's sizes `sz` (constants for a static graph)."""
    from .dyn import c_expr

    lines = [f"  s[{ci}][{ai}][{d}] = {c_expr(v, names)};" for ci, call in enumerate(calls)
             for ai, a in enumerate(call["args"]) for d, v in enumerate(a["shape"])]
    return ("static void tf_shapes(const int64_t* sz,\n"
            "                      int64_t s[TF_CPU_NUM_CALLS][TF_CPU_MAX_ARGS][TF_CPU_MAX_NDIM]) {\n  (void)sz;\n"
            + "\n".join(lines) + "\n}\n")


def _buckets(manifest: dict[str, Any], names: list[str]) -> str:
    """The bucket table: each bucket's range per size and the calls it runs, in order."""
    cpu = manifest["cpu"]
    buckets = cpu.get("buckets") or [{"ranges": [], "calls": list(range(len(cpu["calls"])))}]
    out, rows = [], []
    for bi, b in enumerate(buckets):
        ranges = {n: (lo, hi) for n, lo, hi in b["ranges"]}
        bounds = ", ".join(f"{{{ranges[n][0]}, {ranges[n][1]}}}" for n in names) or "{0, 0}"
        out.append(f"static const int64_t tf_bucket_b{bi}[][2] = {{{bounds}}};\n"
                   f"static const int tf_bucket_calls_b{bi}[] = {{{', '.join(str(c) for c in b['calls'])}}};\n")
        rows.append(f"    {{tf_bucket_b{bi}, {len(b['calls'])}, tf_bucket_calls_b{bi}, 0}},")
    quoted = ", ".join(f'"{n}"' for n in names) or '""'
    out.append(f"static const char* const tf_size_names[] = {{{quoted}}};\n")
    out.append(f"#define TF_CPU_NUM_BUCKETS {len(buckets)}\nstatic const tf_bucket tf_cpu_buckets[] = {{\n"
               + "\n".join(rows) + "\n};\n")
    return "".join(out)


def cpu_tables(manifest: dict[str, Any]) -> str:
    """The generated part of NAME_cpu.c: kernel declarations, argument shapes, the call list and the buckets
    (a static graph has one bucket, every call in order, and no sizes)."""
    cpu = manifest["cpu"]
    calls = cpu["calls"]
    names = [p["name"] for p in manifest.get("dynamic", {}).get("params", [])]
    roles = {"input": "TF_INPUT", "output": "TF_OUTPUT", "workspace": "TF_WORKSPACE"}
    target = cpu["target"]["llvm"]
    max_args = max(len(c["args"]) + len(c.get("sizes", [])) for c in calls)
    max_ndim = max(max(len(a["shape"]) for a in c["args"]) for c in calls)
    out = [f"#define TF_CPU_NUM_CALLS {len(calls)}\n#define TF_CPU_MAX_ARGS {max_args}\n"
           f"#define TF_CPU_MAX_NDIM {max(1, max_ndim)}\n"
           f"#define TF_CPU_WORKSPACE_BYTES ((size_t){cpu['workspace_bytes']})\n"
           f'#define TF_CPU_TARGET "{target["kind"]} -mcpu={target.get("mcpu", "generic")}"\n',
           _feature_check(cpu["target"]["features"])]
    rows = []
    for ci, call in enumerate(calls):
        out.append(f"/* {call['kernel']} ({call['family']}): TVM's packed entry point in {call['object']} */\n"
                   f"int __tvm_ffi_{call['symbol']}(void* self, const tf_any* args, int32_t num_args, "
                   "tf_any* result);\n")
        args = []
        for a in call["args"]:
            code, bits = a["dl_dtype"]
            args.append(f"    {{{roles[a['role']]}, {a['index']}, {{{code}, {bits}, 1}}, {len(a['shape'])}}}, "
                        f"/* {a['buffer']}: {a['dtype']} */")
        sizes = [names.index(n) for n in call.get("sizes", [])]
        out.append(f"static const tf_cpu_arg tf_args_c{ci}[] = {{\n" + "\n".join(args) + "\n};\n"
                   f"static const int tf_sizes_c{ci}[] = {{{', '.join(str(i) for i in sizes) or '0'}}};\n")
        rows.append(f'    {{"{call["kernel"]}", __tvm_ffi_{call["symbol"]}, {len(call["args"])}, tf_args_c{ci}, '
                    f"{len(sizes)}, tf_sizes_c{ci}}},")
    out.append("static const tf_cpu_call tf_cpu_calls[TF_CPU_NUM_CALLS] = {\n" + "\n".join(rows) + "\n};\n")
    out.append(_shape_fill(calls, names))
    out.append(_buckets(manifest, names))
    return "\n".join(out)


def render_cpu_c(manifest: dict[str, Any]) -> dict[str, str]:
    """NAME_cpu.h, NAME_cpu.c and NAME_cpu.map for `manifest` (which has a `cpu` entry)."""
    name = manifest["name"]
    cpu = manifest["cpu"]
    target = cpu["target"]["llvm"]
    params = manifest.get("dynamic", {}).get("params", [])
    fields = {"name": name, "upper": name.upper(), "guard": name.upper(), "graph": manifest["graph"],
              "graph_key_short": manifest["graph_key"][:16], "tilefuse_version": manifest["tilefuse_version"],
              "tvm_version": cpu["tvm_version"], "cpu_target": f"{cpu['target']['triple']} -mcpu="
              f"{target.get('mcpu', 'generic')}", "num_inputs": len(manifest["inputs"]),
              "num_outputs": len(manifest["outputs"]), "inputs_doc": doc_lines(manifest["inputs"]),
              "outputs_doc": doc_lines(manifest["outputs"]), "num_sizes": len(params),
              "sizes_doc": "".join(f" *   sizes[{i}] = {p['name']}, in {p['lo']}..{p['hi']}\n"
                                   for i, p in enumerate(params))
              or " *   (none: every size is static; sizes may be NULL)\n",
              "size_names": ", ".join(p["name"] for p in params)}
    return {f"{name}_cpu.h": template("cpu.h.in").substitute(fields),
            f"{name}_cpu.c": template("cpu.c.in").substitute(fields, tables=cpu_tables(manifest),
                                                             sizes_support=template("sizes.c.in").substitute(fields)),
            f"{name}_cpu.map": f"{{\n  global: {name}_cpu_*;\n  local: *;\n}};\n"}
