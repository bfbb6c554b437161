"""The Python API rejects inputs it cannot take before converting them (issue "hardening", item 8).

Each case expects the specific error type, which is both a TilefuseError (the CLI prints one line) and
the exception Python convention asks for: InputTypeError is a TypeError (wrong kind, element kind or
dtype; unknown, missing or repeated names, as for a function call), InputValueError a ValueError (a wrong
shape), CompileOptionError a TypeError (unknown keyword arguments)."""

from __future__ import annotations

import numpy as np
import pytest

import tilefuse as tf
from tilefuse.codegen.input_check import InputTypeError, InputValueError, check_input
from tilefuse.compiler import CompileOptionError
from tilefuse.errors import TilefuseError
from tilefuse.ir import dtypes as dt
from tilefuse.ir.reference import evaluate

SHAPE = (4, 8)


def _graph() -> tf.Graph:
    g = tf.GraphBuilder("scaled")
    x = g.input("x", SHAPE, "f32")
    n = g.input("n", SHAPE, "i32")
    g.output("y", x * tf.cast(n, "f32"))
    return g.build()


@pytest.fixture(scope="module")
def cg():
    return tf.compile(_graph(), target="cpu", db=None, cost_model=None)


def _x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)


def _n() -> np.ndarray:
    return np.random.default_rng(1).integers(-5, 5, SHAPE).astype(np.int32)


def test_valid_inputs_still_run_and_integers_convert_to_float_inputs(cg):
    x = np.arange(32, dtype=np.int64).reshape(SHAPE)  # integer elements into an f32 input: exact
    got = cg(x, _n())
    ref = evaluate(cg.graph, {"x": x.astype(np.float32), "n": _n()})["y"]
    np.testing.assert_allclose(got, ref, rtol=1e-6)


@pytest.mark.parametrize("value, given", [([[1.0] * 8] * 4, "got a list"), (None, "got None"),
                                          (3.5, "got a float"), ("x", "got a str")])
def test_non_arrays_are_named_with_their_kind(cg, value, given):
    with pytest.raises(InputTypeError) as err:
        cg(value, _n())
    msg = str(err.value)
    assert msg.startswith("input x: expected a numpy array or torch tensor of dtype f32 and shape [4, 8]")
    assert msg.endswith(given)
    assert isinstance(err.value, TilefuseError) and isinstance(err.value, TypeError)


@pytest.mark.parametrize("array, kind", [(np.full(SHAPE, "1.5"), "<U3 array (string elements)"),
                                         (np.full(SHAPE, b"2"), "|S1 array (bytes elements)"),
                                         (np.full(SHAPE, 1 + 2j), "complex128 array (complex elements)"),
                                         (np.full(SHAPE, None), "object array (Python object elements)")])
def test_strings_complex_and_objects_are_not_converted(cg, array, kind):
    with pytest.raises(InputTypeError, match="^input x: expected float, integer or bool elements for dtype f32, "
                                             f"got a {kind.replace('(', '[(]').replace(')', '[)]')}$"):
        cg(x=array, n=_n())


def test_floats_are_not_truncated_into_integer_inputs(cg):
    with pytest.raises(InputTypeError, match="^input n: expected integer or bool elements for dtype i32, got a "
                                             "float64 array"):
        cg(_x(), _n() + 0.5)


def test_wrong_shape_names_both_shapes(cg):
    with pytest.raises(InputValueError, match=r"^input x: expected shape \[4, 8\], got \[8, 4\]$") as err:
        cg(_x().T.copy(), _n())
    assert isinstance(err.value, ValueError)


def test_unknown_keyword_inputs_are_an_error(cg):
    with pytest.raises(InputTypeError, match=r"^scaled: unknown inputs \['bias', 'z'\]; its inputs are \['x', 'n'\]$"):
        cg(_x(), _n(), bias=_x(), z=_x())


def test_missing_repeated_and_extra_inputs(cg):
    with pytest.raises(InputTypeError, match=r"^scaled: missing inputs \['n'\]"):
        cg(_x())
    with pytest.raises(InputTypeError, match="input 'x' given twice"):
        cg(_x(), _n(), x=_x())
    with pytest.raises(InputTypeError, match=r"takes 2 inputs \(\['x', 'n'\]\), got 3"):
        cg(_x(), _n(), _x())
    with pytest.raises(InputTypeError, match=r"unknown inputs \['y'\]"):
        cg.run({"x": _x(), "n": _n(), "y": _x()})


def test_compile_names_every_unknown_keyword():
    with pytest.raises(CompileOptionError) as err:
        tf.compile(_graph(), target="cpu", db=None, cost_modle=None, autotune=True)
    assert str(err.value) == ("compile: unknown keyword arguments autotune, cost_modle; accepted: target, "
                              "configs, aot, db, cost_model, constants, buckets")
    assert isinstance(err.value, TypeError) and isinstance(err.value, TilefuseError)


def test_torch_tensors_are_checked_by_kind_and_exact_dtype_on_triton():
    torch = pytest.importorskip("torch")
    ok = torch.zeros(SHAPE, dtype=torch.float16)
    check_input("q", ok, dt.f16, SHAPE, "triton")
    with pytest.raises(InputTypeError, match=r"^input q: expected a torch.float16 tensor for dtype f16, got a "
                                             r"torch.float32 tensor"):
        check_input("q", ok.float(), dt.f16, SHAPE, "triton")
    check_input("q", ok.float(), dt.f16, SHAPE, "tvm")  # the CPU path converts through numpy
    with pytest.raises(InputTypeError, match="got a torch.complex64 tensor [(]complex elements[)]$"):
        check_input("q", torch.zeros(SHAPE, dtype=torch.complex64), dt.f16, SHAPE, "tvm")


def test_ml_dtypes_arrays_count_as_floats():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    check_input("w", np.zeros(SHAPE, dtype=ml_dtypes.bfloat16), dt.bf16, SHAPE, "tvm")
    with pytest.raises(InputTypeError, match="got a bfloat16 array [(]float elements[)]$"):
        check_input("w", np.zeros(SHAPE, dtype=ml_dtypes.bfloat16), dt.i8, SHAPE, "tvm")


def test_configs_for_a_kernel_the_graph_does_not_have_are_refused():
    """A misspelt kernel name in configs= used to leave that kernel on its default without a word."""
    from tilefuse.compiler import CompileOptionError
    from tilefuse.schedule.config import Config

    g = tf.GraphBuilder("cfg_names")
    x = g.input("x", (4, 8), "f32")
    g.output("y", tf.exp(x))
    with pytest.raises(CompileOptionError, match=r"configs= names kernel k9_nope, which cfg_names does not "
                                                 r"have; its kernels: k0_exp"):
        tf.compile(g, target="cpu", configs={"k9_nope": Config(parallel_rows=1)})
