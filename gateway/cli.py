"""`iomt-gateway`: run the daemon, and the operator commands keygen, enroll, revoke, status,
store recover.

Exit codes: 0 success; 1 runtime failure; 2 bad usage or configuration; 3 key or registry
problem; 4 (status) the daemon is not running or its status is stale; 5 the store file is
unusable (corrupt, truncated, a directory, unreadable): run `store recover`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.store import StoreError, StoreUnusableError, recover_store
from pqlink import (
    Identity,
    KeyFileError,
    PqlinkError,
    Role,
    load_identity,
    load_public_identity,
    load_registry,
    save_identity,
    save_public_identity,
    save_registry,
)

if TYPE_CHECKING:
    from gateway.logs import EventLog

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_KEYS, EXIT_NOT_RUNNING, EXIT_STORE = 0, 1, 2, 3, 4, 5
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_FAILURE: "runtime failure",
    EXIT_USAGE: "bad usage or configuration",
    EXIT_KEYS: "key or registry problem",
    EXIT_NOT_RUNNING: "(status) the daemon is not running or its status is stale",
    EXIT_STORE: "the store file is unusable: `iomt-gateway store recover`",
}
"""What each exit code means; the README's table is checked against this."""
_STALE_AFTER = 10.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iomt-gateway", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--config", "-c", required=True, type=Path, help="gateway TOML file")
        return sp

    run = add("run", "run the daemon (systemd Type=notify aware)")
    run.add_argument("--journal", choices=("auto", "yes", "no"), help="override log.journal")
    add("keygen", "create the gateway identity if absent and print its fingerprint")
    enroll = add("enroll", "enroll public identity files (wearables) into the registry")
    enroll.add_argument("public_files", nargs="+", type=Path, help="*.pub files")
    enroll.add_argument("--replace", action="store_true", help="re-key devices already enrolled")
    enroll.add_argument("--reload", action="store_true", help="SIGHUP the running daemon")
    revoke = add("revoke", "revoke devices (takes effect in a running daemon on --reload)")
    revoke.add_argument("device_ids", nargs="+")
    revoke.add_argument("--reload", action="store_true", help="SIGHUP the running daemon")
    status = add("status", "print the running daemon's counters")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    store = add("store", "store maintenance (the daemon must be stopped)")
    store.add_argument(
        "action",
        choices=("recover",),
        help="recover: move an unusable store aside and start a fresh one",
    )
    return p


def _signal_daemon(config: GatewayConfig) -> str:
    try:
        pid = int(json.loads(config.status_path.read_text())["pid"])
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError, KeyError) as exc:
        return f"no running daemon to reload ({exc})"
    return f"sent SIGHUP to {pid}"


def _keygen(config: GatewayConfig) -> int:
    if config.identity.exists():
        identity = load_identity(config.identity)
        print(f"identity exists: {identity.name} {identity.public.fingerprint}")
    else:
        identity = Identity.generate(config.gateway_id, Role.GATEWAY)
        save_identity(identity, config.identity)
        print(f"created {config.identity}: {identity.name} {identity.public.fingerprint}")
    pub = config.identity.with_suffix(".pub")
    save_public_identity(identity.public, pub)
    print(f"public identity: {pub}")
    return EXIT_OK


def _enroll(config: GatewayConfig, files: Sequence[Path], replace: bool, reload: bool) -> int:
    registry = load_registry(config.registry)
    for f in files:
        public = load_public_identity(f)
        if public.role is not Role.SENSOR:
            raise KeyFileError(f"{f}: {public.name!r} is a {public.role}, not a sensor")
        try:
            registry.enroll(public, replace=replace)
        except ValueError as exc:
            raise KeyFileError(str(exc)) from None
        print(f"enrolled {public.name} {public.short_fingerprint}")
    save_registry(registry, config.registry)
    if reload:
        print(_signal_daemon(config))
    return EXIT_OK


def _revoke(config: GatewayConfig, devices: Sequence[str], reload: bool) -> int:
    registry = load_registry(config.registry)
    for device in devices:
        registry.revoke(device)
        print(f"revoked {device}")
    save_registry(registry, config.registry)
    if reload:
        print(_signal_daemon(config))
    return EXIT_OK


def _status(config: GatewayConfig, as_json: bool) -> int:
    try:
        doc = json.loads(config.status_path.read_text())
    except (OSError, ValueError):
        print(f"no status at {config.status_path}: the daemon is not running", file=sys.stderr)
        return EXIT_NOT_RUNNING
    age = time.time() - float(doc.get("updated_at", 0))
    doc["age_seconds"] = round(age, 1)
    if as_json:
        print(json.dumps(doc, indent=2))
    else:
        for key, value in doc.items():
            print(f"{key:>18}: {value}")
    return EXIT_NOT_RUNNING if age > _STALE_AFTER else EXIT_OK


def _daemon_pid(config: GatewayConfig) -> int | None:
    """The pid in the status file if that process is alive."""
    try:
        pid = int(json.loads(config.status_path.read_text())["pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid


def _store_recover(config: GatewayConfig) -> int:
    pid = _daemon_pid(config)
    if pid is not None and pid != os.getpid():
        print(f"iomt-gateway: the daemon runs as pid {pid}: stop it first", file=sys.stderr)
        return EXIT_FAILURE
    if not config.db_path.exists() and not config.db_path.is_symlink():
        recover_store(config.db_path)
        print(f"no store at {config.db_path}: created a fresh one")
        return EXIT_OK
    aside = recover_store(config.db_path)
    print(f"moved {config.db_path} to {aside}; created a fresh store")
    print("wearables resend what this gateway never acknowledged once they handshake again")
    return EXIT_OK


def _run(config: GatewayConfig, journal: str | None) -> int:
    from gateway.logs import setup_logging  # noqa: PLC0415 -- heavy imports only for run

    choice = journal or config.log.journal
    log = setup_logging(
        journal=None if choice == "auto" else choice == "yes", level=config.log.level
    )
    try:
        return _serve(config, log)
    except ConfigError as exc:
        code, fields = EXIT_USAGE, {"reason": "configuration", "error": str(exc)}
    except StoreUnusableError as exc:
        code = EXIT_STORE
        fields = {"reason": "store_unusable", "file": str(exc.path), "error": exc.reason}
    except (KeyFileError, PqlinkError) as exc:
        code, fields = EXIT_KEYS, {"reason": "keys", "error": str(exc)}
    except StoreError as exc:
        code = EXIT_FAILURE
        fields = {"reason": "store", "file": str(exc.path), "error": exc.reason}
    except OSError as exc:
        code, fields = EXIT_FAILURE, {"reason": "os", "error": f"{type(exc).__name__}: {exc}"}
    log.event("daemon_failed", level=50, exit_code=code, **fields)
    return code


def _serve(config: GatewayConfig, log: EventLog) -> int:
    from gateway.daemon import GatewayDaemon  # noqa: PLC0415 -- heavy imports only for run
    from gateway.systemd import Notifier  # noqa: PLC0415

    try:
        config.state_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise ConfigError(f"gateway.state_dir {config.state_dir} is not a directory") from exc
    daemon = GatewayDaemon(config, log, Notifier.from_environ(os.environ))
    return asyncio.run(daemon.run())


def _config_failed(command: str, exc: ConfigError) -> int:
    """A `run` whose configuration cannot be read still ends in one structured event."""
    if command == "run":
        from gateway.logs import setup_logging  # noqa: PLC0415

        setup_logging().event(
            "daemon_failed", level=50, exit_code=EXIT_USAGE, reason="configuration", error=str(exc)
        )
    print(f"iomt-gateway: configuration error: {exc}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _config_failed(args.command, exc)
    try:
        if args.command == "run":
            return _run(config, args.journal)
        if args.command == "store":
            return _store_recover(config)
        if args.command == "keygen":
            return _keygen(config)
        if args.command == "enroll":
            return _enroll(config, args.public_files, args.replace, args.reload)
        if args.command == "revoke":
            return _revoke(config, args.device_ids, args.reload)
        return _status(config, args.json)
    except ConfigError as exc:
        print(f"iomt-gateway: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (KeyFileError, PqlinkError) as exc:
        print(f"iomt-gateway: {exc}", file=sys.stderr)
        return EXIT_KEYS
    except StoreError as exc:
        print(f"iomt-gateway: {exc}", file=sys.stderr)
        return EXIT_STORE
    except ValueError as exc:
        print(f"iomt-gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
