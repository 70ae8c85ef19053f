#!/usr/bin/env bash
# Builds the aggregator image from the Containerfile with podman and runs it for real: the
# coordinator and a crypto worker from the image (host network, read-only root, state in a
# volume) against a private RabbitMQ, with one gateway daemon from .venv training a round.
# The base image is a Debian root made here with debootstrap and imported (`podman import`),
# so no container registry is needed; PYTHON_IMAGE=... uses another base (e.g. the official
# python:3.11-slim-bookworm where a registry is reachable). Needs root, `make setup` done.
#
#   scripts/aggregator-image-check.sh [--suite bookworm] [--cache DIR] [--json PATH]
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
suite=bookworm
cache=/var/cache/iomt-fresh-debian
json=""
while (($#)); do
    case $1 in
        --suite) suite=$2; shift 2 ;;
        --cache) cache=$2; shift 2 ;;
        --json) json=$2; shift 2 ;;
        -h | --help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "aggregator-image-check: unknown argument: $1" >&2; exit 2 ;;
    esac
done
say() { printf 'aggregator-image-check: %s\n' "$*" >&2; }
[ "$(id -u)" -eq 0 ] || { say "needs root (debootstrap, podman)"; exit 2; }
[ -x .venv/bin/python ] || { say "run make setup first"; exit 2; }
stamp=$(date -u +%Y%m%dT%H%M%SZ)
[ -n "$json" ] || json=$repo/out/aggregator-image/$stamp.json
mkdir -p "$(dirname "$json")"
logs=$(dirname "$json")/$stamp.logs
mkdir -p "$logs"

missing=()
for p in debootstrap podman runc; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    say "installing on the host: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
mirror=$(grep -h -o -E 'https?://[^ ]*/debian/?' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
    /etc/apt/sources.list.d/*.list 2>/dev/null | grep -v -e security -e snapshot | head -n1 || true)
mirror=${mirror:-http://deb.debian.org/debian}

t0=$(date +%s)
base=${PYTHON_IMAGE:-}
base_seconds=0
if [ -z "$base" ]; then
    # The base the official image would give: Debian with Python, venv and pip (`python` and
    # `pip` on PATH as there), made with debootstrap and imported once.
    base=localhost/iomt-debian-python:$suite
    # Rebuilt when this script changes how it is made.
    base=$base-$(sed -n '/^    base=localhost/,/^    base_seconds/p' "$0" | sha256sum | cut -c1-8)
    if ! podman image exists "$base"; then
        work=$(mktemp -d /var/tmp/iomt-image-base.XXXXXX)
        trap 'rm -rf "$work"' EXIT
        say "debootstrap $suite (python3, python3-venv, python3-pip) for $base"
        debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
            "$suite" "$work/root" "$mirror" >"$logs/debootstrap.log" 2>&1
        # The host's CA bundle: package downloads here go through it (as in fresh-debian-check).
        mkdir -p "$work/root/usr/local/share/ca-certificates"
        cp /etc/ssl/certs/ca-certificates.crt "$work/root/usr/local/share/ca-certificates/host-bundle.crt"
        chroot "$work/root" update-ca-certificates >/dev/null 2>&1
        printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$work/root/etc/pip.conf"
        rm -rf "$work/root/var/cache/apt/archives"/*.deb "$work/root/var/lib/apt/lists"/*
        tar -C "$work/root" -c . | podman import --change 'CMD ["/bin/bash"]' - "$base" >/dev/null
        rm -rf "$work"
        trap - EXIT
    fi
    base_seconds=$(($(date +%s) - t0))
fi

# What this kind of machine needs (a VM with cgroup v1 controllers plus a cgroup2 mount, and
# no CAP_SYS_RESOURCE): crun refuses "cgroups in hybrid mode not supported, drop all
# controllers from cgroupv2", so runc; podman's default ulimits (nofile and nproc above the
# host's) fail with "setrlimit `RLIMIT_NOFILE`: Operation not permitted", so the host's open
# files limit and a process limit below the host's.
export PODMAN_RUNTIME=${PODMAN_RUNTIME:-runc}
limits="--ulimit nofile=$(ulimit -Hn):$(ulimit -Hn) --ulimit nproc=4096:4096"
export IOMT_PODMAN_LIMITS=$limits

image=localhost/iomt-aggregator:check
t1=$(date +%s)
say "podman build -f Containerfile (base $base)"
# Host network for the build's apt and pip downloads: the same registries as the host.
# shellcheck disable=SC2086 # $limits is a list of options
if ! podman --runtime "$PODMAN_RUNTIME" build $limits --network host --build-arg PYTHON_IMAGE="$base" -f Containerfile -t "$image" . \
    >"$logs/build.log" 2>&1; then
    say "build FAILED; last lines of $logs/build.log:"
    tail -n 30 "$logs/build.log" >&2
    exit 1
fi
build_seconds=$(($(date +%s) - t1))
size=$(podman image inspect "$image" --format '{{.Size}}')
say "built $image ($((size / 1000000)) MB) in $build_seconds s"

t2=$(date +%s)
rc=0
.venv/bin/python "$repo/scripts/aggregator_image_run.py" --image "$image" --logs "$logs" \
    >"$logs/run.json" 2>"$logs/run.log" || rc=$?
run_seconds=$(($(date +%s) - t2))
tail -n 20 "$logs/run.log" >&2

.venv/bin/python - "$json" "$base" "$image" "$size" "$base_seconds" "$build_seconds" \
    "$run_seconds" "$rc" "$logs" <<'PY'
import json, sys
path, base, image, size, base_s, build_s, run_s, rc, logs = sys.argv[1:]
try:
    run = json.load(open(f"{logs}/run.json"))
except (OSError, ValueError):
    run = {}
doc = {
    "base": base, "image": image, "image_bytes": int(size),
    "base_seconds": int(base_s), "build_seconds": int(build_s), "run_seconds": int(run_s),
    "passed": rc == "0", "run": run, "logs": logs,
}
with open(path, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
PY
say "summary: $json"
if ((rc)); then say FAIL; exit 1; fi
say PASS
