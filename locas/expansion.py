"""When an expanding memory grows (issue 23), checked once with the config, and what the rows record of it.

`expand_every="session"`: before the first window of each LoCoMo session after the first (the document's
`sections`). `expand_every=N` (a token count, at least one window): before the first window that starts at or
past each multiple of N. Each time a block of `expand_width` rows (unset: `memory_width`) is memorized on that
window and appended, until the memory is `expand_max_width` rows wide (unset: no limit). The memory itself
is in `locas/expanding_memory.py`.
"""
from __future__ import annotations

from locas.errors import LocasError

SESSION = "session"


def check_expansion(cfg) -> str | None:
    """`cfg.expand_every` in its one spelling ('session' or the token count's digits: one config id per
    setting), once the expansion settings are checked; a setting that cannot run is refused with one line."""
    every, width, most = cfg.expand_every, cfg.expand_width, cfg.expand_max_width
    if every is None:
        if width is not None or most is not None:
            raise LocasError("expand_width and expand_max_width need --expand_every (session or a token count)")
        return None
    if every != SESSION:
        text = str(every).strip()
        if isinstance(every, bool) or not text.isdigit() or int(text) < cfg.window_size:
            raise LocasError(f"expand_every={every!r} must be 'session' or a whole number of tokens of at least "
                             f"window_size ({cfg.window_size}), so that at most one block comes per window")
        every = str(int(text))
    if width is not None and width < 1:
        raise LocasError(f"expand_width={width} must be at least 1")
    if most is not None and most < cfg.memory_width:
        raise LocasError(f"expand_max_width={most} must be at least memory_width ({cfg.memory_width})")
    return every


def without_sessions(cfg):
    """`cfg`, for a task whose documents are books: they have no sessions to grow at."""
    if cfg.expand_every == SESSION:
        raise LocasError("--expand_every session needs dated sessions (LoCoMo): on books give a token count, "
                         "e.g. --expand_every 8192")
    return cfg


def grows_before(cfg, doc, k: int) -> bool:
    """Whether the schedule appends a block before window `k` of `doc` (never before window 0: the first
    block is memorized there)."""
    if k == 0:
        return False
    if cfg.expand_every == SESSION:
        if doc.sections is None:
            raise LocasError(f"expand_every=session: document {doc.doc_id} has no sessions (a PG-19 book): "
                             "give a token count instead")
        return k in doc.sections
    every = int(cfg.expand_every)
    return doc.windows[k].start // every > doc.windows[k - 1].start // every


def block_width(cfg, width: int) -> int:
    """Rows the next block adds to a memory `width` rows wide (0 once at `expand_max_width`)."""
    block = cfg.expand_width or cfg.memory_width
    return block if cfg.expand_max_width is None else max(0, min(block, cfg.expand_max_width - width))


def window_width(result, k: int) -> dict:
    """The width column of window `k`'s row: the rows in force when it was scored and trained (expanding
    memories only; a fixed width is the config's `memory_width`)."""
    return {} if result.widths is None else {"memory_width": result.widths[k]}


def final_width(result, per_window: bool = False) -> dict:
    """The document row's width columns: the final width (and with `per_window`, every window's)."""
    if result.widths is None:
        return {}
    return {"final_width": result.widths[-1], **({"widths": list(result.widths)} if per_window else {})}
