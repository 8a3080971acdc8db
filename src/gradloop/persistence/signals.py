"""Clean stop on SIGTERM / SIGINT: finish the current optimizer step, checkpoint, exit."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from ..data import distributed, fsdp

EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


class GracefulStop:
    """While active, SIGTERM and SIGINT only set `self.received`; the loop stops at the next step.

    A second SIGINT raises KeyboardInterrupt at once (the previous checkpoint stays intact).
    Outside the main thread signals cannot be caught, and this does nothing.
    """

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self.leaving = False
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> "GracefulStop":
        self.received = None
        if threading.current_thread() is threading.main_thread():
            for signum in EXIT_CODES:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_IGN if signum == signal.SIGTERM and self.leaving else handler)
        self._previous.clear()

    def leave(self) -> None:
        """The process exits after this stop: a later SIGTERM (a launcher ending the others once one
        rank has exited) is ignored, so that no rank dies in the middle of its orderly exit."""
        self.leaving = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt("second interrupt: stopped without a checkpoint")
        self.received = signal.Signals(signum)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.received] if self.received is not None else 0


class StopVote:
    """When to stop on a signal: at once alone; under torchrun, at the same optimizer step on every rank.

    Under torchrun every rank's flag rides on the step's gradient all-reduce (`StopChannel`); after
    each optimizer step every rank reads the flags of the step before (the same sum on every rank)
    and puts its own in for the next one: a signal to any rank, or to several at different
    instants, stops all of them a step or two later with the same exit code, without a collective
    or a host sync of its own. At an epoch's end the vote is taken at once over a CPU side channel
    (one blocking reduce per epoch).
    """

    def __init__(self, signals: GracefulStop, channel: distributed.StopChannel | fsdp.StopChannel | None = None) -> None:
        self.signals, self.channel = signals, channel
        self.code: int | None = None  # the agreed exit code once the vote says stop

    def after_step(self) -> bool:
        """True when every rank stops after this step."""
        if self.channel is None or not distributed.active():
            return self._decide(self.signals.exit_code)
        if self._decide(self.channel.step_done()):
            return True  # no vote for a step that will not come (FSDP's would be left in flight at exit)
        self.channel.local = _flag(self.signals.exit_code)
        return False

    def at_epoch_end(self) -> bool:
        """True when every rank stops now (the flags of the last step, and every rank's own now)."""
        if self.channel is None or not distributed.active():
            return self._decide(self.signals.exit_code)
        work, flag = distributed.vote_max(max(self.signals.exit_code, self.channel.settle()))
        work.wait()
        return self._decide(int(flag.item()))

    def _decide(self, code: int) -> bool:
        if code > 0:
            self.code = code
        return self.code is not None


def _flag(exit_code: int) -> float:
    return {143: distributed.StopChannel.SIGTERM, 130: distributed.StopChannel.SIGINT}.get(exit_code, 0)
