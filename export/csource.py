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
    params = manifest.get("dynamic", {}).get("params", [])
    return {"name": name, "upper": name.upper(), "guard": f"{name.upper()}_H", "graph": manifest["graph"],
            "graph_key_short": manifest["graph_key"][:16], "tilefuse_version": manifest["tilefuse_version"],
            "triton_version": manifest["triton_version"], "num_inputs": len(manifest["inputs"]),
            "num_outputs": len(manifest["outputs"]), "inputs_doc": doc_lines(manifest["inputs"]),
            "outputs_doc": doc_lines(manifest["outputs"]), "num_sizes": len(params),
            "sizes_doc": "".join(f" *   sizes[{i}] = {p['name']}, in {p['lo']}..{p['hi']}\n" for i, p in
                                 enumerate(params)) or " *   (none: every size is static; sizes may be NULL)\n"}


def _images(vi: int, variant: dict[str, Any], files: dict[str, bytes]) -> tuple[list[str], dict[str, int]]:
    """The embedded cubins and PTX of one variant (one image per cubin file: launches of one function under
    one config share it) and its tf_image table; the image index of each cubin file."""
    parts, rows = [], []
    index: dict[str, int] = {}
    for launch in variant["launches"]:
        if launch["cubin"] in index:
            continue
        tag = f"v{vi}_i{len(index)}"
        index[launch["cubin"]] = len(index)
        parts.append(byte_array(f"tf_cubin_{tag}", files[launch["cubin"]], f"{launch['cubin']}, "
                                f"{variant['ptx_target']}"))
        parts.append(byte_array(f"tf_ptx_{tag}", files[launch["ptx"]] + b"\0", f"{launch['ptx']}"))
        rows.append(f'    {{"{launch["mangled_name"]}", tf_cubin_{tag}, sizeof(tf_cubin_{tag}), tf_ptx_{tag}, '
                    f'{launch["shared_mem_bytes"]}}},')
    parts.append(f"static const tf_image tf_images_v{vi}[] = {{\n" + "\n".join(rows) + "\n};\n")
    return parts, index


def _launch_tables(vi: int, variant: dict[str, Any], files: dict[str, bytes]) -> tuple[list[str], list[str]]:
    """The images, argument tables and zero lists of one variant, and its tf_launch initialisers (a dynamic
    grid is left to the grid function: its static slot holds 1s)."""
    parts, index = _images(vi, variant, files)
    inits = []
    roles = {"input": "TF_INPUT", "output": "TF_OUTPUT", "workspace": "TF_WORKSPACE", "constant": "TF_CONSTANT",
             "size": "TF_SIZE"}
    for li, launch in enumerate(variant["launches"]):
        tag = f"v{vi}_l{li}"
        args = ", ".join(f"{{{roles[a['role']]}, {a['index']}}}" for a in launch["args"])
        parts.append(f"static const tf_arg tf_args_{tag}[] = {{{args}}}; /* {launch['function']} */\n")
        zero = launch["zero_before"]
        if zero:
            parts.append(f"static const tf_zero tf_zero_{tag}[] = {{"
                         + ", ".join(f"{{{o}, {n}}}" for o, n in zero) + "};\n")
        grid = ", ".join(str(g) if isinstance(g, int) else "1" for g in launch["grid"])
        inits.append(f'    {{{index[launch["cubin"]]}, {{{grid}}}, {launch["block"][0]}, {len(launch["args"])}, '
                     f'tf_args_{tag}, {len(zero)}, {f"tf_zero_{tag}" if zero else "NULL"}}},')
    return parts, inits


def _grid_function(vi: int, variant: dict[str, Any], names: list[str]) -> str:
    """tf_grid_v{vi}(): a dynamic variant's grid of each launch at the run's sizes `sz`."""
    from .dyn import c_expr

    cases = []
    for li, launch in enumerate(variant["launches"]):
        dims = " ".join(f"g[{d}] = {c_expr(v, names)};" for d, v in enumerate(launch["grid"]))
        cases.append(f"    case {li}: {dims} break; /* {launch['function']} */")
    return (f"static void tf_grid_v{vi}(int launch, const int64_t* sz, int64_t g[3]) {{\n"
            "  g[0] = g[1] = g[2] = 0;\n  switch (launch) {\n" + "\n".join(cases) + "\n    default: break;\n  }\n}\n")


def _bucket_tables(vi: int, variant: dict[str, Any], names: list[str]) -> list[str]:
    """A variant's buckets: each one's range per size, launches in order and workspace bytes (a static
    variant: one bucket of every launch)."""
    buckets = variant.get("buckets") or [{"ranges": [], "launches": list(range(len(variant["launches"]))),
                                          "workspace_bytes": variant["workspace_bytes"]}]
    parts, rows = [], []
    for bi, b in enumerate(buckets):
        ranges = {n: (lo, hi) for n, lo, hi in b["ranges"]}
        bounds = ", ".join(f"{{{ranges[n][0]}, {ranges[n][1]}}}" for n in names) or "{0, 0}"
        parts.append(f"static const int64_t tf_range_v{vi}_b{bi}[][2] = {{{bounds}}};\n"
                     f"static const int tf_launches_v{vi}_b{bi}[] = {{{', '.join(str(i) for i in b['launches'])}}};\n")
        rows.append(f"    {{tf_range_v{vi}_b{bi}, {len(b['launches'])}, tf_launches_v{vi}_b{bi}, "
                    f"(size_t){b['workspace_bytes']}}},")
    parts.append(f"static const tf_bucket tf_buckets_v{vi}[] = {{\n" + "\n".join(rows) + "\n};\n")
    return parts


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
    """The generated part of NAME.c: embedded images, argument tables, launches, buckets and variants."""
    variants = manifest["variants"]
    names = [p["name"] for p in manifest.get("dynamic", {}).get("params", [])]
    images = max(len({x["cubin"] for x in v["launches"]}) for v in variants)
    consts = max(1, max(len(v["constants"]) for v in variants))  # 1: no zero-length array in the handle
    quoted = ", ".join(f'"{n}"' for n in names) or '""'
    out = [f"#define TF_NUM_VARIANTS {len(variants)}\n#define TF_MAX_IMAGES {images}\n"
           f"#define TF_MAX_CONSTANTS {consts}\n"
           f"#define TF_WORKSPACE_BYTES ((size_t){manifest['workspace_bytes']})\n"
           f'#define TF_ARCH_LIST "{", ".join(v["arch"] for v in variants)}"\n'
           f"#define TF_NUM_SIZES {len(names)}\n#define TF_NUM_BUCKETS {len(variants[0].get('buckets') or [0])}\n"
           f'#define TF_SIZE_LIST "{", ".join(names)}"\n'
           f"static const char* const tf_size_names[] = {{{quoted}}};\n"]
    rows = []
    for vi, v in enumerate(variants):
        parts, inits = _launch_tables(vi, v, files)
        out += parts + _constant_tables(vi, v, files) + _bucket_tables(vi, v, names)
        out.append(f"static const tf_launch tf_launches_v{vi}[] = {{ /* {v['arch']} */\n" + "\n".join(inits) + "\n};\n")
        grid = "NULL"
        if v.get("buckets"):
            out.append(_grid_function(vi, v, names))
            grid = f"tf_grid_v{vi}"
        table = f"tf_constants_v{vi}" if v["constants"] else "NULL"
        n_images = len({x["cubin"] for x in v["launches"]})
        rows.append(f'    {{"{v["arch"]}", {v["capability"]}, {int(v["arch_specific"])}, {n_images}, tf_images_v{vi}, '
                    f"tf_launches_v{vi}, tf_buckets_v{vi}, {grid}, {len(v['constants'])}, {table}}},")
    out.append("static const tf_variant tf_variants[TF_NUM_VARIANTS] = {\n" + "\n".join(rows) + "\n};\n")
    return "\n".join(out)


def render_c(manifest: dict[str, Any], files: dict[str, bytes]) -> dict[str, str]:
    """NAME.h and NAME.c for `manifest`'s GPU variants; `files` holds the bundle's cubins and PTX by name."""
    fields = _fields(manifest)
    name = manifest["name"]
    return {f"{name}.h": template("bundle.h.in").substitute(fields),
            f"{name}.c": template("bundle.c.in").substitute(fields, tables=c_tables(manifest, files),
                                                            sizes_support=template("sizes.c.in").substitute(fields),
                                                            driver=template("driver.c.in").substitute(fields))}


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
