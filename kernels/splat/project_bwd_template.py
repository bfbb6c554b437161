"""Triton template of the projection backward (kernels/splat/project_bwd_spec.py): the forward's lines
(project_template.covariance_2d) and then the chain rule back, unrolled in Python one scalar-per-Gaussian
line per matrix entry, as the forward is. Names: d<x> is the gradient of forward value <x>."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...codegen.headers import header
from ...schedule.config import Config
from .common import ATAN
from .project_template import SERIES, _loads, _sym, covariance_2d, sh_basis_lines

if TYPE_CHECKING:
    from .project_bwd_spec import ProjectBwdSpec

Q = ("qw", "qx", "qy", "qz")
# d r_ik / d (w, x, y, z) of the rotation of a unit quaternion (project_template._covariance's r_ik)
DR = {"00": ("0", "0", "-4.0 * qy", "-4.0 * qz"), "01": ("-2.0 * qz", "2.0 * qy", "2.0 * qx", "-2.0 * qw"),
      "02": ("2.0 * qy", "2.0 * qz", "2.0 * qw", "2.0 * qx"), "10": ("2.0 * qz", "2.0 * qy", "2.0 * qx", "2.0 * qw"),
      "11": ("0", "-4.0 * qx", "0", "-4.0 * qz"), "12": ("-2.0 * qx", "-2.0 * qw", "2.0 * qz", "2.0 * qy"),
      "20": ("-2.0 * qy", "2.0 * qz", "-2.0 * qw", "2.0 * qx"), "21": ("2.0 * qx", "2.0 * qw", "2.0 * qz", "2.0 * qy"),
      "22": ("0", "-4.0 * qx", "-4.0 * qy", "0")}


def _sum(terms: list[str]) -> str:
    live = [t for t in terms if t]
    return " + ".join(live) if live else "0.0"


def _conic_back(jac: list[list[str]]) -> list[str]:
    """d conic -> V = d cov2d (symmetric) -> d camera covariance (dc_kl, full 3x3) and d Jacobian."""
    lines = ["idet = 1.0 / det", "qa = cc * idet", "qb = -cb * idet", "qc = ca * idet", "hb = 0.5 * dB",
             "x00 = dA * qa + hb * qb", "x01 = dA * qb + hb * qc", "x10 = hb * qa + dC * qb", "x11 = hb * qb + dC * qc",
             "V00 = -(qa * x00 + qb * x10)", "V01 = -(qa * x01 + qb * x11)", "V11 = -(qb * x01 + qc * x11)"]
    vv = [["V00", "V01"], ["V01", "V11"]]
    # F = V J (2x3); dc = J^T F; dJ = 2 F c
    lines += [f"F{a}{m} = " + _sum([f"{vv[a][b]} * {jac[b][m]}" for b in range(2) if jac[b][m] != "0"])
              for a in range(2) for m in range(3)]
    lines += [f"dc{k}{m} = " + _sum([f"{jac[a][k]} * F{a}{m}" for a in range(2) if jac[a][k] != "0"])
              for k in range(3) for m in range(3)]
    lines += [f"dJ{a}{k} = 2.0 * (" + _sum([f"F{a}{m} * {_sym(k, m, 'c')}" for m in range(3)]) + ")"
              for a in range(2) for k in range(3) if jac[a][k] != "0"]
    return lines


def _covariance_back() -> list[str]:
    """dc (camera) -> d Sigma = W^T dc W -> dM = 2 dSigma M -> d scales, d rotation -> d quaternion."""
    lines = [f"h{k}{j} = " + _sum([f"dc{k}{m} * w{m}{j}" for m in range(3)]) for k in range(3) for j in range(3)]
    lines += [f"ds{i}{j} = " + _sum([f"w{k}{i} * h{k}{j}" for k in range(3)]) for i in range(3) for j in range(3)]
    lines += [f"dm{i}{k} = 2.0 * (" + _sum([f"ds{i}{j} * m{j}{k}" for j in range(3)]) + ")"
              for i in range(3) for k in range(3)]
    lines += [f"dsc{k} = " + _sum([f"dm{i}{k} * r{i}{k}" for i in range(3)]) for k in range(3)]
    lines += [f"dn{c} = " + _sum([f"dm{ik[0]}{ik[1]} * s{ik[1]} * ({d[c]})" for ik, d in DR.items() if d[c] != "0"])
              for c in range(4)]
    lines.append("qdot = " + " + ".join(f"{Q[c]} * dn{c}" for c in range(4)))
    lines += [f"dq{c} = qn * (dn{c} - {Q[c]} * qdot)" for c in range(4)]
    return lines


def _pinhole_back(spec: ProjectBwdSpec) -> list[str]:
    """d mean2d and dJ -> d camera-space point (the clamp passes gradient where it does not clamp)."""
    limx, limy = 1.3 * 0.5 * spec.width, 1.3 * 0.5 * spec.height
    return [f"inx = (px * iz >= -{limx!r} / fx) & (px * iz <= {limx!r} / fx)",
            f"iny = (py * iz >= -{limy!r} / fy) & (py * iz <= {limy!r} / fy)",
            "iz2 = iz * iz",
            "dpx = du * fx * iz + tl.where(inx, -dJ02 * fx * iz2, 0.0)",
            "dpy = dv * fy * iz + tl.where(iny, -dJ12 * fy * iz2, 0.0)",
            "dpz = -(du * fx * px + dv * fy * py + dJ00 * fx + dJ11 * fy) * iz2"
            " + dJ02 * fx * (tx * iz + tl.where(inx, px * iz, 0.0)) * iz2"
            " + dJ12 * fy * (ty * iz + tl.where(iny, py * iz, 0.0)) * iz2"]


def _fisheye_back() -> list[str]:
    """The fisheye's second derivatives: f_x = g x, g_x = k x (k = (dg/dr)/r, a series near the axis),
    g_z = 2 / rho2^2, and h = df/dz = -1 / rho2 with h_x = 2 x / rho2^2."""
    kser = " + ".join(f"{2 * k * SERIES[k]!r} * uu{k - 1}" if k > 1 else repr(2 * SERIES[1])
                      for k in range(1, len(SERIES)))
    lines = ["ir4 = 1.0 / (rho2 * rho2)", "pz2 = pz * pz",
             f"kk = tl.where(uq < 0.25, ({kser}) / (pz2 * pz2 * pz), -(2.0 * pz * ir4 + 3.0 * gg) / (rs * rs))",
             "gz = 2.0 * ir4", "hx = 2.0 * px * ir4", "hy = 2.0 * py * ir4", "hz = 2.0 * pz * ir4",
             "xx = px * px", "yy = py * py", "xy = px * py"]
    # d J_ak / d (x, y, z), J = [[fx (f + x^2 g), fx x y g, fx x h], [fy x y g, fy (f + y^2 g), fy y h]]
    parts = {"00": ("fx * (3.0 * gg * px + kk * xx * px)", "fx * (gg * py + xx * kk * py)", "fx * (dfdz + xx * gz)"),
             "01": ("fx * (py * gg + xx * py * kk)", "fx * (px * gg + px * yy * kk)", "fx * xy * gz"),
             "02": ("fx * (dfdz + px * hx)", "fx * px * hy", "fx * px * hz"),
             "10": ("fy * (py * gg + xx * py * kk)", "fy * (px * gg + px * yy * kk)", "fy * xy * gz"),
             "11": ("fy * (gg * px + yy * kk * px)", "fy * (3.0 * gg * py + kk * yy * py)", "fy * (dfdz + yy * gz)"),
             "12": ("fy * py * hx", "fy * (dfdz + py * hy)", "fy * py * hz")}
    for i, a in enumerate("xyz"):
        terms = [f"du * j0{i}", f"dv * j1{i}"] + [f"dJ{ak} * {p[i]}" for ak, p in parts.items()]
        lines.append(f"dp{a} = " + " + ".join(terms))
    return lines


# d basis_k / d (x, y, z) of project_template.SH_BASIS (differentiated with sympy), '0' for none
SH_GRAD = (("0", "0", "0"), ("0", "-0.48860251190292", "0"), ("0", "0", "0.48860251190292"),
           ("-0.48860251190292", "0", "0"), ("1.092548430592079 * y", "1.092548430592079 * x", "0"),
           ("0", "-1.092548430592079 * z", "-1.092548430592079 * y"), ("0", "0", "1.89234939151512 * z"),
           ("-1.092548430592079 * z", "0", "-1.092548430592079 * x"),
           ("1.092548430592079 * x", "-1.092548430592079 * y", "0"),
           ("-3.540261539559861 * x * y", "1.770130769779931 * (y * y - x * x)", "0"),
           ("2.890611442640554 * y * z", "2.890611442640554 * x * z", "2.890611442640554 * x * y"),
           ("0", "0.4570457994644658 - 2.285228997322329 * z * z", "-4.570457994644658 * y * z"),
           ("0", "0", "5.597644988851731 * z * z - 1.119528997770346"),
           ("0.4570457994644658 - 2.285228997322329 * z * z", "0", "-4.570457994644658 * x * z"),
           ("2.890611442640554 * x * z", "-2.890611442640554 * y * z", "1.445305721320277 * (x * x - y * y)"),
           ("1.770130769779931 * (y * y - x * x)", "3.540261539559861 * x * y", "0"))


def _sh_back(spec: ProjectBwdSpec) -> list[str]:
    """The fused sh_to_color_bwd: basis at the view direction, d_coeffs = basis x d_colors where the clamp
    passes (stored, zeros past the degree), then d basis -> d direction -> d means (off the direction, / distance)."""
    count, o, out = spec.sh_count, spec.ops, spec.outs
    k_all = spec.sh.src[0].shape[1] if spec.sh is not None else count
    lines = sh_basis_lines(spec)
    for c in range(3):
        lines += [f"co{k}_{c} = tl.load({o['sh_coeffs'].at('g', str(k), str(c))}, mask=ok, other=0.0).to(tl.float32)"
                  for k in range(count)]
        lines.append(f"raw{c} = " + " + ".join(f"sb{k} * co{k}_{c}" for k in range(count)) + " + 0.5")
        lines.append(f"gc{c} = tl.where(raw{c} >= 0.0, tl.load({o['d_colors'].at('g', str(c))}, mask=ok, "
                     "other=0.0).to(tl.float32), 0.0)")
    if "d_sh_coeffs" in out:
        lines += [f"tl.store({out['d_sh_coeffs']} + g * {3 * k_all} + {3 * k + c}, "
                  + (f"sb{k} * gc{c}" if k < count else "tl.zeros_like(gc0)") + ", mask=ok)"
                  for k in range(k_all) for c in range(3)]
    if "d_sh_means" in out:
        lines += [f"dsb{k} = co{k}_0 * gc0 + co{k}_1 * gc1 + co{k}_2 * gc2" for k in range(1, count)]
        lines += [f"dd{a} = " + _sum([f"dsb{k} * ({SH_GRAD[k][i]})" for k in range(1, count) if SH_GRAD[k][i] != "0"])
                  for i, a in enumerate("xyz")]
        lines.append("ddot = x * ddx + y * ddy + z * ddz")
        lines += [f"tl.store({out['d_sh_means']} + g * 3 + {i}, (dd{a} - {a} * ddot) * dn, mask=ok)"
                  for i, a in enumerate("xyz")]
    return lines


def _loads_bwd(spec: ProjectBwdSpec) -> list[str]:
    o = spec.ops
    lines = [f"rad = tl.load({o['radii'].at('g')}, mask=ok, other=0)", "keep = ok & (rad > 0)"]
    lines += [f"{n} = tl.load({o['d_means2d'].at('g', str(i))}, mask=keep, other=0.0).to(tl.float32)"
              for i, n in enumerate(("du", "dv"))]
    lines += [f"{n} = tl.load({o['d_conics'].at('g', str(i))}, mask=keep, other=0.0).to(tl.float32)"
              for i, n in enumerate(("dA", "dB", "dC"))]
    return lines


def _stores(spec: ProjectBwdSpec) -> list[str]:
    vals = {"d_means3d": [_sum([f"w{k}{i} * dp{'xyz'[k]}" for k in range(3)]) for i in range(3)],
            "d_scales": [f"dsc{k}" for k in range(3)], "d_quats": [f"dq{c}" for c in range(4)]}
    lines = []
    for role, out in sorted(spec.outs.items()):
        if role not in vals:  # the SH sibling's (_sh_back)
            continue
        n = len(vals[role])
        lines += [f"tl.store({out} + g * {n} + {i}, tl.where(keep, {v}, 0.0), mask=ok)"
                  for i, v in enumerate(vals[role])]
    return lines


def render(spec: ProjectBwdSpec, config: Config, interpret: bool = False) -> str:
    """The projection backward kernel `{name}`: one program per BLOCK Gaussians."""
    args = ", ".join(a.name for a in spec.launch_plan(config).args)
    fwd, jac = covariance_2d(spec)
    cam = _pinhole_back(spec) if spec.camera == "pinhole" else _fisheye_back()
    body = ["pid = tl.program_id(0)", "g = pid * BLOCK + tl.arange(0, BLOCK)", f"ok = g < {spec.N}"]
    body += _loads(spec) + _loads_bwd(spec) + fwd + _conic_back(jac) + _covariance_back() + cam + _stores(spec)
    body += _sh_back(spec) if spec.sh is not None else []
    src = header(spec, config, "triton") + "import triton\nimport triton.language as tl\n\n"
    if spec.camera == "fisheye":
        src += ATAN + "\n"
    src += f"\n@triton.jit\ndef {spec.name}({args}, BLOCK: tl.constexpr):\n"
    return src + "".join(f"    {ln}\n" for ln in body)
