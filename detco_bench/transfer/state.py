"""The output folder of a transfer job: its state file, and what a new plan finds there
(a new folder, an interrupted run to resume, a finished run, or another job's folder)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from detco_bench.transfer.plan import STATE_FILE
from pretrain.atomic import atomic_write_json
from pretrain.lock import is_lock_file


def read_state(out: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(out) / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"status": "unreadable"}
    return data if isinstance(data, dict) else {"status": "unreadable"}



def write_state(out: str | os.PathLike, state: dict[str, Any]) -> None:
    atomic_write_json(Path(out) / STATE_FILE, state)


def folder_state(out: Path, identity: dict[str, Any]) -> dict[str, Any]:
    previous = read_state(out)
    if previous is None:
        if out.exists() and (not out.is_dir() or any(not is_lock_file(p) for p in out.iterdir())):
            return {
                "status": "conflict",
                "reason": f"--out {out} exists and is not a detco-bench transfer folder (no {STATE_FILE}); "
                "choose an empty or new folder (or --force to use it anyway)",
            }
        return {"status": "new"}
    if previous.get("status") == "unreadable":
        return {
            "status": "conflict",
            "reason": f"{out / STATE_FILE} is unreadable (use --force to start over)",
        }
    same = all(previous.get("identity", {}).get(k) == v for k, v in identity.items())
    if not same:
        diff = [k for k, v in identity.items() if previous.get("identity", {}).get(k) != v]
        return {
            "status": "conflict",
            "previous": previous,
            "reason": f"--out {out} holds another job ({previous.get('identity', {}).get('task')}, "
            f"differs in {', '.join(diff)}); choose another --out, or --force to replace it",
        }
    if previous.get("status") == "success":
        return {"status": "finished", "previous": previous, "record": previous.get("record")}
    last = out / "last_checkpoint"
    return {
        "status": "resume",
        "previous": previous,
        "checkpoint": last.read_text(encoding="utf-8").strip() if last.is_file() else None,
    }

