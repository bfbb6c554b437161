"""Test setup: the Triton interpreter is chosen before triton is imported; builds, the tuning
database and the cost model go to temporary places; `gpu` tests skip without CUDA."""

import os
import tempfile

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TILEFUSE_CACHE_DIR", tempfile.mkdtemp(prefix="tilefuse-test-cache-"))
# Never the user's tuning database or cost model: compile's "auto" sources would read them, and
# `costmodel train` writes its model to the default place.
_DATA = tempfile.mkdtemp(prefix="tilefuse-test-data-")
os.environ["TILEFUSE_DB"] = os.path.join(_DATA, "tuning.db")
os.environ["TILEFUSE_COSTMODEL"] = os.path.join(_DATA, "costmodel")

import pytest  # noqa: E402


@pytest.fixture
def count_calls(monkeypatch):
    """count_calls(module, name): the list of calls made to module.name from now on (each still runs),
    e.g. the builds a compiled graph does during calls (none)."""

    def spy_on(module, name):
        calls = []
        real = getattr(module, name)

        def spy(*a, **k):
            calls.append(a)
            return real(*a, **k)

        monkeypatch.setattr(module, name, spy)
        return calls

    return spy_on


@pytest.fixture
def sparse_check_mode(monkeypatch):
    """sparse_check_mode(value): TILEFUSE_SPARSE_CHECK set to `value` for this test, settings reloaded (and
    restored after)."""
    from tilefuse.settings import reload_settings

    def set_mode(value):
        monkeypatch.setenv("TILEFUSE_SPARSE_CHECK", value)
        reload_settings()

    yield set_mode
    monkeypatch.delenv("TILEFUSE_SPARSE_CHECK", raising=False)
    reload_settings()


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no torch means no GPU
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
