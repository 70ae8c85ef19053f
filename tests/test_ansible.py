"""The Ansible rollout in ansible/: the playbooks parse, ansible-lint passes with the production
profile, and the iomt_gateway role really runs with ansible-core against this machine, into a
scratch prefix with no service manager (iomt_gateway_service_manager=none). Checked: the package
from a wheel built from this checkout, modes and owners, the configuration accepted by the
daemon's own parser, the identity generated on the host and fetched back, the unit file in step
with systemd/iomt-gateway.service, the restart handler notified only by a change; enroll.yml
enrols and revokes a wearable; a second run of every playbook changes nothing; placeholder
secrets, unknown configuration keys and a gateway id that does not match the identity are
refused."""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config
from pqlink import (
    Identity,
    Registry,
    RevokedPeerError,
    Role,
    SigAlg,
    load_identity,
    load_public_identity,
    load_registry,
    save_registry,
)
from pqlink.identity import save_public_identity

from .harness import tool

ROOT = Path(__file__).resolve().parents[1]
ANSIBLE_DIR = ROOT / "ansible"
PLAYBOOKS = ("site.yml", "enroll.yml", "upgrade.yml")
GATEWAY_ID = "gw-test"
MQTT_PASSWORD = "mqtt-s3cret"
AMQP_PASSWORD = "p@ss/w:rd"  # percent-encoded into the AMQP URL
EXPECTED_AMQP_URL = "amqp://gw-test:p%40ss%2Fw%3Ard@rabbit.test:5672/%2F"
# A bound on a hung play, not a speed check: a site run installs the wheel and its
# dependencies into a fresh virtual environment, which took more than 300 s with both cores busy.
PLAY_TIMEOUT = 900
# A module's first test carries the deployment fixture (several playbook runs of up to
# PLAY_TIMEOUT each): the per-test limit must cover them on a busy machine.
pytestmark = pytest.mark.timeout(4 * PLAY_TIMEOUT)
RESTART = "RUNNING HANDLER [iomt_gateway : Restart iomt-gateway]"


def _tool(name: str, package: str) -> str:
    return tool(name, f"install the Python package '{package}' (the test extras)")


@pytest.fixture(scope="module")
def ansible_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Ansible's and pip's homes, caches and temp dirs in a scratch directory, not in ~."""
    base = tmp_path_factory.mktemp("ansible-home")
    # the operator's own Ansible settings (callback, vault password file, ...) stay out
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
        ANSIBLE_HOME=str(base / "ansible"),
        ANSIBLE_LOCAL_TEMP=str(base / "local-tmp"),
        ANSIBLE_REMOTE_TEMP=str(base / "remote-tmp"),
        XDG_CACHE_HOME=str(base / "cache"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


_HEADER = re.compile(r"^(?:TASK|RUNNING HANDLER) \[(?:\w+ : )?(?P<name>.*)\] \*+$")
_RECAP = re.compile(r"^localhost\s+:\s+(?P<counts>.*)$", re.MULTILINE)


@dataclass(frozen=True)
class Recap:
    stats: dict[str, int]  # the PLAY RECAP line: ok, changed, failed, ...
    changed_tasks: list[str]
    output: str  # what the operator sees

    @property
    def changed(self) -> int:
        return self.stats["changed"]


def _changed_tasks(output: str) -> list[str]:
    tasks, current = [], ""
    for line in output.splitlines():
        if header := _HEADER.match(line):
            current = header["name"]
        elif line.startswith("changed: [localhost]") and current not in tasks:
            tasks.append(current)
    return tasks


def _run(env: dict[str, str], playbook: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("ansible-playbook", "ansible-core"), *args, playbook],
        cwd=ANSIBLE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=PLAY_TIMEOUT,
        check=False,
    )


def _play(env: dict[str, str], playbook: str, *args: str) -> Recap:
    """Run a playbook; fail the test with its output unless every task succeeded."""
    proc = _run(env, playbook, *args)
    recap = _RECAP.search(proc.stdout)
    stats = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", recap["counts"])} if recap else {}
    if proc.returncode != 0 or not stats or stats["failed"] or stats["unreachable"]:
        pytest.fail(
            f"{playbook}: exit {proc.returncode}\n{proc.stdout[-6000:]}{proc.stderr[-3000:]}"
        )
    return Recap(stats=stats, changed_tasks=_changed_tasks(proc.stdout), output=proc.stdout)


def _failed_task(output: str) -> str:
    """The name of the task that failed, from the playbook's output."""
    current = ""
    for line in output.splitlines():
        if header := _HEADER.match(line):
            current = header["name"]
        elif line.startswith("fatal: [localhost]"):
            return current
    return ""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory, ansible_env: dict[str, str]) -> Path:
    """The package built from this checkout, once; built from a copy so the tree stays clean."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc")
    for package in {name.split(".")[0] for name in project["tool"]["setuptools"]["packages"]}:
        shutil.copytree(ROOT / package, src / package, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(base / "dist"),
            str(src),
        ],
        env=ansible_env,
        capture_output=True,
        text=True,
        timeout=PLAY_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    (built,) = (base / "dist").glob("iomt_gateway-*.whl")
    return built


@dataclass(frozen=True)
class Deployment:
    env: dict[str, str]
    prefix: Path
    controller: Path
    args: tuple[str, ...]  # inventory and extra vars for _play
    first: Recap
    aggregator: Identity

    @property
    def state_dir(self) -> Path:
        return self.prefix / "var/lib/iomt-gateway"

    @property
    def config_file(self) -> Path:
        return self.prefix / "etc/iomt-gateway/gateway.toml"

    @property
    def venv(self) -> Path:
        return self.prefix / "opt/iomt-gateway/venv"


def _inventory(path: Path) -> Path:
    path.write_text(
        json.dumps(
            {
                "gateways": {
                    "hosts": {
                        "localhost": {
                            "ansible_connection": "local",
                            "ansible_python_interpreter": sys.executable,
                            "iomt_gateway_id": GATEWAY_ID,
                            "iomt_aggregator_amqp_host": "rabbit.test",
                        }
                    }
                }
            }
        )
    )
    return path


def _prefix_vars(prefix: Path, controller: Path) -> dict[str, Any]:
    """Prefix mode: no service manager, no apt, the current user as the service user, and
    no privilege escalation: every task runs as that user, who owns everything it installs."""
    user = pwd.getpwuid(os.getuid()).pw_name
    return {
        "ansible_become": False,
        "iomt_gateway_prefix": str(prefix),
        "iomt_gateway_service_manager": "none",
        "iomt_gateway_install_apt": False,
        "iomt_gateway_manage_user": False,
        "iomt_gateway_user": user,
        "iomt_gateway_group": grp.getgrgid(os.getgid()).gr_name,
        "iomt_gateway_owner": user,
        "iomt_gateway_python": sys.executable,
        "iomt_gateway_fetch_dir": str(controller / "fetched"),
        "iomt_gateway_wearables_dir": str(controller / "wearables"),
        "iomt_gateway_aggregator_enrol_dir": str(controller / "aggregator-enrol"),
    }


def _gateway_registry(path: Path, names: list[str], role: Role = Role.GATEWAY) -> Registry:
    """The aggregator's gateways.json as `iomt-aggregator enroll` writes it."""
    registry = Registry()
    for name in names:
        registry.enroll(Identity.generate(name, role).public)
    save_registry(registry, path)
    return registry


@pytest.fixture(scope="module")
def deployed(
    tmp_path_factory: pytest.TempPathFactory, ansible_env: dict[str, str], wheel: Path
) -> Deployment:
    """site.yml run once into a fresh prefix; the secrets go through the group_vars (Vault)."""
    base = tmp_path_factory.mktemp("deploy")
    prefix, controller = base / "root", base / "controller"
    aggregator = Identity.generate("aggregator", Role.AGGREGATOR)
    save_public_identity(aggregator.public, base / "aggregator.pub")
    _gateway_registry(base / "gateways.json", ["gw-a", "gw-b"])
    extra = {
        **_prefix_vars(prefix, controller),
        "iomt_gateway_wheel": str(wheel),
        "iomt_gateway_aggregator_public": str(base / "aggregator.pub"),
        "iomt_gateway_gateway_registry": str(base / "gateways.json"),
        "vault_iomt_gateway_mqtt_passwords": {GATEWAY_ID: MQTT_PASSWORD},
        "vault_iomt_gateway_amqp_passwords": {GATEWAY_ID: AMQP_PASSWORD},
        "iomt_gateway_config_extra": {
            "sessions": {"max_sessions": 8000},
            "learning": {"require_ac_power": True, "min_battery_percent": 40.5},
        },
    }
    (base / "extra.json").write_text(json.dumps(extra))
    args = ("-i", str(_inventory(base / "inventory.json")), "-e", f"@{base / 'extra.json'}")
    first = _play(ansible_env, "site.yml", "--diff", *args)  # --diff would show the config
    return Deployment(ansible_env, prefix, controller, args, first, aggregator)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- static checks ------------------------------------------------------------------------


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_passes_syntax_check(ansible_env: dict[str, str], playbook: str) -> None:
    proc = _run(ansible_env, playbook, "--syntax-check", "-i", "inventory.example.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"playbook: {playbook}" in proc.stdout


def test_ansible_lint_passes_the_production_profile(ansible_env: dict[str, str]) -> None:
    # the profile, offline mode and strictness come from ansible/.ansible-lint
    proc = subprocess.run(
        [_tool("ansible-lint", "ansible-lint"), "--nocolor"],
        cwd=ANSIBLE_DIR,
        env=ansible_env,
        capture_output=True,
        text=True,
        timeout=PLAY_TIMEOUT,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Profile 'production' was required, and it passed" in output, output


# --- the role, run for real ---------------------------------------------------------------


def test_site_installs_the_gateway_into_the_prefix(deployed: Deployment) -> None:
    assert deployed.first.changed > 0
    # the secrets are in the configuration, never in Ansible's output
    assert "TASK [iomt_gateway : Template the gateway configuration]" in deployed.first.output
    assert MQTT_PASSWORD not in deployed.first.output
    assert "p%40ss" not in deployed.first.output

    state, cfg_file = deployed.state_dir, deployed.config_file
    assert _mode(state) == 0o700
    assert _mode(cfg_file.parent) == 0o750
    assert _mode(cfg_file) == 0o640
    assert (cfg_file.stat().st_uid, cfg_file.stat().st_gid) == (os.getuid(), os.getgid())
    assert _mode(state / "identity.key") == 0o600
    assert _mode(state / "identity.pub") == 0o644
    assert _mode(state / "aggregator.pub") == 0o644
    # the registry of gateway identities, where the daemon's config looks for it
    assert _mode(state / "gateways.json") == 0o640
    assert (state / "gateways.json").stat().st_gid == os.getgid()

    # the configuration as the daemon reads it
    config = load_config(cfg_file)
    assert config.gateway_id == GATEWAY_ID
    assert config.state_dir == state
    assert config.identity == state / "identity.key"
    assert (config.mqtt.username, config.mqtt.password) == (GATEWAY_ID, MQTT_PASSWORD)
    assert config.uplink.amqp_url == EXPECTED_AMQP_URL
    assert (config.metrics.host, config.metrics.port) == ("127.0.0.1", 9101)
    assert config.sessions.max_sessions == 8000  # iomt_gateway_config_extra
    assert config.learning.require_ac_power is True
    assert config.learning.min_battery_percent == 40.5
    assert load_public_identity(config.aggregator_public_path) == deployed.aggregator.public
    assert config.gateway_registry_path == state / "gateways.json"
    assert {p.name for p in load_registry(config.gateway_registry_path).active(Role.GATEWAY)} == {
        "gw-a",
        "gw-b",
    }

    # the identity was generated on the host; only its public part went to the controller
    fetched = deployed.controller / "fetched" / "localhost"
    assert (fetched / "identity.pub").read_bytes() == (state / "identity.pub").read_bytes()
    assert not (fetched / "identity.key").exists()
    public = load_public_identity(fetched / "identity.pub")
    assert (public.name, public.role) == (GATEWAY_ID, Role.GATEWAY)
    assert load_identity(config.identity).public == public
    assert (fetched / "fingerprint").read_text() == f"{GATEWAY_ID} {public.fingerprint}\n"

    # the console script in the venv works: exit 4, the daemon is not running
    status = subprocess.run(
        [str(deployed.venv / "bin/iomt-gateway"), "status", "--config", str(cfg_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert status.returncode == 4, status.stderr
    assert "not running" in status.stderr


def test_installed_unit_is_the_repository_unit_with_the_prefix_paths(
    deployed: Deployment,
) -> None:
    unit = deployed.prefix / "etc/systemd/system/iomt-gateway.service"
    assert _mode(unit) == 0o644
    lines = unit.read_text().splitlines()
    assert lines[0].startswith("# ")  # ansible_managed
    exec_start = f"ExecStart={deployed.venv}/bin/iomt-gateway run --config {deployed.config_file}"
    assert exec_start in lines
    # with the prefix and the test's user taken out, it is systemd/iomt-gateway.service
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    service_user = {f"User={user}": "User=iomt", f"Group={group}": "Group=iomt"}
    text = "\n".join(lines[1:]).replace(str(deployed.prefix), "")
    normalised = [service_user.get(line, line) for line in text.splitlines()]
    assert normalised == (ROOT / "systemd/iomt-gateway.service").read_text().splitlines()


def test_second_site_run_changes_nothing(deployed: Deployment) -> None:
    assert RESTART in deployed.first.output
    recap = _play(deployed.env, "site.yml", *deployed.args)
    assert recap.changed == 0, recap.changed_tasks
    assert recap.stats["ok"] > 0
    assert RESTART not in recap.output


def test_a_configuration_change_notifies_the_restart(deployed: Deployment) -> None:
    config = load_config(deployed.config_file)
    for level in ("debug", config.log.level):  # and back
        recap = _play(
            deployed.env, "site.yml", *deployed.args, "-e", f"iomt_gateway_log_level={level}"
        )
        assert recap.changed_tasks == ["Template the gateway configuration"]
        assert RESTART in recap.output
        assert load_config(deployed.config_file).log.level == level


def test_upgrade_with_the_installed_wheel_changes_nothing(deployed: Deployment) -> None:
    recap = _play(deployed.env, "upgrade.yml", *deployed.args)
    assert recap.changed == 0, recap.changed_tasks
    assert recap.stats["ok"] > 0


def test_an_unknown_configuration_key_is_refused(deployed: Deployment) -> None:
    before = deployed.config_file.read_bytes()
    bogus = json.dumps({"iomt_gateway_config_extra": {"sessions": {"max_sesions": 10}}})
    proc = _run(deployed.env, "site.yml", *deployed.args, "-e", bogus)
    assert proc.returncode != 0
    # the daemon's parser rejected the rendered file: the installed one is untouched
    assert _failed_task(proc.stdout) == "Template the gateway configuration", proc.stdout
    assert deployed.config_file.read_bytes() == before
    assert MQTT_PASSWORD not in proc.stdout + proc.stderr


def test_a_changed_gateway_id_is_refused_while_the_old_identity_is_there(
    deployed: Deployment,
) -> None:
    before = deployed.config_file.read_bytes()
    other = {
        "iomt_gateway_id": "gw-other",
        "vault_iomt_gateway_mqtt_passwords": {"gw-other": MQTT_PASSWORD},
        "vault_iomt_gateway_amqp_passwords": {"gw-other": AMQP_PASSWORD},
    }
    proc = _run(deployed.env, "site.yml", *deployed.args, "-e", json.dumps(other))
    assert proc.returncode != 0
    failed = _failed_task(proc.stdout)
    assert failed == "Check that the existing identity belongs to this gateway id", proc.stdout
    assert "changed: [localhost]" not in proc.stdout
    assert deployed.config_file.read_bytes() == before


def test_enroll_and_revoke_a_wearable(deployed: Deployment) -> None:
    wearables = deployed.controller / "wearables"
    wearables.mkdir(parents=True)
    wearable = Identity.generate("wearable-0001", Role.SENSOR, SigAlg.ML_DSA_44)
    save_public_identity(wearable.public, wearables / "wearable-0001.pub")
    registry_file = deployed.state_dir / "registry.json"
    revoke = ("-e", json.dumps({"iomt_gateway_revoke": ["wearable-0001", "wearable-0404"]}))

    first = _play(deployed.env, "enroll.yml", *deployed.args)
    assert "Enrol the new wearables and reload the daemon" in first.changed_tasks
    assert load_registry(registry_file).lookup("wearable-0001") == wearable.public
    assert _mode(registry_file) == 0o640
    # the gateways' public identities, collected for `iomt-aggregator enroll`
    collected = deployed.controller / "aggregator-enrol" / f"{GATEWAY_ID}.pub"
    assert collected.read_bytes() == (deployed.state_dir / "identity.pub").read_bytes()

    again = _play(deployed.env, "enroll.yml", *deployed.args)
    assert again.changed == 0, again.changed_tasks

    revoked = _play(deployed.env, "enroll.yml", *deployed.args, *revoke)
    assert revoked.changed_tasks == ["Revoke wearables and reload the daemon"]
    with pytest.raises(RevokedPeerError):
        load_registry(registry_file).lookup("wearable-0001")
    assert "wearable-0404" not in load_registry(registry_file)

    # a revocation sticks although the wearable's file is still there
    for extra in ((), revoke):
        recap = _play(deployed.env, "enroll.yml", *deployed.args, *extra)
        assert recap.changed == 0, recap.changed_tasks
    with pytest.raises(RevokedPeerError):
        load_registry(registry_file).lookup("wearable-0001")


def test_placeholder_secrets_are_refused(
    tmp_path: Path, ansible_env: dict[str, str], wheel: Path
) -> None:
    # group_vars/gateways/vault.yml as shipped: the example values for gw-01
    prefix = tmp_path / "root"
    extra = {
        **_prefix_vars(prefix, tmp_path / "controller"),
        "iomt_gateway_wheel": str(wheel),
        "iomt_gateway_id": "gw-01",
    }
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    inventory = _inventory(tmp_path / "inventory.json")
    proc = _run(ansible_env, "site.yml", "-i", str(inventory), "-e", f"@{tmp_path / 'extra.json'}")
    assert proc.returncode != 0
    assert _failed_task(proc.stdout) == "Refuse placeholder secrets", proc.stdout + proc.stderr
    assert "still holds the example placeholder" in proc.stdout
    assert "CHANGE-ME-mqtt-gw-01" not in proc.stdout + proc.stderr
    assert not prefix.exists()


# --- last, as they leave another gateway registry installed --------------------------------


def test_a_gateway_registry_with_other_roles_is_refused(
    deployed: Deployment, tmp_path: Path
) -> None:
    installed = deployed.state_dir / "gateways.json"
    before = installed.read_bytes()
    _gateway_registry(tmp_path / "mixed.json", ["gw-a", "intruder"], Role.AGGREGATOR)
    mixed = ("-e", f"iomt_gateway_gateway_registry={tmp_path / 'mixed.json'}")
    proc = _run(deployed.env, "site.yml", *deployed.args, *mixed)
    assert proc.returncode != 0
    assert _failed_task(proc.stdout) == "Install the registry of gateway identities", proc.stdout
    assert installed.read_bytes() == before


def test_a_new_gateway_registry_is_installed_and_notifies_the_restart(
    deployed: Deployment, tmp_path: Path
) -> None:
    installed = deployed.state_dir / "gateways.json"
    newer = _gateway_registry(tmp_path / "gateways.json", ["gw-a", "gw-b", "gw-c"])
    var = ("-e", f"iomt_gateway_gateway_registry={tmp_path / 'gateways.json'}")
    recap = _play(deployed.env, "site.yml", *deployed.args, *var)
    assert recap.changed_tasks == ["Install the registry of gateway identities"]
    assert RESTART in recap.output
    assert load_registry(installed).to_json() == newer.to_json()
    assert _mode(installed) == 0o640
