"""Optional dependencies (issue "hardening", item 10): a missing one is one MissingDependency naming the
extra that installs it, in the API and as one `error:` line in the CLI. A module is made absent the way
Python itself spells it (`sys.modules[name] = None` makes `import name` raise ModuleNotFoundError)."""

from __future__ import annotations

import sys

import pytest

from tilefuse.cli import main
from tilefuse.compiler import _open_db, require_backend
from tilefuse.deps import available, require
from tilefuse.errors import MissingDependency, TilefuseError
from tilefuse.schedule.target import get_target


def test_require_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "xgboost", None)
    with pytest.raises(MissingDependency) as err:
        require("xgboost", "the XGBoost cost model")
    assert str(err.value) == ('the XGBoost cost model needs xgboost, which is not installed: '
                              'pip install "tilefuse[tune]"')
    assert isinstance(err.value, ImportError) and isinstance(err.value, TilefuseError)
    assert (err.value.name, err.value.extra) == ("xgboost", "tune")


def test_torch_is_the_users_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingDependency, match=r"needs torch, which is not installed: install the torch build"):
        require("torch", "running on 'interp'")


def test_an_unknown_missing_module_is_a_bug_not_a_missing_extra():
    with pytest.raises(ModuleNotFoundError) as err:
        require("tilefuse_no_such_module", "nothing")
    assert not isinstance(err.value, MissingDependency)


def test_every_backend_names_its_extra(monkeypatch):
    for module in ("tvm", "triton"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingDependency, match=r'^target .cpu. \(the TVM CPU backend\) needs apache-tvm.*\[cpu\]"$'):
        require_backend(get_target("cpu"))
    with pytest.raises(MissingDependency, match=r'^target .sm_90. \(Triton\) needs triton.*"tilefuse\[gpu\]"$'):
        require_backend(get_target("sm_90"))


def test_compile_without_sqlalchemy_skips_an_absent_database_and_asks_for_a_present_one(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    assert not available("sqlalchemy")
    url = f"sqlite:///{tmp_path / 'tuning.db'}"
    assert _open_db(url, auto=True) is None  # nothing tuned: compile goes on with defaults
    (tmp_path / "tuning.db").write_bytes(b"")
    with pytest.raises(MissingDependency, match=r"reading the tuning database .*tilefuse\[tune\]"):
        _open_db(url, auto=True)
    with pytest.raises(MissingDependency):  # asked for by name: always read
        _open_db(f"sqlite:///{tmp_path / 'other.db'}", auto=False)


def test_cli_turns_any_missing_optional_module_into_one_line(monkeypatch, capsys):
    # the database module imports sqlalchemy at its top; drop it (restored afterwards) so it is imported again
    for name in ("tilefuse.autotune.database", "tilefuse.autotune.db_schema"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    assert main(["db", "show"]) == 2
    err = capsys.readouterr().err
    assert err == 'error: this command needs sqlalchemy, which is not installed: pip install "tilefuse[tune]"\n'


def test_version(capsys):
    import tilefuse

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out == f"tilefuse {tilefuse.__version__}\n"

