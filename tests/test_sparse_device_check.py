"""TILEFUSE_SPARSE_CHECK: run-time sparse structures of torch tensors are validated where they live
("device", the default: reductions and one scalar read back, no copy of the arrays), by copying them to
the host ("host"), or not at all ("off"). A bad structure gets the host check's exact message in both
checking modes; a valid one is never copied in device mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sparse_cases import spmm_graph
from test_sparse_inputs import BAD_CSR, _csr_inputs

import tilefuse as tf
from tilefuse.ir.sparse_op import SparseStructureError, prune_2to4
from tilefuse.kernels.sparse import common
from tilefuse.settings import SettingsError


def copies(monkeypatch):
    """Count the host copies check_structure makes."""
    seen = []
    real = common.host

    def counting(x):
        seen.append(x)
        return real(x)

    monkeypatch.setattr(common, "host", counting)
    return seen


def spec_and_inputs(changes=None):
    ins = {**_csr_inputs(), **(changes or {})}
    g = spmm_graph(6, 5, 16, 5)
    cg = tf.compile(g, target="interp", db=None, cost_model=None)
    spec = cg.kernels[0].spec
    by_name = {k: torch.as_tensor(np.asarray(v, dtype=np.int32 if k in ("indptr", "indices") else np.float32))
               for k, v in ins.items()}
    return spec, [by_name[b.name] for b in spec.inputs]


@pytest.mark.interp
def test_device_mode_checks_valid_structures_without_copying_them(sparse_check_mode, monkeypatch):
    sparse_check_mode("device")
    spec, ins = spec_and_inputs()
    seen = copies(monkeypatch)
    spec.check_inputs(ins)
    assert seen == []
    sparse_check_mode("host")
    spec.check_inputs(ins)
    assert len(seen) == 2  # indptr and indices


@pytest.mark.interp
@pytest.mark.parametrize(("change", "message"), BAD_CSR)
@pytest.mark.parametrize("how", ["device", "host"])
def test_bad_structures_get_the_host_message_in_both_modes(sparse_check_mode, how, change, message):
    sparse_check_mode(how)
    spec, ins = spec_and_inputs(change)
    with pytest.raises(SparseStructureError, match=message):
        spec.check_inputs(ins)


@pytest.mark.interp
def test_off_trusts_the_caller(sparse_check_mode):
    sparse_check_mode("off")
    spec, ins = spec_and_inputs(BAD_CSR[3][0])
    spec.check_inputs(ins)  # no check, no error: the production switch for structures known to be valid


@pytest.mark.interp
def test_device_mode_2to4_meta(sparse_check_mode):
    sparse_check_mode("device")
    g = tf.GraphBuilder("s24")
    sp = tf.sparse_24(g.input("values", (4, 8), "f32"), g.input("meta", (4, 8), "u8"))
    g.output("c", tf.spmm(sp, g.input("b", (16, 4), "f32")))
    cg = tf.compile(g.build(), target="interp", db=None, cost_model=None)
    _, vals, meta = prune_2to4(np.random.default_rng(0).standard_normal((4, 16)))
    spec = cg.kernels[0].spec
    arrays = {"values": torch.as_tensor(vals, dtype=torch.float32), "meta": torch.as_tensor(meta),
              "b": torch.zeros(16, 4)}
    spec.check_inputs([arrays[b.name] for b in spec.inputs])
    arrays["meta"][1, 5] = arrays["meta"][1, 4]
    with pytest.raises(SparseStructureError, match=r"row 1 group 2 names column \d twice"):
        spec.check_inputs([arrays[b.name] for b in spec.inputs])
    arrays["meta"][1, 5] = 7
    with pytest.raises(SparseStructureError, match=r"meta values span 0..7; accepted 0..3"):
        spec.check_inputs([arrays[b.name] for b in spec.inputs])


def test_an_unknown_mode_is_a_settings_error(sparse_check_mode):
    with pytest.raises(SettingsError, match=r"CHECK='sometimes' is invalid; accepted: device, host, off"):
        sparse_check_mode("sometimes")
