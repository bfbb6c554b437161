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


def cpu_tables(manifest: dict[str, Any]) -> str:
    """The generated part of NAME_cpu.c: kernel declarations, argument shapes and the call list."""
    cpu = manifest["cpu"]
    calls = cpu["calls"]
    roles = {"input": "TF_INPUT", "output": "TF_OUTPUT", "workspace": "TF_WORKSPACE"}
    target = cpu["target"]["llvm"]
    out = [f"#define TF_CPU_NUM_CALLS {len(calls)}\n#define TF_CPU_MAX_ARGS {max(len(c['args']) for c in calls)}\n"
           f"#define TF_CPU_WORKSPACE_BYTES ((size_t){cpu['workspace_bytes']})\n"
           f'#define TF_CPU_TARGET "{target["kind"]} -mcpu={target.get("mcpu", "generic")}"\n',
           _feature_check(cpu["target"]["features"])]
    rows = []
    for ci, call in enumerate(calls):
        out.append(f"/* {call['kernel']} ({call['family']}): TVM's packed entry point in {call['object']} */\n"
                   f"int __tvm_ffi_{call['symbol']}(void* self, const tf_any* args, int32_t num_args, "
                   "tf_any* result);\n")
        args, shapes = [], []
        for ai, a in enumerate(call["args"]):
            shapes.append(f"static int64_t tf_shape_c{ci}_a{ai}[] = {{{', '.join(str(s) for s in a['shape'])}}};"
                          f" /* {a['buffer']}: {a['dtype']} */\n")
            code, bits = a["dl_dtype"]
            args.append(f"    {{{roles[a['role']]}, {a['index']}, {{{code}, {bits}, 1}}, {len(a['shape'])}, "
                        f"tf_shape_c{ci}_a{ai}}},")
        out.append("".join(shapes) + f"static const tf_cpu_arg tf_args_c{ci}[] = {{\n" + "\n".join(args) + "\n};\n")
        rows.append(f'    {{"{call["kernel"]}", __tvm_ffi_{call["symbol"]}, {len(call["args"])}, tf_args_c{ci}}},')
    out.append("static const tf_cpu_call tf_cpu_calls[TF_CPU_NUM_CALLS] = { /* in order */\n" + "\n".join(rows)
               + "\n};\n")
    return "\n".join(out)


def render_cpu_c(manifest: dict[str, Any]) -> dict[str, str]:
    """NAME_cpu.h, NAME_cpu.c and NAME_cpu.map for `manifest` (which has a `cpu` entry)."""
    name = manifest["name"]
    cpu = manifest["cpu"]
    target = cpu["target"]["llvm"]
    fields = {"name": name, "upper": name.upper(), "guard": name.upper(), "graph": manifest["graph"],
              "graph_key_short": manifest["graph_key"][:16], "tilefuse_version": manifest["tilefuse_version"],
              "tvm_version": cpu["tvm_version"], "cpu_target": f"{cpu['target']['triple']} -mcpu="
              f"{target.get('mcpu', 'generic')}", "num_inputs": len(manifest["inputs"]),
              "num_outputs": len(manifest["outputs"]), "inputs_doc": doc_lines(manifest["inputs"]),
              "outputs_doc": doc_lines(manifest["outputs"])}
    return {f"{name}_cpu.h": template("cpu.h.in").substitute(fields),
            f"{name}_cpu.c": template("cpu.c.in").substitute(fields, tables=cpu_tables(manifest)),
            f"{name}_cpu.map": f"{{\n  global: {name}_cpu_*;\n  local: *;\n}};\n"}
