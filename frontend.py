"""The friendly graph builder: `g.input(...)`, operators on tensors, `tf.silu(x @ w + b)`."""

from __future__ import annotations

from typing import Any, Union
from collections.abc import Sequence

from .ir import dims
from .ir import dtypes as dt
from .ir import expr as ex
from .ir.expr import E, Expr
from .ir.graph import Graph
from .ir.ops import Node, Op, VerifyError, make

Scalar = Union[bool, int, float]


class Tensor:
    """A value in a graph under construction; operators build pointwise nodes."""

    __slots__ = ("node",)

    def __init__(self, node: Node):
        self.node = node

    @property
    def shape(self) -> tuple[int, ...]:
        return self.node.shape

    @property
    def dtype(self) -> dt.DType:
        return self.node.dtype

    @property
    def ndim(self) -> int:
        return self.node.ndim

    def __repr__(self) -> str:
        return f"Tensor({self.dtype}{list(self.shape)})"

    def __add__(self, o: TensorLike) -> Tensor:
        return _binary(E.ADD, self, o)

    def __radd__(self, o: TensorLike) -> Tensor:
        return _binary(E.ADD, o, self)

    def __sub__(self, o: TensorLike) -> Tensor:
        return _binary(E.SUB, self, o)

    def __rsub__(self, o: TensorLike) -> Tensor:
        return _binary(E.SUB, o, self)

    def __mul__(self, o: TensorLike) -> Tensor:
        return _binary(E.MUL, self, o)

    def __rmul__(self, o: TensorLike) -> Tensor:
        return _binary(E.MUL, o, self)

    def __truediv__(self, o: TensorLike) -> Tensor:
        return _binary(E.DIV, self, o)

    def __rtruediv__(self, o: TensorLike) -> Tensor:
        return _binary(E.DIV, o, self)

    def __neg__(self) -> Tensor:
        return apply(lambda a: -a, self)

    def __matmul__(self, o: Tensor) -> Tensor:
        return matmul(self, o)

    def to(self, d: dt.DType | str) -> Tensor:
        return cast(self, d)

    @property
    def T(self) -> Tensor:  # noqa: N802 - numpy spelling
        return permute(self, tuple(range(self.ndim - 2)) + (self.ndim - 1, self.ndim - 2))


TensorLike = Union[Tensor, Scalar]


def apply(fn: Any, *xs: TensorLike) -> Tensor:
    """A pointwise op from a Python function over scalar Exprs (`apply(lambda a, b: a*b+1, x, y)`)."""
    tensors = [x for x in xs if isinstance(x, Tensor)]
    if not tensors:
        raise VerifyError("pointwise: at least one operand must be a Tensor")
    nodes: list[Node] = []
    args: list[Any] = []
    for x in xs:
        if isinstance(x, Tensor):
            if x.node not in nodes:
                nodes.append(x.node)
            args.append(ex.arg(nodes.index(x.node), x.dtype))
        else:
            args.append(x)
    e = fn(*args)
    if not isinstance(e, Expr):
        raise VerifyError(f"pointwise: function returned {type(e).__name__}, not an expression")
    return Tensor(make(Op.POINTWISE, nodes, expr=e))


def _binary(op: E, a: TensorLike, b: TensorLike) -> Tensor:
    return apply(lambda x, y: ex.binary(op, x, y), a, b)


def cast(x: Tensor, d: dt.DType | str) -> Tensor:
    d = dt.dtype(d)
    return x if x.dtype == d else apply(lambda a: ex.cast(a, d), x)


def _unary(fn: Any) -> Any:
    def f(x: Tensor) -> Tensor:
        return apply(fn, x)

    f.__doc__ = f"Elementwise {getattr(fn, '__name__', 'op')}."
    return f


exp = _unary(ex.exp)
exp2 = _unary(ex.exp2)
log = _unary(ex.log)
log1p = _unary(ex.log1p)
sqrt = _unary(ex.sqrt)
rsqrt = _unary(ex.rsqrt)
tanh = _unary(ex.tanh)
sigmoid = _unary(ex.sigmoid)
sin = _unary(ex.sin)
cos = _unary(ex.cos)
abs = _unary(ex.abs_)  # noqa: A001 - mirrors numpy
silu = _unary(ex.silu)
gelu = _unary(ex.gelu)
relu = _unary(ex.relu)


def maximum(a: TensorLike, b: TensorLike) -> Tensor:
    return _binary(E.MAX, a, b)


def minimum(a: TensorLike, b: TensorLike) -> Tensor:
    return _binary(E.MIN, a, b)


def where(c: Tensor, a: TensorLike, b: TensorLike) -> Tensor:
    return apply(ex.where, c, a, b)


def reduce(x: Tensor, op: str, axis: int | Sequence[int] = -1, keepdim: bool = False) -> Tensor:
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return Tensor(make(Op.REDUCE, [x.node], op=op, axes=axes, keepdim=keepdim))


def sum(x: Tensor, axis: int | Sequence[int] = -1, keepdim: bool = False) -> Tensor:  # noqa: A001
    return reduce(x, "sum", axis, keepdim)


def max(x: Tensor, axis: int | Sequence[int] = -1, keepdim: bool = False) -> Tensor:  # noqa: A001
    return reduce(x, "max", axis, keepdim)


def min(x: Tensor, axis: int | Sequence[int] = -1, keepdim: bool = False) -> Tensor:  # noqa: A001
    return reduce(x, "min", axis, keepdim)


def mean(x: Tensor, axis: int | Sequence[int] = -1, keepdim: bool = False) -> Tensor:
    return reduce(x, "mean", axis, keepdim)


def reshape(x: Tensor, shape: Sequence[int]) -> Tensor:
    return Tensor(make(Op.RESHAPE, [x.node], shape=tuple(shape)))


def permute(x: Tensor, perm: Sequence[int]) -> Tensor:
    return Tensor(make(Op.PERMUTE, [x.node], perm=tuple(perm)))


def expand(x: Tensor, shape: Sequence[int]) -> Tensor:
    return Tensor(make(Op.EXPAND, [x.node], shape=tuple(shape)))


def slice_(x: Tensor, starts: Sequence[int], stops: Sequence[int], steps: Sequence[int] | None = None) -> Tensor:
    steps = tuple(steps) if steps is not None else (1,) * len(starts)
    return Tensor(make(Op.SLICE, [x.node], starts=tuple(starts), stops=tuple(stops), steps=steps))


def matmul(a: Tensor, b: Tensor, trans_a: bool = False, trans_b: bool = False,
           out_dtype: dt.DType | str | None = None) -> Tensor:
    """a @ b with f32 accumulation; the result is out_dtype (default: the promoted input dtype)."""
    kw: dict[str, Any] = {"trans_a": trans_a, "trans_b": trans_b}
    if out_dtype is not None:
        kw["out_dtype"] = dt.dtype(out_dtype)
    return Tensor(make(Op.MATMUL, [a.node, b.node], **kw))


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """exp(x - max) / sum(exp(x - max)), computed in f32 and cast back to x's dtype."""
    xf = cast(x, "f32")
    m = max(xf, axis, keepdim=True)
    e = exp(xf - m)
    return cast(e / sum(e, axis, keepdim=True), x.dtype)


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """x * rsqrt(mean(x^2) + eps) * weight, in f32, cast back to x's dtype."""
    xf = cast(x, "f32")
    r = rsqrt(mean(xf * xf, -1, keepdim=True) + eps)
    return cast(xf * r * cast(weight, "f32"), x.dtype)


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """(x - mean) * rsqrt(var + eps) * weight + bias, in f32, cast back to x's dtype."""
    xf = cast(x, "f32")
    mu = mean(xf, -1, keepdim=True)
    d = xf - mu
    r = rsqrt(mean(d * d, -1, keepdim=True) + eps)
    return cast(d * r * cast(weight, "f32") + cast(bias, "f32"), x.dtype)


class GraphBuilder:
    """Collects inputs and outputs: `g = GraphBuilder("mlp"); x = g.input("x", (M, K), "f16")`."""

    def __init__(self, name: str = "graph"):
        self.name = name
        self._inputs: list[Node] = []
        self._outputs: list[tuple[str, Node]] = []

    def dyn(self, name: str, lo: int, hi: int, hint: int | None = None) -> Any:
        """A dynamic size parameter (the text form's `name=dyn[lo..hi, hint=h]`): any value in lo..hi,
        bound at each call from the input shapes that use it. Use it in shapes like an int."""
        if not name.isidentifier():
            raise VerifyError(f"graph {self.name}: dynamic parameter name {name!r} is not an identifier")
        for v, what in ((lo, "lo"), (hi, "hi"), (hint, "hint")):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise VerifyError(f"graph {self.name}: dynamic parameter {name}: {what} must be an integer, "
                                  f"got {v!r}")
        return dims.param(dims.DynParam(name, lo, hi, hint))

    def input(self, name: str, shape: Sequence[int], dtype: dt.DType | str = "f32") -> Tensor:
        n = make(Op.INPUT, (), name=name, dtype=dt.dtype(dtype), shape=tuple(shape))
        if any(i.attr("name") == name for i in self._inputs):
            raise VerifyError(f"graph {self.name}: input {name!r} declared twice")
        self._inputs.append(n)
        return Tensor(n)

    def output(self, name: str, t: Tensor) -> None:
        self._outputs.append((name, t.node))

    def build(self) -> Graph:
        return Graph(self.name, tuple(self._outputs), tuple(self._inputs))
