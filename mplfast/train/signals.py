"""Graceful stop on SIGINT/SIGTERM: the handler only records the request; the training loop
finishes the current step, writes the checkpoint and returns."""
from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any


class StopRequest:
    """Context manager that turns SIGINT/SIGTERM into a flag (``.requested``, ``.signame``).

    A second SIGINT while stopping restores the default behaviour (KeyboardInterrupt), so a
    user can still force-quit a run stuck in, say, a long evaluation.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signame: str | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True
        self.signame = signal.Signals(signum).name

    def __enter__(self) -> "StopRequest":
        # signal handlers can only be installed from the main thread (e.g. not under some
        # notebook/test runners); then we simply do not intercept signals
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
