"""Short renderings of key lists and exception texts, so that every error and report line stays one line."""

from __future__ import annotations

from collections.abc import Iterable


def examples(keys: Iterable[str], n: int = 3) -> str:
    """The first `n` keys quoted, with ", ..." when there are more; a set is sorted first so that
    messages do not depend on hash order."""
    keys = sorted(keys) if isinstance(keys, set) else list(keys)
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (", ..." if len(keys) > n else "")


def one_line(text: object, limit: int = 200) -> str:
    """`text` with its whitespace collapsed, cut to `limit` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
