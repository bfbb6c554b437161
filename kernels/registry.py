"""The kernel-family registry.

A family registers its spec class with the fusion-group kinds it lowers (`@register_family`), each
of its backend templates under (family, backend) (`register_template`) and the fusion rules of its
kinds (`register_fusion`: anchors, prologues, epilogues; passes/fusion_rules.py). A family's backends are
exactly the templates it registered, so no family can claim a backend it has no template for.
Templates are registered by module path and imported on first use: the TVM templates import TVM,
an optional heavy dependency that a GPU-only machine does not need.

Template modules export, per backend:
- "triton": `render(spec, config, interpret) -> str` (Triton source);
- "tvm": `build_module(spec, config) -> IRModule` and `schedule(module, spec, config) -> IRModule`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, TypeVar

from ..errors import LoweringError
from ..passes.fusion_rules import FusionRules, GroupRule

if TYPE_CHECKING:
    from .base import KernelSpec

S = TypeVar("S", bound="type[KernelSpec]")


@dataclass
class Family:
    """One registered family: the name stored in tuning records, its spec class, the fusion-group
    kinds it lowers, its templates (backend -> module path) and the fusion rules it declares."""

    name: str
    spec: type[KernelSpec]
    kinds: tuple[str, ...]
    templates: dict[str, str] = field(default_factory=dict)
    fusion: tuple[GroupRule, ...] = ()

    @property
    def backends(self) -> frozenset[str]:
        return frozenset(self.templates)


_FAMILIES: dict[str, Family] = {}
_BY_KIND: dict[str, Family] = {}


def register_family(*kinds: str):  # noqa: ANN201 - a class decorator that returns its argument
    """Class decorator: register a KernelSpec subclass (named by its `family`) for fusion-group `kinds`."""

    def deco(cls: S) -> S:
        name = cls.family
        if name in _FAMILIES and _FAMILIES[name].spec is not cls:
            raise ValueError(f"kernel family {name!r} is registered twice ({_FAMILIES[name].spec.__name__}, "
                             f"{cls.__name__})")
        for kind in kinds:
            if kind in _BY_KIND and _BY_KIND[kind].name != name:
                raise ValueError(f"fusion-group kind {kind!r} is claimed by families {_BY_KIND[kind].name!r} "
                                 f"and {name!r}")
        fam = _FAMILIES.get(name) or Family(name, cls, tuple(kinds))
        _FAMILIES[name] = fam
        for kind in kinds:
            _BY_KIND[kind] = fam
        return cls

    return deco


def register_template(family: str, backend: str, module: str) -> None:
    """Register `module` (a dotted path, imported on first use) as `family`'s template for `backend`."""
    if family not in _FAMILIES:
        raise ValueError(f"template {module} registered for unknown kernel family {family!r}; register the "
                         "family's spec first")
    _FAMILIES[family].templates[backend] = module


def register_fusion(family: str, *rules: GroupRule) -> None:
    """Declare fusion rules for `family`. A rule for a kind the family does not lower may only extend
    another family's groups (no anchors or openers of its own) by prologues and epilogues that turn the
    group into a kind this family lowers (`becomes`), so fusion never forms a group that nobody lowers."""
    if family not in _FAMILIES:
        raise ValueError(f"fusion rules registered for unknown kernel family {family!r}; register the "
                         "family's spec first")
    fam = _FAMILIES[family]
    for r in rules:
        if r.kind in fam.kinds:
            continue
        targets = {x.becomes for x in r.prologues + r.epilogues}
        if r.anchors or r.opens or not targets or not targets <= set(fam.kinds):
            raise ValueError(f"kernel family {family!r} declares fusion rules for group kind {r.kind!r}, which "
                             f"it does not lower (its kinds: {', '.join(fam.kinds)}); an extension of another "
                             "family's groups must turn them into one of its kinds (`becomes`)")
    fam.fusion += rules


def fusion_rules() -> FusionRules:
    """The fusion rules every registered family declares, merged by group kind (registration order)."""
    return FusionRules.of(r for fam in _FAMILIES.values() for r in fam.fusion)


def families() -> dict[str, Family]:
    """Every registered family by name."""
    return dict(_FAMILIES)


def family(name: str) -> Family:
    """The family registered as `name` (the string stored in tuning records)."""
    if name not in _FAMILIES:
        raise LoweringError(f"no kernel family {name!r} (registered: {', '.join(sorted(_FAMILIES))})")
    return _FAMILIES[name]


def family_for_kind(kind: str) -> Family | None:
    """The family that lowers fusion groups of `kind`, or None."""
    return _BY_KIND.get(kind)


def kinds() -> list[str]:
    """Every fusion-group kind some family lowers."""
    return sorted(_BY_KIND)


def template(name: str, backend: str) -> ModuleType:
    """The template module of family `name` for `backend`; LoweringError when it has none."""
    fam = family(name)
    if backend not in fam.templates:
        raise LoweringError(f"kernel family {name!r} has no {backend} template (it has: "
                            f"{', '.join(sorted(fam.templates)) or 'none'})")
    return importlib.import_module(fam.templates[backend])


def unregister_family(name: str) -> None:
    """Forget family `name`, its templates and the kinds it claimed (for tests that register a
    family of their own; the library never unregisters)."""
    _FAMILIES.pop(name, None)
    for kind in [k for k, fam in _BY_KIND.items() if fam.name == name]:
        del _BY_KIND[kind]
