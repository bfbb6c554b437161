"""Packaging: the wheel holds every library module and the examples, and a bare install (numpy only)
shows graphs, prints its version, and answers a feature it cannot run with one line naming the extra.

test_bare_wheel_install builds the wheel and installs it into a fresh virtual environment: it needs
PyPI (setuptools for the build, numpy for the install) and takes about 30-60 s on two cores."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from test_layering import ROOT, library_modules

tomllib = pytest.importorskip("tomllib")

# What the source tree holds that the wheel must not (or need not) see while building.
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "out", "*.egg-info", "__pycache__", ".*_cache",
                                     ".hypothesis", "tests", "bench")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _subpackages() -> set[str]:
    """Directories of library modules (every module's package), as dotted names under tilefuse."""
    out = {"tilefuse"}
    for name, path in library_modules().items():
        if path.name == "__init__.py" and name != "__init__":
            out.add(f"tilefuse.{name}")
    return out


def test_every_subpackage_is_listed():
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    missing = sorted(_subpackages() - listed)
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_extras_are_named_by_use_and_all_is_their_union():
    extras = _pyproject()["project"]["optional-dependencies"]
    assert {"cpu", "gpu", "tune", "all", "postgres", "splat", "dev"} <= set(extras)
    assert extras["all"] == ["tilefuse[cpu,gpu,tune,postgres]"]  # splat (GPL plyfile) only by name
    # every optional module tilefuse.deps names an extra for is installed by that extra
    from tilefuse.deps import EXTRAS

    for module, (dist, extra) in EXTRAS.items():
        if extra is not None:
            names = [req.split("[")[0].split("=")[0].split(">")[0].split("<")[0] for req in extras[extra]]
            assert dist.split("[")[0] in names, f"{module}: {dist} is not in the [{extra}] extra"


def test_makefile_installs_through_the_extras():
    text = (ROOT / "Makefile").read_text()
    assert '-e ".[$(EXTRAS)]"' in text and "EXTRAS := all,splat,dev" in text
    # the only packages the Makefile names itself are pins a user install leaves open
    pins = next(line for line in text.splitlines() if line.startswith("PINS :="))
    assert "torch==2.13.0" in pins and "apache-tvm-ffi==0.1.14.post1" in pins and "numpy>=1.26,<2.4" in pins
    assert "xgboost" not in text and "sqlalchemy" not in text and "triton==" not in text


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "TILEFUSE_", "VIRTUAL_ENV"))}
    env["XDG_DATA_HOME"] = str(tmp_path / "data")  # no tuning database or cost model from this machine
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    return env


def test_bare_wheel_install(tmp_path):
    env = _clean_env(tmp_path)
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=_NOT_SOURCE)  # an in-tree build writes build/ and *.egg-info
    # The build backend is setuptools either way; reusing this environment's (when it has one) saves
    # fetching it into an isolated build environment.
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    built = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(tmp_path / "dist"),
                  str(src)], tmp_path, env)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("tilefuse-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    want = {f"tilefuse/{p.relative_to(ROOT).as_posix()}" for p in library_modules().values()}
    want |= {f"tilefuse/examples/{p.name}" for p in (ROOT / "examples").glob("*.tf")} | {"tilefuse/py.typed"}
    assert not want - names, f"missing from the wheel: {sorted(want - names)}"
    assert not any(n.startswith(("tilefuse/tests/", "tilefuse/bench/")) for n in names)

    venv = tmp_path / "venv"
    # without pip (ensurepip takes longer than the rest): this pip installs into it with --python
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    assert made.returncode == 0, made.stderr
    py = venv / "bin" / "python"
    inst = _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", str(wheel)], tmp_path, env)
    assert inst.returncode == 0, inst.stderr[-3000:]
    _check_bare_commands(venv, tmp_path, env)


def _check_bare_commands(venv: Path, cwd: Path, env: dict[str, str]) -> None:
    py, exe = venv / "bin" / "python", venv / "bin" / "tilefuse"
    installed = _run([str(py), "-c", "import importlib.metadata as m, tilefuse, pathlib; "
                      "print(m.version('tilefuse')); print(pathlib.Path(tilefuse.__file__).parent)"], cwd, env)
    version, pkg_dir = installed.stdout.split()
    assert installed.returncode == 0 and Path(pkg_dir).is_relative_to(venv), installed
    shown = _run([str(exe), "--version"], cwd, env)
    assert (shown.returncode, shown.stdout.strip()) == (0, f"tilefuse {version}")
    example = Path(pkg_dir) / "examples" / "decoder_mlp.tf"  # shipped in the wheel
    show = _run([str(exe), "show", str(example)], cwd, env)
    assert show.returncode == 0 and "k3_matmul_add: reads" in show.stdout, show.stderr
    devices = _run([str(exe), "devices"], cwd, env)  # the host CPU's fingerprint needs no extra
    assert devices.returncode == 0 and "CPU:" in devices.stdout, devices.stderr
    for cmd, extra in ((["run", str(example), "--target", "cpu"], "cpu"),
                       (["compile", str(example), "--target", "sm_90"], "gpu"),
                       (["tune", str(example), "--budget", "1"], "tune"),
                       (["db", "show"], "tune")):
        res = _run([str(exe), *cmd], cwd, env)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1, (cmd, res.returncode, res.stderr[-2000:])
        assert lines[0].startswith("error: ") and f'pip install "tilefuse[{extra}]"' in lines[0], (cmd, lines)
