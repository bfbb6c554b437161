"""Triton template of the projection kernel (kernels/splat/project_spec.py). The 3x3 algebra is
unrolled here in Python, one scalar-per-Gaussian line per matrix entry, so the kernel holds only
[BLOCK] vectors; entries that are structurally zero (the pinhole Jacobian's) are left out."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...codegen.headers import header
from ...schedule.config import Config
from .common import ATAN

if TYPE_CHECKING:
    from .project_spec import ProjectSpec

# Small-angle series of h(u) = (u / (1 + u^2) - atan(u)) / u^3 (the fisheye Jacobian's (df/dr) / r
# times z^3), used below u = 0.25, where the closed form cancels in float32: -2/3 + 4/5 u^2 - ...
SERIES = (-2 / 3, 4 / 5, -6 / 7, 8 / 9, -10 / 11, 12 / 13)


def _sym(i: int, j: int, name: str) -> str:
    return f"{name}{min(i, j)}{max(i, j)}"


def _dot(terms: list[tuple[str, str]]) -> str:
    live = [f"{a} * {b}" for a, b in terms if a != "0" and b != "0"]
    return " + ".join(live) if live else "0.0"


def _loads(spec: ProjectSpec) -> list[str]:
    o = spec.ops
    lines = [f"mx = tl.load({o['means3d'].at('g', '0')}, mask=ok, other=0.0).to(tl.float32)",
             f"my = tl.load({o['means3d'].at('g', '1')}, mask=ok, other=0.0).to(tl.float32)",
             f"mz = tl.load({o['means3d'].at('g', '2')}, mask=ok, other=1.0).to(tl.float32)"]
    lines += [f"s{i} = tl.load({o['scales'].at('g', str(i))}, mask=ok, other=1.0).to(tl.float32)" for i in range(3)]
    lines += [f"q{i} = tl.load({o['quats'].at('g', str(i))}, mask=ok, other=1.0).to(tl.float32)" for i in range(4)]
    lines += [f"w{i}{j} = tl.load({o['viewmat'].at(str(i), str(j))}).to(tl.float32)"
              for i in range(3) for j in range(4)]
    lines += [f"{n} = tl.load({o['K'].at(str(i), str(j))}).to(tl.float32)"
              for n, i, j in (("fx", 0, 0), ("fy", 1, 1), ("cx", 0, 2), ("cy", 1, 2))]
    return lines


def _covariance() -> list[str]:
    """Camera-space covariance c_ij = (W R S S^T R^T W^T)_ij, i <= j."""
    lines = ["qn = 1.0 / tl.sqrt(q0 * q0 + q1 * q1 + q2 * q2 + q3 * q3)",
             "qw = q0 * qn", "qx = q1 * qn", "qy = q2 * qn", "qz = q3 * qn",
             "r00 = 1.0 - 2.0 * (qy * qy + qz * qz)", "r01 = 2.0 * (qx * qy - qw * qz)",
             "r02 = 2.0 * (qx * qz + qw * qy)", "r10 = 2.0 * (qx * qy + qw * qz)",
             "r11 = 1.0 - 2.0 * (qx * qx + qz * qz)", "r12 = 2.0 * (qy * qz - qw * qx)",
             "r20 = 2.0 * (qx * qz - qw * qy)", "r21 = 2.0 * (qy * qz + qw * qx)",
             "r22 = 1.0 - 2.0 * (qx * qx + qy * qy)"]
    lines += [f"m{i}{k} = r{i}{k} * s{k}" for i in range(3) for k in range(3)]
    pairs = [(i, j) for i in range(3) for j in range(i, 3)]
    lines += [f"sg{i}{j} = " + _dot([(f"m{i}{k}", f"m{j}{k}") for k in range(3)]) for i, j in pairs]
    lines += [f"t{i}{j} = " + _dot([(f"w{i}{k}", _sym(k, j, "sg")) for k in range(3)])
              for i in range(3) for j in range(3)]
    lines += [f"c{i}{j} = " + _dot([(f"t{i}{k}", f"w{j}{k}") for k in range(3)]) for i, j in pairs]
    return lines


def _camera(spec: ProjectSpec) -> tuple[list[str], list[list[str]]]:
    """Lines computing mean2d (u, v) and the 2x3 Jacobian's entries (names, '0' for structural zeros)."""
    if spec.camera == "pinhole":
        limx, limy = 1.3 * 0.5 * spec.width, 1.3 * 0.5 * spec.height
        lines = ["iz = 1.0 / pz", "u = fx * px * iz + cx", "v = fy * py * iz + cy",
                 f"tx = pz * tl.minimum(tl.maximum(px * iz, -{limx!r} / fx), {limx!r} / fx)",
                 f"ty = pz * tl.minimum(tl.maximum(py * iz, -{limy!r} / fy), {limy!r} / fy)",
                 "j00 = fx * iz", "j02 = -fx * tx * iz * iz", "j11 = fy * iz", "j12 = -fy * ty * iz * iz"]
        return lines, [["j00", "0", "j02"], ["0", "j11", "j12"]]
    series = " + ".join(f"{c!r} * uu{k}" if k else repr(c) for k, c in enumerate(SERIES))
    powers = ["uu1 = uq * uq"] + [f"uu{k} = uu{k - 1} * uu1" for k in range(2, len(SERIES))]
    lines = ["r2 = px * px + py * py", "rr = tl.sqrt(r2)", "rho2 = r2 + pz * pz",
             "uq = rr / pz", "theta = _atan_pos(uq)",  # z > 0 for every Gaussian that survives culling
             "small = rr < 1e-6 * tl.abs(pz)", "rs = tl.where(small, 1.0, rr)",
             "f = tl.where(small, 1.0 / pz, theta / rs)", *powers,
             f"hser = {series}",
             "hcf = (pz * rs / rho2 - theta) / (rs * rs * rs)",
             "gg = tl.where(uq < 0.25, hser / (pz * pz * pz), hcf)",
             "dfdz = -1.0 / rho2", "u = fx * px * f + cx", "v = fy * py * f + cy",
             "j00 = fx * (f + px * px * gg)", "j01 = fx * px * py * gg", "j02 = fx * px * dfdz",
             "j10 = fy * px * py * gg", "j11 = fy * (f + py * py * gg)", "j12 = fy * py * dfdz"]
    return lines, [["j00", "j01", "j02"], ["j10", "j11", "j12"]]


def covariance_2d(spec: ProjectSpec) -> tuple[list[str], list[list[str]]]:
    """Lines up to the 2D covariance (ca, cb, cc) and its determinant `det`, and the Jacobian's entries
    (the projection backward recomputes the forward with these)."""
    cam, jac = _camera(spec)
    lines = [f"p{a} = w{i}0 * mx + w{i}1 * my + w{i}2 * mz + w{i}3" for i, a in enumerate("xyz")]
    lines += _covariance() + cam
    # cov2d_ab = sum_kl J_ak c_kl J_bl, via e_al = sum_k J_ak c_kl
    lines += [f"e{a}{j} = " + _dot([(jac[a][k], _sym(k, j, "c")) for k in range(3)])
              for a in range(2) for j in range(3)]
    lines += [f"v{a}{b} = " + _dot([(f"e{a}{j}", jac[b][j]) for j in range(3)]) for a, b in ((0, 0), (0, 1), (1, 1))]
    eps = repr(float(spec.eps2d))
    lines += [f"ca = v00 + {eps}", "cb = v01", f"cc = v11 + {eps}", "det = ca * cc - cb * cb"]
    return lines, jac


def _project(spec: ProjectSpec) -> list[str]:
    lines, _ = covariance_2d(spec)
    lines += ["mid = 0.5 * (ca + cc)", "lam = mid + tl.sqrt(tl.maximum(0.1, mid * mid - det))",
              "rad = tl.ceil(3.0 * tl.sqrt(lam))", "idet = 1.0 / det",
              f"keep = ok & (pz >= {spec.near!r}) & (pz <= {spec.far!r}) & (det > 0)",
              "keep = keep & (tl.abs(u) < 1e30) & (tl.abs(v) < 1e30) & (rad < 1e30)",  # finite (NaN compares false)
              f"keep = keep & (u + rad > 0) & (u - rad < {spec.width}) & (v + rad > 0) & (v - rad < {spec.height})"]
    return lines


# gsplat's SH basis (ir/splat_sh_op.py sh_basis) as (index, expression) over unit x, y, z, with the
# helper values each band needs first.
SH_HELPERS = ((4, ["hz2 = z * z", "hc1 = x * x - y * y", "hs1 = 2.0 * x * y"]),
              (9, ["htc = -2.285228997322329 * hz2 + 0.4570457994644658", "htb = 1.445305721320277 * z",
                   "hc2 = x * hc1 - y * hs1", "hs2 = x * hs1 + y * hc1"]))
SH_BASIS = ("0.2820947917738781", "-0.48860251190292 * y", "0.48860251190292 * z", "-0.48860251190292 * x",
            "0.5462742152960395 * hs1", "-1.092548430592079 * z * y", "0.9461746957575601 * hz2 - 0.3153915652525201",
            "-1.092548430592079 * z * x", "0.5462742152960395 * hc1", "-0.5900435899266435 * hs2", "htb * hs1",
            "htc * y", "z * (1.865881662950577 * hz2 - 1.119528997770346)", "htc * x", "htb * hc1",
            "-0.5900435899266435 * hc2")


def sh_basis_lines(spec: ProjectSpec) -> list[str]:
    """Camera centre -R^-1 t (cofactors of the view matrix's 3x3 part), each Gaussian's unit view
    direction (x, y, z; dn = 1 / distance) and the basis sb0.. up to the degree (the backward's too)."""
    cof = {(0, 0): "w11 * w22 - w12 * w21", (0, 1): "w12 * w20 - w10 * w22", (0, 2): "w10 * w21 - w11 * w20",
           (1, 0): "w02 * w21 - w01 * w22", (1, 1): "w00 * w22 - w02 * w20", (1, 2): "w01 * w20 - w00 * w21",
           (2, 0): "w01 * w12 - w02 * w11", (2, 1): "w02 * w10 - w00 * w12", (2, 2): "w00 * w11 - w01 * w10"}
    lines = [f"a{i}{j} = {e}" for (i, j), e in cof.items()]
    lines += ["rdet = 1.0 / (w00 * a00 + w01 * a01 + w02 * a02)"]
    # c = -R^-1 t, R^-1 = adj(R) / det, adj(R)_ij = cofactor_ji
    lines += [f"cc{i} = -(a0{i} * w03 + a1{i} * w13 + a2{i} * w23) * rdet" for i in range(3)]
    lines += ["dx = mx - cc0", "dy = my - cc1", "dz = mz - cc2",
              "dn = 1.0 / tl.maximum(tl.sqrt(dx * dx + dy * dy + dz * dz), 1e-12)",
              "x = dx * dn", "y = dy * dn", "z = dz * dn"]
    count = spec.sh_count
    for start, helpers in SH_HELPERS:
        if count > start:
            lines += helpers
    lines += [f"sb{k} = {SH_BASIS[k]}" for k in range(count)]
    return lines


def _sh(spec: ProjectSpec) -> list[str]:
    """The fused sh_to_color: the basis at each view direction, colour = max(0, basis . coeffs + 0.5)."""
    lines, count = sh_basis_lines(spec), spec.sh_count
    sh = spec.ops["sh_coeffs"]
    for c in range(3):
        terms = [f"sb{k} * tl.load({sh.at('g', str(k), str(c))}, mask=ok, other=0.0).to(tl.float32)"
                 for k in range(count)]
        lines.append(f"rgb{c} = tl.maximum(" + " + ".join(terms) + " + 0.5, 0.0)")
    return lines


def _stores(spec: ProjectSpec) -> list[str]:
    out = spec.outs
    lines = []
    if "means2d" in out:
        lines += [f"tl.store({out['means2d']} + g * 2, tl.where(keep, u, 0.0), mask=ok)",
                  f"tl.store({out['means2d']} + g * 2 + 1, tl.where(keep, v, 0.0), mask=ok)"]
    if "conics" in out:
        lines += [f"tl.store({out['conics']} + g * 3 + {i}, tl.where(keep, {x}, 0.0), mask=ok)"
                  for i, x in enumerate(("cc * idet", "-cb * idet", "ca * idet"))]
    if "depths" in out:
        lines.append(f"tl.store({out['depths']} + g, pz, mask=ok)")
    if "radii" in out:
        lines.append(f"tl.store({out['radii']} + g, tl.where(keep, rad, 0.0).to(tl.int32), mask=ok)")
    if "colors" in out:
        lines += [f"tl.store({out['colors']} + g * 3 + {c}, rgb{c}, mask=ok)" for c in range(3)]
    return lines


def render(spec: ProjectSpec, config: Config, interpret: bool = False) -> str:
    """The projection kernel `{name}`: one program per BLOCK Gaussians."""
    args = ", ".join(a.name for a in spec.launch_plan(config).args)
    body = ["pid = tl.program_id(0)", "g = pid * BLOCK + tl.arange(0, BLOCK)", f"ok = g < {spec.N}"]
    body += _loads(spec) + _project(spec) + (_sh(spec) if spec.sh is not None else []) + _stores(spec)
    src = header(spec, config, "triton") + "import triton\nimport triton.language as tl\n\n"
    if spec.camera == "fisheye":
        src += ATAN + "\n"
    src += f"\n@triton.jit\ndef {spec.name}({args}, BLOCK: tl.constexpr):\n"
    return src + "".join(f"    {ln}\n" for ln in body)
