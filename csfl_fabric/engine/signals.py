"""SIGINT/SIGTERM during a run: finish the current client, checkpoint, and exit with 128 + the signal number."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from csfl_fabric.engine.guard import ClientGuard

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_on_signals(guard: ClientGuard) -> Iterator[None]:
    """While active, SIGINT/SIGTERM ask ``guard`` to stop at the next client boundary.

    The first signal restores the previous handler, so a second one acts at once (Ctrl-C twice).
    Outside the main thread (where Python cannot install handlers) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {s: signal.getsignal(s) for s in SIGNALS}

    def handler(signum: int, frame: FrameType | None) -> None:
        signal.signal(signum, previous[signum])
        guard.request_stop(signum)
        # os.write, not print: a handler that prints while the interrupted code is inside a buffered write to the
        # same stream raises "reentrant call".
        os.write(2, f"csfl-fabric: {signal.Signals(signum).name} received; finishing the current "
                 "client, then writing a checkpoint (send it again to stop at once).\n".encode())

    for signum in SIGNALS:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)
