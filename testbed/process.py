"""What every private broker launcher needs: a free loopback port, a bounded wait for it to
listen, the broker's binary found or a clear message naming the package to install."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time


class ServiceError(Exception):
    """A broker could not be found, started or stopped."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll a TCP connect until it succeeds; fail early if the process died."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"process exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"nothing listens on 127.0.0.1:{port} after {timeout} s"
                ) from None
        time.sleep(0.01)  # a poll interval, not a readiness guess: the loop has a deadline


def require_binary(path: str, package: str) -> str:
    found = shutil.which(path) or (path if os.path.exists(path) else None)
    if not found:
        raise ServiceError(
            f"{path} not found: install the Debian package '{package}' "
            f"(apt-get install {package}; `make test` does this for you)"
        )
    return found
