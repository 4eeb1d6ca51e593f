"""Package names resolved on first use (PEP 562), so importing a package stays cheap.

A package that lists ``{name: submodule}`` sets ``__getattr__ = lazy_exports(__name__, EXPORTS)``:
``package.name`` then imports ``package.submodule`` only when the name is first read. The CLI relies
on this: ``detco-bench --help`` must not import torch through a package ``__init__``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """The module-level ``__getattr__`` of `package` for `exports` (exported name -> submodule)."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return __getattr__
