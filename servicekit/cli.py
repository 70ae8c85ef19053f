"""What the three console scripts share: the exit-code table, the `main()` wrapper that maps
errors to codes, and the identity commands keygen, enroll and revoke."""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pqlink import (
    Identity,
    KeyFileError,
    PqlinkError,
    Registry,
    Role,
    SigAlg,
    load_identity,
    load_public_identity,
    load_registry,
    save_identity,
    save_public_identity,
    save_registry,
)
from servicekit.config import ConfigError


class ExitCode(enum.IntEnum):
    """The documented exit codes of every console script."""

    OK = 0
    FAILURE = 1  # runtime failure (broker unreachable, disk full, ...)
    USAGE = 2  # bad usage or configuration
    KEYS = 3  # key or registry problem
    NOT_RUNNING = 4  # `status`: the daemon is not running or its status is stale


def run_main(prog: str, body: Callable[[], int], *, os_errors_fail: bool = False) -> int:
    """Run a command body and map its errors to exit codes, printing one line on stderr."""
    try:
        return body()
    except ConfigError as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except PqlinkError as exc:  # KeyFileError included
        print(f"{prog}: {exc}", file=sys.stderr)
        return ExitCode.KEYS
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except OSError as exc:
        if not os_errors_fail:
            raise
        print(f"{prog}: {exc}", file=sys.stderr)
        return ExitCode.FAILURE


def keygen(path: Path, name: str, role: Role, alg: SigAlg | None = None) -> Identity:
    """Create the identity at `path` unless it exists, and (re)write its `.pub` beside it."""
    if path.exists():
        identity = load_identity(path)
        print(f"identity exists: {identity.name} {identity.public.fingerprint}")
    else:
        identity = Identity.generate(name, role, alg)
        save_identity(identity, path)
        print(f"created {path}: {identity.name} {identity.public.fingerprint}")
    save_public_identity(identity.public, path.with_suffix(".pub"))
    return identity


def enroll(registry_path: Path, files: Sequence[Path], role: Role, *, replace: bool) -> Registry:
    """Enroll public identity files of `role` into the registry file and save it; the first
    enrolment creates the registry."""
    registry = load_registry(registry_path, missing_ok=True)
    for f in files:
        public = load_public_identity(f)
        if public.role is not role:
            raise KeyFileError(f"{f}: {public.name!r} is a {public.role}, not a {role}")
        try:
            registry.enroll(public, replace=replace)
        except ValueError as exc:
            raise KeyFileError(str(exc)) from None
        print(f"enrolled {public.name} {public.short_fingerprint}")
    save_registry(registry, registry_path)
    return registry


def revoke(registry_path: Path, names: Sequence[str]) -> Registry:
    """Revoke identities by name in the registry file and save it."""
    registry = load_registry(registry_path)
    for name in names:
        registry.revoke(name)
        print(f"revoked {name}")
    save_registry(registry, registry_path)
    return registry
