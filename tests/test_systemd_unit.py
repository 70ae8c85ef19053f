"""The unit file: `systemd-analyze verify` says nothing at all, and the offline security
exposure score stays in the "OK" band (below 5.0) or better."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from .harness import tool

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "iomt-gateway.service"


def _analyze() -> str:
    return tool("systemd-analyze", "install the Debian package 'systemd'")


def _root(tmp_path: Path, unit_text: str) -> Path:
    """A root with the systemd tree and a stand-in for the binaries the unit names."""
    root = tmp_path / "root"
    (root / "usr/lib").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd", root / "usr/lib/systemd", symlinks=True)
    for exe in ("opt/iomt-gateway/venv/bin/iomt-gateway", "bin/kill"):
        path = root / exe
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/iomt-gateway.service").write_text(unit_text)
    return root


def _verify(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_analyze(), "verify", f"--root={root}", "/etc/systemd/system/iomt-gateway.service"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_unit_verifies_without_any_output(tmp_path: Path) -> None:
    result = _verify(_root(tmp_path, UNIT.read_text()))
    assert result.returncode == 0, result.stderr
    # verify only warns (exit 0) on unknown keys and bad values: any output is a failure
    assert result.stdout + result.stderr == ""


def test_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    broken = UNIT.read_text().replace("Restart=on-failure", "Restart=on-failure\nRestrat=always")
    result = _verify(_root(tmp_path, broken))
    assert "Restrat" in result.stdout + result.stderr


def test_security_exposure_is_ok_or_better(tmp_path: Path) -> None:
    root = _root(tmp_path, UNIT.read_text())
    result = subprocess.run(
        [_analyze(), "security", "--offline=true", f"--root={root}", "iomt-gateway.service"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(
        r"Overall exposure level for iomt-gateway\.service: ([0-9.]+) (\w+)", result.stdout
    )
    assert match, result.stdout[-2000:] + result.stderr
    score, band = float(match.group(1)), match.group(2)
    assert score < 5.0, f"exposure {score} {band}"
    assert band in {"OK", "SAFE"}


def test_unit_has_the_promised_settings() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=30",
        "Restart=on-failure",
        "User=iomt",
        "StateDirectory=iomt-gateway",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "CapabilityBoundingSet=",
        "SystemCallFilter=@system-service",
    ):
        assert re.search(rf"^{re.escape(line)}$", text, re.MULTILINE), line
