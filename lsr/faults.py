"""Deterministic fault injection for crash tests: named points in the write paths that fail on request.

``LSR_FAULT=NAME[:N[:ACTION]]`` makes the N-th time (default 1) this process reaches :func:`fault_point` ``NAME``
fail with ACTION: ``kill`` (default; SIGKILL, as a crash or power cut), ``stop`` (SIGSTOP: the process holds
still at that point until it is killed or continued) or ``interrupt`` (``KeyboardInterrupt``, as Ctrl-C).
Without ``LSR_FAULT`` a fault point does nothing.

Points (in the order a build reaches them): ``build.chunk_written`` (a window's postings are a chunk on disk),
``build.store_committed`` (and its documents committed), ``build.progress_written`` (and progress.json
replaced), ``build.finalized`` (every window done and the index written, checkpoint still there),
``build.before_exchange`` (the staged index complete, about to replace the previous one); ``add.window``
(a window of a new segment stored), ``add.segment_ready`` (the segment directory in place, ``live.json`` not yet
replaced); ``merge.window`` (a window of a compaction or segment merge stored), ``compact.before_exchange``.
"""

from __future__ import annotations

import os
import signal

ENV = "LSR_FAULT"
ACTIONS = ("kill", "stop", "interrupt")

_reached: dict[str, int] = {}  # times each point was reached under the current LSR_FAULT value


def fault_point(name: str) -> None:
    """Fail here if ``LSR_FAULT`` names this point and this is the time it asks for (see the module doc)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, rest = spec.partition(":")
    if target != name:
        return
    nth, _, action = rest.partition(":")
    action = action or "kill"
    if action not in ACTIONS or (nth and not nth.isdigit()):
        raise ValueError(f"{ENV}={spec!r}: expected NAME[:N[:{'|'.join(ACTIONS)}]]")
    _reached[spec] = _reached.get(spec, 0) + 1
    if _reached[spec] != int(nth or 1):
        return
    del _reached[spec]  # the next run under the same value (in this process) counts from the start
    if action == "interrupt":
        raise KeyboardInterrupt(f"{ENV}={spec}")
    os.kill(os.getpid(), signal.SIGSTOP if action == "stop" else signal.SIGKILL)
