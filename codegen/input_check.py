"""Checking the arrays a compiled graph is called with, before anything converts them.

numpy converts almost anything: a list of strings parses as numbers, a complex array drops its
imaginary part with a warning, None becomes an object array. So every input's kind (numpy array or
torch tensor), element kind and shape is checked here first; the executors then only convert inputs
that passed. Accepted element kinds per graph dtype:

  float inputs (f64 ... f8):  float, integer or bool elements (integers and bools convert exactly)
  integer inputs (packed too): integer or bool elements (floats would be truncated silently)
  bool inputs:                 bool or integer elements (nonzero is true, as in numpy)

On the Triton targets a torch tensor must already have the exact torch dtype of its input (no copy
is made to convert it); numpy arrays are converted as above."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..errors import TilefuseError
from ..ir import dtypes as dt
from ..ir.dims import resolve


class InputError(TilefuseError):
    """A compiled graph called with inputs it cannot take: names the input, what it expects and what it got."""


class InputTypeError(InputError, TypeError):
    """An input of the wrong kind (not an array), element kind or dtype; or unknown, missing or repeated names."""


class InputValueError(InputError, ValueError):
    """An input array of the wrong shape."""


_KIND_NAMES = {"f": "float", "i": "integer", "u": "integer", "b": "bool", "c": "complex", "U": "string",
               "S": "bytes", "O": "Python object", "M": "datetime", "m": "timedelta", "V": "structured"}


def _accepted_kinds(d: dt.DType) -> str:
    """numpy kind letters that convert to `d` without losing meaning (see the module docstring)."""
    return "fiub" if d.is_float else "iub"


def _describe_accepted(d: dt.DType) -> str:
    elements = "float, integer or bool" if d.is_float else "integer or bool"
    return f"{elements} elements for dtype {d.name}"


def _torch_tensor_type() -> Any:
    """torch.Tensor if torch is already imported (an input cannot be a tensor otherwise), else None."""
    torch = sys.modules.get("torch")
    return getattr(torch, "Tensor", None)


def _element_kind(x: Any, tensor_type: Any) -> tuple[str, str]:
    """(numpy kind letter, dtype spelling) of an ndarray, numpy scalar or torch tensor."""
    if tensor_type is not None and isinstance(x, tensor_type):
        t = x.dtype
        if t.is_complex:
            return "c", str(t)
        if t.is_floating_point:
            return "f", str(t)
        if str(t) == "torch.bool":
            return "b", str(t)
        return ("u" if str(t).startswith("torch.uint") else "i"), str(t)
    d = x.dtype
    if d.kind == "V" and getattr(d.type, "__module__", "") == "ml_dtypes":  # bfloat16, float8_*, int4
        return ("f" if "float" in d.name else "i"), d.name
    return d.kind, str(d)


def _kind_of(x: Any, tensor_type: Any) -> str | None:
    """'array' or 'tensor' for an accepted container, None for anything else."""
    if isinstance(x, (np.ndarray, np.generic)):
        return "array"
    if tensor_type is not None and isinstance(x, tensor_type):
        return "tensor"
    return None


def check_input(name: str, x: Any, d: dt.DType, shape: tuple[int, ...] | None, backend: str) -> None:
    """Raise InputTypeError/InputValueError unless `x` is an array or tensor whose elements convert to
    `d` (see the module docstring) and whose shape is `shape` (not checked when None); `backend` is
    "tvm" or "triton"."""
    tensor_type = _torch_tensor_type()
    kind = _kind_of(x, tensor_type)
    if kind is None:
        given = "None" if x is None else f"a {type(x).__module__}.{type(x).__qualname__}".replace("builtins.", "")
        what = "" if shape is None else f" and shape {list(shape)}"
        raise InputTypeError(f"input {name}: expected a numpy array or torch tensor of dtype {d.name}{what}, "
                             f"got {given}")
    letter, spelled = _element_kind(x, tensor_type)
    if letter not in _accepted_kinds(d):
        what = _KIND_NAMES.get(letter, spelled)
        raise InputTypeError(f"input {name}: expected {_describe_accepted(d)}, got a {spelled} {kind} "
                             f"({what} elements)")
    if kind == "tensor" and backend == "triton":
        want = dt.to_torch(d)
        if x.dtype != want:
            raise InputTypeError(f"input {name}: expected a {want} tensor for dtype {d.name}, got a {x.dtype} "
                                 "tensor (convert it with .to(...) first)")
    if shape is not None and tuple(x.shape) != tuple(shape):
        raise InputValueError(f"input {name}: expected shape {list(shape)}, got {list(x.shape)}")


def check_names(graph_name: str, expected: Iterable[str], given: Iterable[str]) -> None:
    """Raise InputTypeError naming every input that is missing from `given` and every name that is not an input."""
    want = list(expected)
    names = list(given)
    unknown = [n for n in names if n not in want]
    if unknown:
        raise InputTypeError(f"{graph_name}: unknown inputs {unknown}; its inputs are {want}")
    missing = [n for n in want if n not in names]
    if missing:
        raise InputTypeError(f"{graph_name}: missing inputs {missing}; its inputs are {want}")


def check_inputs(graph: Any, backend: str, inputs: Mapping[str, Any]) -> dict[str, int]:
    """Check every input of `graph` in `inputs` (names, kinds, element kinds, shapes) before conversion;
    returns the value of each dynamic size, read from the shapes (ir/graph.py Graph.sizes_of: in range,
    the same in every input that has it; DynamicSizeError naming the parameter and inputs otherwise)."""
    check_names(graph.name, (n.attr("name") for n in graph.inputs), inputs)
    if not graph.is_dynamic:
        for n in graph.inputs:
            check_input(n.attr("name"), inputs[n.attr("name")], n.dtype, n.shape, backend)
        return {}
    for n in graph.inputs:
        check_input(n.attr("name"), inputs[n.attr("name")], n.dtype, None, backend)
    sizes = graph.sizes_of({n.attr("name"): tuple(inputs[n.attr("name")].shape) for n in graph.inputs})
    for n in graph.inputs:
        x = inputs[n.attr("name")]
        want = resolve(tuple(n.shape), sizes)
        if tuple(x.shape) != want:
            bound = ", ".join(f"{k}={v}" for k, v in sizes.items())
            raise InputValueError(f"input {n.attr('name')}: expected shape {list(n.shape)} = {list(want)} "
                                  f"({bound}), got {list(x.shape)}")
    return sizes
