"""Clean stop on SIGTERM / SIGINT: finish the current optimizer step, checkpoint, exit."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


class GracefulStop:
    """While active, SIGTERM and SIGINT only set `self.received`; the loop stops at the next step.

    A second SIGINT raises KeyboardInterrupt at once (the previous checkpoint stays intact).
    Outside the main thread signals cannot be caught, and this does nothing.
    """

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> "GracefulStop":
        self.received = None
        if threading.current_thread() is threading.main_thread():
            for signum in EXIT_CODES:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt("second interrupt: stopped without a checkpoint")
        self.received = signal.Signals(signum)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.received] if self.received is not None else 0
