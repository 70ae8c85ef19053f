"""Reconnect backoff shared by every broker client: exponential delays from `initial` up to
`maximum`, reset on success, and waits that end early when the owner is asked to stop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """The delay before the next attempt doubles after each failure, up to `maximum`."""

    initial: float
    maximum: float
    _delay: float = field(init=False)

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError(f"backoff {self.initial}..{self.maximum}: need 0 < initial <= maximum")
        self._delay = self.initial

    @property
    def delay(self) -> float:
        """The wait before the next attempt."""
        return self._delay

    def failed(self) -> float:
        """Record a failure: the delay to wait now (the following one doubles)."""
        delay = self._delay
        self._delay = min(self._delay * 2, self.maximum)
        return delay

    def succeeded(self) -> None:
        self._delay = self.initial

    async def wait(self, stop: asyncio.Event) -> bool:
        """After a failure: wait the delay, or less if `stop` is set; True when stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), self.failed())
        return stop.is_set()

    def wait_blocking(self, stop: threading.Event) -> bool:
        """The same for threads: True when stopping."""
        return stop.wait(self.failed())
