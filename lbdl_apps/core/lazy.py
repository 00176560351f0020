"""Each app's package exposes its Python API (`from lbdl_apps.classify import load`) without
importing torch until a name is used, so that `lbdl --help` starts fast (PEP 562)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any


def lazy_api(package: str, names: Sequence[str], module: str = "api") -> Callable[[str], Any]:
    """The `__getattr__` of an app's __init__.py: each of `names` comes from
    `package.module` when first used; any other name is an AttributeError."""

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(f"{package}.{module}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
