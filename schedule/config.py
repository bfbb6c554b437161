"""Configs: frozen mappings of knob name -> JSON scalar, with a canonical JSON key."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Union
from collections.abc import Iterator, Mapping
from ..errors import TilefuseError
from ..ir.dims import jsonable

JSONScalar = Union[bool, int, float, str, None]


class ConfigError(TilefuseError, ValueError):
    """A config value that is not a JSON scalar, or a knob the kernel does not have."""


class Config(Mapping[str, JSONScalar]):
    """An immutable, hashable schedule choice: every tile size, warp and stage count."""

    __slots__ = ("_items",)

    def __init__(self, values: Mapping[str, Any] | None = None, **kw: Any):
        d = dict(values or {}, **kw)
        for k, v in d.items():
            if not isinstance(k, str):
                raise ConfigError(f"config knob names must be strings, got {k!r}")
            if not (v is None or isinstance(v, (bool, int, float, str))):
                raise ConfigError(f"config knob {k}={v!r}: values must be JSON scalars")
        self._items: tuple[tuple[str, JSONScalar], ...] = tuple(sorted(d.items()))

    def __getitem__(self, k: str) -> JSONScalar:
        for name, v in self._items:
            if name == k:
                return v
        raise KeyError(k)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self._items == other._items

    def __repr__(self) -> str:
        return f"Config({self.to_json()})"

    def int(self, k: str) -> int:
        v = self[k]
        if not isinstance(v, int) or isinstance(v, bool):
            raise ConfigError(f"config knob {k} must be an integer, got {v!r}")
        return v

    def replace(self, **kw: Any) -> Config:
        return Config({**dict(self._items), **kw})

    def to_json(self) -> str:
        return canonical_json(dict(self._items))

    @staticmethod
    def from_json(s: str) -> Config:
        return Config(json.loads(s))

    @property
    def key(self) -> str:
        return sha256_json(dict(self._items))


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the one serialisation used for identity (a dynamic size
    is the string "dyn:<expression>", never the value it is bound to now)."""
    return json.dumps(jsonable(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def sha256_json(obj: Any) -> str:
    """sha256 of the canonical JSON of `obj`."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()
