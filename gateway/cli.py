"""`iomt-gateway`: run the daemon, and the operator commands keygen, enroll, revoke, status,
store recover.

Exit codes: 0 success; 1 runtime failure; 2 bad usage or configuration; 3 key or registry
problem; 4 (status) the daemon is not running or its status is stale; 5 the store file is
unusable (corrupt, truncated, a directory, unreadable): run `store recover`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import GatewayConfig, load_config
from gateway.store import StoreError, StoreUnusableError, recover_store
from pqlink import KeyFileError, PqlinkError, Role
from servicekit.cli import ExitCode, enroll, keygen, revoke, run_main
from servicekit.config import ConfigError
from wire.reasons import Event

if TYPE_CHECKING:
    from servicekit.logs import EventLog

EXIT_CODES = {
    ExitCode.OK: "success",
    ExitCode.FAILURE: "runtime failure",
    ExitCode.USAGE: "bad usage or configuration",
    ExitCode.KEYS: "key or registry problem",
    ExitCode.NOT_RUNNING: "(status) the daemon is not running or its status is stale",
    ExitCode.STORE: "the store file is unusable: `iomt-gateway store recover`",
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
    keygen(config.identity, config.gateway_id, Role.GATEWAY)
    print(f"public identity: {config.identity.with_suffix('.pub')}")
    return ExitCode.OK


def _enroll(config: GatewayConfig, files: Sequence[Path], replace: bool, reload: bool) -> int:
    enroll(config.registry, files, Role.SENSOR, replace=replace)
    if reload:
        print(_signal_daemon(config))
    return ExitCode.OK


def _revoke(config: GatewayConfig, devices: Sequence[str], reload: bool) -> int:
    revoke(config.registry, devices)
    if reload:
        print(_signal_daemon(config))
    return ExitCode.OK


def _status(config: GatewayConfig, as_json: bool) -> int:
    try:
        doc = json.loads(config.status_path.read_text())
    except (OSError, ValueError):
        print(f"no status at {config.status_path}: the daemon is not running", file=sys.stderr)
        return ExitCode.NOT_RUNNING
    age = time.time() - float(doc.get("updated_at", 0))
    doc["age_seconds"] = round(age, 1)
    if as_json:
        print(json.dumps(doc, indent=2))
    else:
        for key, value in doc.items():
            print(f"{key:>18}: {value}")
    return ExitCode.NOT_RUNNING if age > _STALE_AFTER else ExitCode.OK


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
        return ExitCode.FAILURE
    try:
        aside = recover_store(config.db_path)
    except StoreError as exc:
        print(f"iomt-gateway: {exc}", file=sys.stderr)
        return ExitCode.STORE
    print(f"moved {config.db_path} to {aside}; created a fresh store")
    print("wearables resend what this gateway never acknowledged once they handshake again")
    return ExitCode.OK


def _run(config: GatewayConfig, journal: str | None) -> int:
    from servicekit.logs import setup_logging  # noqa: PLC0415 -- heavy imports only for run

    choice = journal or config.log.journal
    log = setup_logging(
        journal=None if choice == "auto" else choice == "yes", level=config.log.level
    )
    try:
        return _serve(config, log)
    except ConfigError as exc:
        code, fields = ExitCode.USAGE, {"reason": "configuration", "error": str(exc)}
    except StoreUnusableError as exc:
        code = ExitCode.STORE
        fields = {"reason": "store_unusable", "file": str(exc.path), "error": exc.reason}
    except (KeyFileError, PqlinkError) as exc:
        code, fields = ExitCode.KEYS, {"reason": "keys", "error": str(exc)}
    except StoreError as exc:
        code = ExitCode.FAILURE
        fields = {"reason": "store", "file": str(exc.path), "error": exc.reason}
    except OSError as exc:
        code = ExitCode.FAILURE
        fields = {"reason": "os", "error": f"{type(exc).__name__}: {exc}"}
    log.event(Event.DAEMON_FAILED, level=logging.CRITICAL, exit_code=int(code), **fields)
    return code


def _serve(config: GatewayConfig, log: EventLog) -> int:
    from gateway.daemon import GatewayDaemon  # noqa: PLC0415 -- heavy imports only for run
    from servicekit.notify import Notifier  # noqa: PLC0415

    try:
        config.state_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise ConfigError(f"gateway.state_dir {config.state_dir} is not a directory") from exc
    daemon = GatewayDaemon(config, log, Notifier.from_environ(os.environ))
    return asyncio.run(daemon.run())


def _config_failed(command: str, exc: ConfigError) -> int:
    """A `run` whose configuration cannot be read still ends in one structured event."""
    if command == "run":
        from servicekit.logs import setup_logging  # noqa: PLC0415

        setup_logging().event(
            Event.DAEMON_FAILED,
            level=logging.CRITICAL,
            exit_code=int(ExitCode.USAGE),
            reason="configuration",
            error=str(exc),
        )
    print(f"iomt-gateway: configuration error: {exc}", file=sys.stderr)
    return ExitCode.USAGE


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _config_failed(args.command, exc)

    def body() -> int:
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

    return run_main("iomt-gateway", body)


if __name__ == "__main__":
    sys.exit(main())
