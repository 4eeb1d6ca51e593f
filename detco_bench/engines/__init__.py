"""Transfer engines: the registry behind ``detco-bench transfer --engine``.

An engine is an object with ``name``, ``available() -> str | None`` (None when usable, else why
not, one line), ``config_problems(config, family) -> list[str]`` (what it refuses in an effective
config, one line each, found at plan time) and ``run(plan) -> Path`` (train + evaluate one
`TransferPlan`, write the result record, return its path). One folder per engine:
`detco_bench.engines.detectron2` and `detco_bench.engines.torchvision`, each with an ``engine``
module whose ``run(plan)`` the registry calls. Engines are imported lazily: importing this package
never imports torch, detectron2 or an engine module. See docs/transfer.md for the contract an
engine implements.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from detco_bench.errors import DETECTRON2_INSTALL_HINT, UserError

if TYPE_CHECKING:
    from detco_bench.transfer.plan import TransferPlan

ENGINE_NAMES: tuple[str, ...] = ("detectron2", "torchvision")
ENGINE_CHOICES: tuple[str, ...] = ("auto", *ENGINE_NAMES)

#: Which converted weights each engine loads (the `detco-bench convert` target).
WEIGHTS_TARGET: dict[str, str] = {"detectron2": "detectron2", "torchvision": "torchvision"}

DETECTRON2_ENGINE_MODULE = "detco_bench.engines.detectron2.engine"
TORCHVISION_ENGINE_MODULE = "detco_bench.engines.torchvision.engine"
TORCHVISION_CHECK_MODULE = "detco_bench.engines.torchvision.check"
_TORCHVISION_ENGINE_PRESENT = importlib.util.find_spec(TORCHVISION_ENGINE_MODULE) is not None


class Engine(Protocol):
    """What `detco_bench.transfer` calls: see the module docstring."""

    name: str

    def available(self) -> str | None: ...

    def config_problems(self, config: dict[str, Any], family: str) -> list[str]: ...

    def run(self, plan: TransferPlan) -> Path: ...


class _ModuleEngine:
    """An engine implemented by `module.run(plan)`, imported on first use."""

    def __init__(self, name: str, module: str) -> None:
        self.name = name
        self.module = module

    def available(self) -> str | None:
        return None

    def config_problems(self, config: dict[str, Any], family: str) -> list[str]:
        return []

    def run(self, plan: TransferPlan) -> Path:
        reason = self.available()
        if reason is not None:
            raise UserError(f"the {self.name} engine is not usable here: {reason}")
        return importlib.import_module(self.module).run(plan)

    def __repr__(self) -> str:
        return f"<engine {self.name} ({self.module})>"


class _Detectron2Engine(_ModuleEngine):
    def __init__(self) -> None:
        super().__init__("detectron2", DETECTRON2_ENGINE_MODULE)

    def available(self) -> str | None:
        # Deferred: checkpoints imports torch, which `import detco_bench.engines` must not.
        from detco_bench.checkpoints import detectron2_import_error

        error = detectron2_import_error()
        if error is None:
            return None
        return f"detectron2 is not importable ({error}); {DETECTRON2_INSTALL_HINT}"


class _TorchvisionEngine(_ModuleEngine):
    def __init__(self) -> None:
        super().__init__("torchvision", TORCHVISION_ENGINE_MODULE)

    def available(self) -> str | None:
        if not _TORCHVISION_ENGINE_PRESENT:
            return "the torchvision engine is not available yet"
        return None

    def config_problems(self, config: dict[str, Any], family: str) -> list[str]:
        if not _TORCHVISION_ENGINE_PRESENT:
            return []
        return importlib.import_module(TORCHVISION_CHECK_MODULE).config_problems(config, family)

    def run(self, plan: TransferPlan) -> Path:
        if not _TORCHVISION_ENGINE_PRESENT:
            raise UserError("the torchvision engine is not available yet")
        return super().run(plan)


ENGINES: dict[str, Engine] = {"detectron2": _Detectron2Engine(), "torchvision": _TorchvisionEngine()}


def get_engine(name: str) -> Engine:
    """The engine called `name` (UserError for an unknown name)."""
    engine = ENGINES.get(name)
    if engine is None:
        raise UserError(f"unknown engine {name!r}; choose one of {', '.join(ENGINE_CHOICES)}")
    return engine


def resolve_engine(name: str) -> str:
    """'auto' -> 'detectron2' when it is importable, else 'torchvision'; other names are checked."""
    if name == "auto":
        return "detectron2" if ENGINES["detectron2"].available() is None else "torchvision"
    get_engine(name)
    return name
