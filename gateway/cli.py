"""`iomt-gateway`: run the daemon, and the operator commands keygen, enroll, revoke, status.

Exit codes: 0 success; 1 runtime failure; 2 bad usage or configuration; 3 key or registry
problem; 4 (status) the daemon is not running or its status is stale."""

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

from gateway.config import GatewayConfig, load_config
from pqlink import Role
from servicekit.cli import ExitCode, enroll, keygen, revoke, run_main

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


def _run(config: GatewayConfig, journal: str | None) -> int:
    from gateway.daemon import GatewayDaemon  # noqa: PLC0415 -- heavy imports only for run
    from servicekit.logs import setup_logging  # noqa: PLC0415
    from servicekit.notify import Notifier  # noqa: PLC0415

    choice = journal or config.log.journal
    log = setup_logging(
        journal=None if choice == "auto" else choice == "yes", level=config.log.level
    )
    config.state_dir.mkdir(parents=True, exist_ok=True)
    daemon = GatewayDaemon(config, log, Notifier.from_environ(os.environ))
    return asyncio.run(daemon.run())


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def body() -> int:
        config = load_config(args.config)
        if args.command == "run":
            return _run(config, args.journal)
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
