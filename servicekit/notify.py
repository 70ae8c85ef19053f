"""A dependency-free sd_notify client: READY, RELOADING, STOPPING, WATCHDOG and STATUS
datagrams to the socket systemd names in NOTIFY_SOCKET; a no-op when there is none."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


class Notifier:
    """Never raises after start: a daemon must not die because systemd went away."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address: str | None = None
        if address:
            # "@name" is an abstract-namespace socket: a leading NUL byte on the wire.
            self._address = "\0" + address[1:] if address.startswith("@") else address
        self._watchdog_usec = watchdog_usec
        self.failures = 0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Notifier:
        usec: int | None = None
        raw = environ.get("WATCHDOG_USEC")
        pid = environ.get("WATCHDOG_PID")
        if raw and raw.isdigit() and int(raw) > 0 and (not pid or pid == str(os.getpid())):
            usec = int(raw)
        return cls(environ.get("NOTIFY_SOCKET"), usec)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half of WatchdogSec, as sd_watchdog_enabled(3) advises."""
        return None if self._watchdog_usec is None else self._watchdog_usec / 2e6

    def notify(self, **fields: str | int) -> bool:
        if self._address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message, self._address)
        except OSError:
            self.failures += 1
            return False
        return True

    def ready(self) -> bool:
        return self.notify(READY=1)

    def reloading(self) -> bool:
        # systemd >= 253 wants MONOTONIC_USEC with RELOADING=1; older versions ignore it.
        return self.notify(
            RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        )

    def stopping(self) -> bool:
        return self.notify(STOPPING=1)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text.replace("\n", " "))
