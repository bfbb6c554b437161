"""The C side of a bundle: NAME.h, NAME.c (launcher template plus generated tables with the cubins and
PTX embedded as byte arrays) and CMakeLists.txt, rendered from the templates in export/templates/."""

from __future__ import annotations

from importlib import resources
from string import Template
from typing import Any


def template(name: str) -> Template:
    """The template export/templates/NAME."""
    return Template(resources.files(__package__).joinpath("templates", name).read_text(encoding="utf-8"))


def byte_array(name: str, data: bytes, comment: str) -> str:
    """`data` as a readable C array definition, 16 bytes a line."""
    rows = [", ".join(f"0x{b:02x}" for b in data[i:i + 16]) for i in range(0, len(data), 16)]
    body = ",\n".join(f"    {r}" for r in rows)
    return f"/* {comment} ({len(data)} bytes) */\nstatic const unsigned char {name}[] = {{\n{body}\n}};\n"


def doc_lines(tensors: list[dict[str, Any]]) -> str:
    from .dyn import size_text

    return "".join(f" *   [{i}] {t['name']}: {t['dtype']}[{', '.join(size_text(s) for s in t['shape'])}]\n"
                   for i, t in enumerate(tensors))


def _fields(manifest: dict[str, Any]) -> dict[str, Any]:
    name = manifest["name"]
    return {"name": name, "upper": name.upper(), "guard": f"{name.upper()}_H", "graph": manifest["graph"],
            "graph_key_short": manifest["graph_key"][:16], "tilefuse_version": manifest["tilefuse_version"],
            "triton_version": manifest["triton_version"], "num_inputs": len(manifest["inputs"]),
            "num_outputs": len(manifest["outputs"]), "inputs_doc": doc_lines(manifest["inputs"]),
            "outputs_doc": doc_lines(manifest["outputs"])}


def _launch_tables(vi: int, variant: dict[str, Any], files: dict[str, bytes]) -> tuple[list[str], list[str]]:
    """The byte arrays and argument tables of one variant, and its tf_launch initialisers."""
    parts, inits = [], []
    roles = {"input": "TF_INPUT", "output": "TF_OUTPUT", "workspace": "TF_WORKSPACE", "constant": "TF_CONSTANT"}
    for li, launch in enumerate(variant["launches"]):
        tag = f"v{vi}_l{li}"
        parts.append(byte_array(f"tf_cubin_{tag}", files[launch["cubin"]], f"{launch['function']} cubin, "
                                f"{variant['ptx_target']}"))
        parts.append(byte_array(f"tf_ptx_{tag}", files[launch["ptx"]] + b"\0", f"{launch['function']} PTX"))
        args = ", ".join(f"{{{roles[a['role']]}, {a['index']}}}" for a in launch["args"])
        parts.append(f"static const tf_arg tf_args_{tag}[] = {{{args}}};\n")
        zero = launch["zero_before"]
        if zero:
            parts.append(f"static const tf_zero tf_zero_{tag}[] = {{"
                         + ", ".join(f"{{{o}, {n}}}" for o, n in zero) + "};\n")
        grid = ", ".join(str(g) for g in launch["grid"])
        inits.append(f'    {{"{launch["mangled_name"]}", tf_cubin_{tag}, sizeof(tf_cubin_{tag}), tf_ptx_{tag}, '
                     f'{{{grid}}}, {launch["block"][0]}, {launch["shared_mem_bytes"]}, {len(launch["args"])}, '
                     f'tf_args_{tag}, {len(zero)}, {f"tf_zero_{tag}" if zero else "NULL"}}},')
    return parts, inits


def _constant_tables(vi: int, variant: dict[str, Any], files: dict[str, bytes]) -> list[str]:
    """The embedded constants of one variant and their table (none: a NULL table)."""
    parts, rows = [], []
    for ci, c in enumerate(variant["constants"]):
        data = files[c["file"]]
        # an empty list still gets one byte: C has no empty arrays; the recorded size stays 0
        parts.append(byte_array(f"tf_const_v{vi}_c{ci}", data or b"\0", f"{c['kernel']}.{c['name']}: "
                                f"{c['dtype']}{c['shape']}"))
        rows.append(f'    {{"{c["kernel"]}.{c["name"]}", tf_const_v{vi}_c{ci}, {len(data)}}},')
    if rows:
        parts.append(f"static const tf_constant tf_constants_v{vi}[] = {{\n" + "\n".join(rows) + "\n};\n")
    return parts


def c_tables(manifest: dict[str, Any], files: dict[str, bytes]) -> str:
    """The generated part of NAME.c: embedded images, argument tables, launches and variants."""
    variants = manifest["variants"]
    most = max(len(v["launches"]) for v in variants)
    consts = max(1, max(len(v["constants"]) for v in variants))  # 1: no zero-length array in the handle
    out = [f"#define TF_NUM_VARIANTS {len(variants)}\n#define TF_MAX_LAUNCHES {most}\n"
           f"#define TF_MAX_CONSTANTS {consts}\n"
           f"#define TF_WORKSPACE_BYTES ((size_t){manifest['workspace_bytes']})\n"
           f'#define TF_ARCH_LIST "{", ".join(v["arch"] for v in variants)}"\n']
    rows = []
    for vi, v in enumerate(variants):
        parts, inits = _launch_tables(vi, v, files)
        out += parts + _constant_tables(vi, v, files)
        out.append(f"static const tf_launch tf_launches_v{vi}[] = {{ /* {v['arch']} in launch order */\n"
                   + "\n".join(inits) + "\n};\n")
        table = f"tf_constants_v{vi}" if v["constants"] else "NULL"
        rows.append(f'    {{"{v["arch"]}", {v["capability"]}, {int(v["arch_specific"])}, {len(v["launches"])}, '
                    f"tf_launches_v{vi}, {len(v['constants'])}, {table}}},")
    out.append("static const tf_variant tf_variants[TF_NUM_VARIANTS] = {\n" + "\n".join(rows) + "\n};\n")
    return "\n".join(out)


def render_c(manifest: dict[str, Any], files: dict[str, bytes]) -> dict[str, str]:
    """NAME.h and NAME.c for `manifest`'s GPU variants; `files` holds the bundle's cubins and PTX by name."""
    fields = _fields(manifest)
    name = manifest["name"]
    return {f"{name}.h": template("bundle.h.in").substitute(fields),
            f"{name}.c": template("bundle.c.in").substitute(fields, tables=c_tables(manifest, files))}


def render_cmake(manifest: dict[str, Any]) -> str:
    """CMakeLists.txt building the bundle's GPU library, CPU library, or both (static and shared each)."""
    name = manifest["name"]
    fields = {"name": name, "upper": name.upper(), "tilefuse_version": manifest["tilefuse_version"]}
    parts, libraries = [], []
    if manifest["variants"]:
        parts.append(template("cmake_gpu.in").substitute(fields))
        libraries.append(f"lib{name} (GPU)")
    cpu = manifest.get("cpu")
    if cpu is not None:
        target = cpu["target"]
        parts.append(template("cmake_cpu.in").substitute(
            fields, objects=" ".join(c["object"] for c in cpu["calls"]),
            cpu_target=f"{target['triple']} -mcpu={target['llvm'].get('mcpu', 'generic')}"))
        libraries.append(f"lib{name}_cpu (CPU)")
    return template("CMakeLists.txt.in").substitute(fields, parts="".join(parts),
                                                    libraries=" and ".join(libraries))
