"""Parameters checked before an Amaranth component exists.

Amaranth's ``Elaboratable`` (``amaranth._unused.MustUse``) records every object in
``__new__`` and warns (``UnusedElaboratable``) when one is garbage-collected without
having been elaborated.  A constructor that validates its parameters in ``__init__``
therefore leaves an unused object, and a warning, behind every rejected configuration;
and a caller that only wants to know whether a configuration is accepted has to build
the component to find out.

:class:`Checked` moves the checks in front of the object: a subclass states them in a
classmethod ``check_params`` that takes ``__init__``'s parameters by name (defaults
filled in), and ``Checked.__new__`` runs them before ``Elaboratable.__new__``.  A
rejected configuration raises its ``ValueError``/``TypeError`` with nothing built, and
:func:`check` answers "would ``cls(*args, **kwargs)`` be accepted?" without building
anything (the unit registry's probe).  Facts callers read without elaborating
(latencies, signatures) are published the same way, as class-level functions, so no
component is built only to be inspected.

Usage::

    class Engine(Checked, wiring.Component):
        def __init__(self, *, depth: int = 16): ...

        @classmethod
        def check_params(cls, *, depth):
            if depth < 1:
                raise ValueError(f"depth must be >= 1, got {depth!r}")
"""
from __future__ import annotations

import functools
import inspect
from typing import Any

__all__ = ["Checked", "check", "latency_of"]


@functools.lru_cache(maxsize=None)
def _init_signature(cls: type) -> inspect.Signature:
    return inspect.signature(cls.__init__)


def _params(cls: type, args: tuple, kwargs: dict) -> dict[str, Any]:
    """``cls.__init__``'s parameters for ``cls(*args, **kwargs)`` by name, defaults filled."""
    try:
        bound = _init_signature(cls).bind(None, *args, **kwargs)
    except TypeError as e:
        raise TypeError(f"{cls.__name__}: {e}") from None
    bound.apply_defaults()
    params = dict(bound.arguments)
    params.pop(next(iter(params)))          # self
    return params


def check(cls: type, *args: Any, **kwargs: Any) -> None:
    """Raise what ``cls(*args, **kwargs)`` would raise for its parameters, building nothing.

    The arguments must bind to ``cls.__init__`` (else ``TypeError``); a class with a
    ``check_params`` classmethod (:class:`Checked`) then gets every parameter by name,
    defaults filled in.  A class without one is checked for the binding only.
    """
    params = _params(cls, args, kwargs)
    check_params = getattr(cls, "check_params", None)
    if check_params is not None:
        check_params(**params)


def latency_of(cls: type, *args: Any, **kwargs: Any) -> int:
    """The ``latency`` a ``cls(*args, **kwargs)`` would have, from the class-level function
    ``cls.latency_for(**params)`` (parameters by name, defaults filled in; checked first).
    Nothing is built; a class that does not publish ``latency_for`` is a ``TypeError``.
    """
    latency_for = getattr(cls, "latency_for", None)
    if latency_for is None:
        raise TypeError(f"{cls.__name__} publishes no latency_for")
    params = _params(cls, args, kwargs)
    check(cls, *args, **kwargs)
    return latency_for(**params)


class Checked:
    """Mixin, listed before ``wiring.Component``: ``check_params`` runs before the object
    exists (module docstring)."""

    @classmethod
    def check_params(cls, **params: Any) -> None:
        """Raise ``ValueError``/``TypeError`` for parameters ``__init__`` must not get."""

    def __new__(cls, *args: Any, src_loc_at: int = 0, **kwargs: Any):
        check(cls, *args, **kwargs)
        # one frame more between the caller and MustUse.__new__: its source location
        # (the line a never-used object is reported at) stays the caller's
        return super().__new__(cls, *args, src_loc_at=src_loc_at + 1, **kwargs)
