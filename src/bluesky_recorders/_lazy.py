"""Lazy imports for package ``__init__`` modules: heavy modules load on first use."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``exports`` maps a name to the
    submodule (relative to ``package``) that defines it."""

    def __getattr__(name: str) -> Any:  # noqa: N807 - a module's __getattr__
        try:
            module = exports[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        return getattr(import_module(f"{package}.{module}"), name)

    def __dir__() -> list[str]:  # noqa: N807 - a module's __dir__
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
