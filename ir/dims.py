"""Dynamic sizes: graph parameters declared `T=dyn[1..8192]` (or `T=dyn[1..8192, hint=512]`) and the
size expressions over them.

A `Sym` is an int whose value is the size at the current binding of its parameters (the "probe": the
hint in a freshly parsed graph, a bucket's representative while compiling, the actual size while the
reference runs), so code that only needs a representative number (cost estimates, default configs,
numpy allocations) keeps working unchanged. It also carries its expression: +, - and * of sizes stay
symbolic (sums of products with integer coefficients in one canonical order, so T*H == H*T), and so
do // and % (opaque terms unless they divide exactly). Comparisons and every other operation see the
probe value: a decision taken that way depends on the value, which is why the compiler renders each
dynamic kernel at both ends of the range and refuses one whose code differs (compiler_dynamic.py).

Equality is symbolic: a Sym equals a Sym with the same expression, parameters and binding, and never a
plain int (T is not known to be 16 even while it is 16), so shape checks ask "the same size for every
value?". `str()` and f-strings give the expression (Python syntax), `int()` the probe value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard, Union

from ..errors import TilefuseError

Atom = Union[str, tuple]  # a parameter name, or (op, poly, poly) for "//" and "%"
Mono = tuple  # sorted atoms (a repeated atom is a power)
Poly = tuple  # ((mono, coefficient), ...) sorted, no zero coefficients


class DynamicSizeError(TilefuseError, ValueError):
    """A dynamic size outside its declared range, bound inconsistently, or used where a static one is needed."""


@dataclass(frozen=True)
class DynParam:
    """A dynamic graph parameter: any value in lo..hi; `hint` is the typical value (None: lo)."""

    name: str
    lo: int
    hi: int
    hint: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.lo, int) and isinstance(self.hi, int)) or not 1 <= self.lo <= self.hi:
            raise DynamicSizeError(f"dynamic parameter {self.name}: range {self.lo}..{self.hi} is not "
                                   "1 <= lo <= hi")
        if self.hint is not None and not self.lo <= self.hint <= self.hi:
            raise DynamicSizeError(f"dynamic parameter {self.name}: hint {self.hint} is outside its range "
                                   f"{self.lo}..{self.hi}")

    @property
    def probe(self) -> int:
        """The value a freshly declared parameter stands at."""
        return self.lo if self.hint is None else self.hint

    def text(self) -> str:
        """The declaration's text form: `dyn[1..8192]` or `dyn[1..8192, hint=512]`."""
        hint = "" if self.hint is None else f", hint={self.hint}"
        return f"dyn[{self.lo}..{self.hi}{hint}]"

    def check(self, value: int, where: str = "") -> int:
        """`value` if it is in range, else a DynamicSizeError naming the parameter, range and value."""
        if not self.lo <= value <= self.hi:
            at = f" ({where})" if where else ""
            raise DynamicSizeError(f"dynamic size {self.name}={value}{at} is outside its declared range "
                                   f"{self.lo}..{self.hi}")
        return value


# ---- polynomials ---------------------------------------------------------------------------
def _atom_text(a: Atom) -> str:
    return a if isinstance(a, str) else f"({poly_text(a[1])} {a[0]} {poly_text(a[2])})"


def _mono_text(m: Mono) -> str:
    return "*".join(_atom_text(a) for a in m)


def _norm(terms: Mapping[Mono, int]) -> Poly:
    items = [(m, c) for m, c in terms.items() if c]
    # Higher degree first, then by text; the constant last.
    return tuple(sorted(items, key=lambda mc: (-len(mc[0]), _mono_text(mc[0]))))


def _const(c: int) -> Poly:
    return _norm({(): c})


def _add(a: Poly, b: Poly) -> Poly:
    out = dict(a)
    for m, c in b:
        out[m] = out.get(m, 0) + c
    return _norm(out)


def _mul(a: Poly, b: Poly) -> Poly:
    out: dict[Mono, int] = {}
    for ma, ca in a:
        for mb, cb in b:
            m = tuple(sorted(ma + mb, key=_atom_text))
            out[m] = out.get(m, 0) + ca * cb
    return _norm(out)


def poly_text(p: Poly) -> str:
    """Python text of a polynomial: `T*4096`, `2*T + 1` (negative terms as `+ -3*T`)."""
    if not p:
        return "0"
    parts = []
    for m, c in p:
        if not m:
            parts.append(str(c))
        else:
            parts.append(_mono_text(m) if c == 1 else f"{c}*{_mono_text(m)}")
    return " + ".join(parts)


def _eval_atom(a: Atom, env: Mapping[str, int]) -> int:
    if isinstance(a, str):
        return int(env[a])
    x, y = _eval(a[1], env), _eval(a[2], env)
    return x // y if a[0] == "//" else x % y


def _eval(p: Poly, env: Mapping[str, int]) -> int:
    total = 0
    for m, c in p:
        v = c
        for a in m:
            v *= _eval_atom(a, env)
        total += v
    return total


def _names(p: Poly) -> set[str]:
    out: set[str] = set()
    for m, _ in p:
        for a in m:
            out |= {a} if isinstance(a, str) else _names(a[1]) | _names(a[2])
    return out


def is_polynomial(p: Poly) -> bool:
    """Whether `p` uses only +, - and * (no // or % terms): what the text form can write."""
    return all(isinstance(a, str) for m, _ in p for a in m)


# ---- Sym ----------------------------------------------------------------------------------------
class Sym(int):
    """A size expression over dynamic parameters whose int value is the current probe (module docstring)."""

    poly: Poly
    params: tuple[DynParam, ...]
    env: tuple[tuple[str, int], ...]

    def __new__(cls, poly: Poly, params: tuple[DynParam, ...], env: tuple[tuple[str, int], ...]) -> Sym:
        self = int.__new__(cls, _eval(poly, dict(env)))
        self.poly, self.params, self.env = poly, params, env
        return self

    def __reduce__(self) -> Any:
        return (Sym, (self.poly, self.params, self.env))

    # -- identity and text --
    def _ident(self) -> tuple[Any, ...]:
        return (self.poly, self.params, self.env)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sym):
            return self._ident() == other._ident()
        return False if isinstance(other, int) else NotImplemented

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self) -> int:
        return hash(self._ident())

    def __str__(self) -> str:
        return poly_text(self.poly)

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        # f-strings build code (Triton source): a compound expression is parenthesised, so `rows // {n}`
        # stays right when n is 4*T
        if spec:
            return format(int(self), spec)
        atomic = len(self.poly) == 1 and self.poly[0][1] == 1 and len(self.poly[0][0]) == 1
        return str(self) if atomic else f"({self!s})"

    @property
    def names(self) -> tuple[str, ...]:
        """The parameters the expression reads, sorted."""
        return tuple(p.name for p in self.params)

    # -- arithmetic that stays symbolic --
    def __add__(self, o: Any) -> Any:
        return _combine(self, o, _add)

    __radd__ = __add__

    def __sub__(self, o: Any) -> Any:
        return _combine(self, o, lambda a, b: _add(a, _mul(b, _const(-1))))

    def __rsub__(self, o: Any) -> Any:
        return _combine(self, o, lambda a, b: _add(b, _mul(a, _const(-1))))

    def __mul__(self, o: Any) -> Any:
        return _combine(self, o, _mul)

    __rmul__ = __mul__

    def __neg__(self) -> Any:
        return _make(_mul(self.poly, _const(-1)), self.params, self.env)

    def __pos__(self) -> Any:
        return self

    def __floordiv__(self, o: Any) -> Any:
        return _combine(self, o, lambda a, b: _divide("//", a, b))

    def __rfloordiv__(self, o: Any) -> Any:
        return _combine(self, o, lambda a, b: _divide("//", b, a))

    def __mod__(self, o: Any) -> Any:
        return _combine(self, o, lambda a, b: _divide("%", a, b))

    def __rmod__(self, o: Any) -> Any:
        return _combine(self, o, lambda a, b: _divide("%", b, a))


def _divide(op: str, a: Poly, b: Poly) -> Poly:
    if not _names(a) and not _names(b) and _eval(b, {}):
        x, y = _eval(a, {}), _eval(b, {})
        return _const(x // y if op == "//" else x % y)
    if len(b) == 1 and not b[0][0] and b[0][1] > 0:  # by a positive constant
        d = b[0][1]
        if all(c % d == 0 for _, c in a):
            return _mul(a, _const(1)) if op == "//" and d == 1 else \
                (_norm({m: c // d for m, c in a}) if op == "//" else ())
    if a == b and op == "%":
        return ()
    if a == b:
        return _const(1)
    return _norm({((op, a, b),): 1})


def _parts(x: Any) -> tuple[Poly, tuple[DynParam, ...], tuple[tuple[str, int], ...]] | None:
    if isinstance(x, Sym):
        return x.poly, x.params, x.env
    if isinstance(x, int) and not isinstance(x, bool):
        return _const(int(x)), (), ()
    return None


def _merge(a: tuple[Any, ...], b: tuple[Any, ...], what: str) -> tuple[Any, ...]:
    out = dict(a)
    for k, v in b:
        if k in out and out[k] != v:
            raise DynamicSizeError(f"dynamic parameter {k} has two different {what} in one expression: {out[k]} "
                                   f"and {v}")
        out[k] = v
    return tuple(sorted(out.items()))


def _combine(x: Sym, o: Any, fn: Any) -> Any:
    a, b = _parts(x), _parts(o)
    if a is None or b is None:
        return NotImplemented
    params = _merge(tuple((p.name, p) for p in a[1]), tuple((p.name, p) for p in b[1]), "declarations")
    env = _merge(a[2], b[2], "values")
    return _make(fn(a[0], b[0]), tuple(p for _, p in params), env)


def _make(poly: Poly, params: tuple[DynParam, ...], env: tuple[tuple[str, int], ...]) -> Any:
    """A Sym over the parameters `poly` reads, or the plain int when it reads none."""
    names = _names(poly)
    if not names:
        return _eval(poly, {})
    return Sym(poly, tuple(p for p in params if p.name in names), tuple(kv for kv in env if kv[0] in names))


# ---- public helpers -----------------------------------------------------------------------------
def param(p: DynParam, value: int | None = None) -> Sym:
    """The size expression that is the parameter `p` itself, bound to `value` (default: its probe)."""
    v = p.probe if value is None else value
    return Sym(((((p.name,), 1),)), (p,), ((p.name, v),))


def is_dynamic(x: Any) -> TypeGuard[Sym]:
    """Whether `x` is a size expression over dynamic parameters (a Sym)."""
    return isinstance(x, Sym)


def params_of(values: Iterable[Any]) -> dict[str, DynParam]:
    """name -> declaration of every dynamic parameter read by `values` (sizes, nested tuples)."""
    out: dict[str, DynParam] = {}
    for v in values:
        found: Iterable[DynParam]
        if isinstance(v, tuple):
            found = params_of(v).values()
        elif isinstance(v, Sym):
            found = v.params
        else:
            continue
        for p in found:
            if out.setdefault(p.name, p) != p:
                raise DynamicSizeError(f"dynamic parameter {p.name} is declared twice with different ranges: "
                                       f"{out[p.name].text()} and {p.text()}")
    return out


def resolve(x: Any, sizes: Mapping[str, int]) -> Any:
    """`x` (a size, or a tuple of them) with every dynamic size evaluated at `sizes` (plain ints)."""
    if isinstance(x, tuple):
        return tuple(resolve(v, sizes) for v in x)
    if isinstance(x, Sym):
        missing = [n for n in x.names if n not in sizes]
        if missing:
            raise DynamicSizeError(f"size {x} needs a value for {', '.join(missing)}")
        return _eval(x.poly, sizes)
    return x


def rebind(x: Any, sizes: Mapping[str, int]) -> Any:
    """`x` with every dynamic size re-bound: its probe becomes its value at `sizes` (a Sym still)."""
    if isinstance(x, tuple):
        return tuple(rebind(v, sizes) for v in x)
    if isinstance(x, Sym):
        env = tuple((k, int(sizes.get(k, v))) for k, v in x.env)
        return x if env == x.env else Sym(x.poly, x.params, env)
    return x


def _subst(p: Poly, sizes: Mapping[str, int]) -> Poly:
    out: Poly = ()
    for m, c in p:
        term = _const(c)
        for a in m:
            if isinstance(a, str):
                term = _mul(term, _const(int(sizes[a])) if a in sizes else _norm({(a,): 1}))
            else:
                term = _mul(term, _divide(a[0], _subst(a[1], sizes), _subst(a[2], sizes)))
        out = _add(out, term)
    return out


def freeze(x: Any, sizes: Mapping[str, int]) -> Any:
    """`x` with the dynamic parameters named in `sizes` made static (a plain int once it reads no other)."""
    if isinstance(x, tuple):
        return tuple(freeze(v, sizes) for v in x)
    if isinstance(x, Sym) and any(n in sizes for n in x.names):
        return _make(_subst(x.poly, sizes), x.params, x.env)
    return x


def upper(x: Any) -> int:
    """The value of a size at the top of every parameter's range (the size itself when static)."""
    if isinstance(x, Sym):
        return _eval(x.poly, {p.name: p.hi for p in x.params})
    return int(x)


def jsonable(obj: Any) -> Any:
    """`obj` (JSON data) with every dynamic size as the string "dyn:<expression>" (identity keys)."""
    if isinstance(obj, Sym):
        return "dyn:" + str(obj)
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    return obj
