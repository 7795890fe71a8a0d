"""The registry: criterion classes by name, built-in ones and installed plugins'.

A criterion module registers its classes with the :func:`register_criterion`
decorator; :mod:`synflow_plugin.criteria` imports the built-in modules, so a new
built-in criterion is one file and one import line there.
"""

from __future__ import annotations

import importlib.metadata
import warnings

from synflow_plugin.criteria.base import Criterion
from synflow_plugin.errors import PruningError, PruningTypeError

__all__ = ["CRITERIA", "register_criterion", "load_entry_points", "list_criteria", "get_criterion",
           "ENTRY_POINT_GROUP"]

CRITERIA: dict[str, type[Criterion]] = {}


def register_criterion(cls: type[Criterion]) -> type[Criterion]:
    """Add a :class:`Criterion` subclass to the registry under ``cls.name`` (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Criterion)):
        raise PruningTypeError(f"register_criterion() expects a Criterion subclass, got {cls!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise PruningError(f"{cls.__name__} needs a class attribute name = '<registry name>'")
    if name != name.lower() or name != name.strip():
        # names are looked up case-insensitively, by their lower-case form
        raise PruningError(
            f"{cls.__name__}.name = {name!r}: registry names are lower case without surrounding spaces; "
            f"use name = {name.strip().lower()!r}"
        )
    if name in CRITERIA and CRITERIA[name] is not cls:
        raise PruningError(f"a criterion named {name!r} is already registered ({CRITERIA[name].__name__})")
    CRITERIA[name] = cls
    return cls


#: The entry-point group through which installed packages add criteria: a package
#: declares ``[project.entry-points."synflow_plugin.criteria"] mine = "mypkg.scores:MyCriterion"``
#: and ``MyCriterion`` is registered the first time the registry is read.
ENTRY_POINT_GROUP = "synflow_plugin.criteria"
_entry_points_loaded = False


def load_entry_points() -> list[str]:
    """Register the criteria of installed packages (the :data:`ENTRY_POINT_GROUP` entry
    points), once per process; returns the names registered by this call. A plugin
    that fails to load is reported with a warning naming it, and skipped."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return []
    _entry_points_loaded = True
    added = []
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = entry.load()
            register_criterion(cls)
        except Exception as exc:  # a broken plugin must not break the library
            warnings.warn(
                f"the criterion plugin {entry.name!r} ({entry.value}) failed to load and is skipped: "
                f"{type(exc).__name__}: {exc}",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        added.append(cls.name)
    return added


def list_criteria() -> list[str]:
    """Registered criterion names, in registration order (plugins' after the built-in ones)."""
    load_entry_points()
    return list(CRITERIA)


def get_criterion(criterion: str | Criterion, **options) -> Criterion:
    """A criterion instance from a registry name (case-insensitive) or an instance.

    Raises:
        PruningError: unknown name (the message lists the valid ones) or bad options.
    """
    if isinstance(criterion, Criterion):
        if options:
            raise PruningError(
                f"options {sorted(options)} cannot be applied to the ready-made {criterion!r}; "
                "pass the criterion's name instead"
            )
        return criterion
    load_entry_points()
    if isinstance(criterion, type) and issubclass(criterion, Criterion):
        cls = criterion
    elif isinstance(criterion, str) and criterion.lower() in CRITERIA:
        cls = CRITERIA[criterion.lower()]
    else:
        raise PruningError(
            f"unknown criterion {criterion!r}; expected one of: {', '.join(CRITERIA)}"
        )
    try:
        return cls(**options)
    except TypeError as exc:
        raise PruningTypeError(f"{cls.name}: invalid options {sorted(options)} ({exc})") from None
