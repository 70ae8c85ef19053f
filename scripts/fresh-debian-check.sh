#!/usr/bin/env bash
# The README's two commands on a freshly bootstrapped Debian root, as a new user would run them:
# a minimal Debian (13 "trixie" by default) built with debootstrap in a temporary directory, a
# fresh clone of this repository's HEAD in a new user's home, `make demo` then `make test` in a
# chroot. With `--arch arm64` the root is foreign and runs under qemu-user (binfmt_misc): the C
# extension is built natively for aarch64 there, then every Ascon known-answer vector and the
# pqlink and gateway unit tests run. Prints pass/fail with timings and writes a JSON summary.
# Needs root on a Debian host; installs debootstrap (and qemu-user-static, binfmt-support for
# arm64) when missing. Not part of `make test`: it takes 10-25 minutes on amd64, longer on arm64.
#
#   scripts/fresh-debian-check.sh [--arch amd64|arm64] [--suite trixie] [--mirror URL]
#                                 [--pytest 'ARGS'] [--run 'CMD'] [--json PATH] [--cache DIR] [--keep]
#
# --pytest 'ARGS'  after `make setup`, run only `python -m pytest ARGS` (e.g. one test file)
# --run 'CMD'      run only CMD (e.g. 'make demo') in the clone as the new user
# --cache DIR      keep the bootstrapped base root as DIR/<suite>-<arch>.tar and start from it
#                  next time (the clone and everything `make` installs are always fresh); under
#                  emulation also the root with the compiler installed, <suite>-<arch>-toolchain.tar
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
arch=amd64
suite=trixie
mirror=""
pytest_args=""
run_cmd=""
json=""
cache=""
keep=0
while (($#)); do
    case $1 in
        --arch) arch=$2; shift 2 ;;
        --suite) suite=$2; shift 2 ;;
        --mirror) mirror=$2; shift 2 ;;
        --pytest) pytest_args=$2; shift 2 ;;
        --run) run_cmd=$2; shift 2 ;;
        --json) json=$2; shift 2 ;;
        --cache) cache=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "fresh-debian-check: unknown argument: $1" >&2; exit 2 ;;
    esac
done
case $arch in amd64 | arm64) ;; *) echo "fresh-debian-check: --arch amd64 or arm64" >&2; exit 2 ;; esac
[ "$(id -u)" -eq 0 ] || { echo "fresh-debian-check: needs root (debootstrap, chroot, mounts)" >&2; exit 2; }

# Mounts live in a private mount namespace: whatever happens to this script, none outlives it.
if [ -z "${IOMT_CHECK_IN_NS:-}" ]; then
    exec env IOMT_CHECK_IN_NS=1 unshare --mount --propagation private "$0" \
        --arch "$arch" --suite "$suite" ${mirror:+--mirror "$mirror"} \
        ${pytest_args:+--pytest "$pytest_args"} ${run_cmd:+--run "$run_cmd"} ${json:+--json "$json"} \
        ${cache:+--cache "$cache"} $( ((keep)) && echo --keep)
fi

say() { printf 'fresh-debian-check: %s\n' "$*" >&2; }
stamp=$(date -u +%Y%m%dT%H%M%SZ)
[ -n "$json" ] || json="$repo/out/fresh-debian/$suite-$arch-$stamp.json"
mkdir -p "$(dirname "$json")"
log_dir=$(dirname "$json")/$suite-$arch-$stamp.logs
mkdir -p "$log_dir"

# The mirror apt already uses on this host, so the check needs no other network access.
if [ -z "$mirror" ]; then
    mirror=$(grep -h -o -E 'https?://[^ ]*/debian/?' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
        /etc/apt/sources.list.d/*.list 2>/dev/null | grep -v -e security -e snapshot | head -n1 || true)
    mirror=${mirror:-http://deb.debian.org/debian}
fi

host_pkgs=(debootstrap)
[ "$arch" = arm64 ] && [ "$(dpkg --print-architecture)" != arm64 ] && host_pkgs+=(qemu-user-static binfmt-support python3-pip)
missing=()
for p in "${host_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    say "installing on the host: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

foreign=0
if [ "$arch" = arm64 ] && [ "$(dpkg --print-architecture)" != arm64 ]; then
    foreign=1
    # qemu-user-static registers its interpreters with the F flag (opened once, at registration),
    # so binaries inside the chroot run without a copy of qemu there.
    if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    fi
    if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        update-binfmts --enable qemu-aarch64
    fi
    grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 || { say "qemu-aarch64 binfmt not enabled"; exit 1; }
fi

work=$(mktemp -d /var/tmp/iomt-fresh-debian.XXXXXX)
root=$work/root
mounted=()
cleanup() {
    local rc=$?
    # The demo's output and the tests' private broker logs, for a look after the root is gone.
    if [ -d "$root/home/debian/iomt-gateway/out" ]; then
        cp -a "$root/home/debian/iomt-gateway/out" "$log_dir/clone-out" 2>/dev/null || true
    fi
    # Processes started inside the root (brokers a failed test left behind) end with it.
    if [ -d "$root" ]; then
        for p in /proc/[0-9]*; do
            [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ] && kill -KILL "${p#/proc/}" 2>/dev/null || true
        done
    fi
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[i]}" 2>/dev/null || true; done
    # --one-file-system: never into a bind mount (/dev) that failed to unmount.
    if ((keep)); then say "root kept in $root"; else rm -rf --one-file-system "$work"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

names=()
seconds=()
codes=()
failed=0   # a failed step skips the steps after it...
any_failed=0  # ...until `independent` lets the next one run; the verdict counts every step
# step NAME COMMAND...: run, time, log to $log_dir/NAME.log, record; later steps are skipped
# once one fails.
step() {
    local name=$1
    shift
    if ((failed)); then
        names+=("$name"); seconds+=(0); codes+=(-1)
        say "$name: skipped"
        return 0
    fi
    say "$name ..."
    local t0 t1 rc=0
    t0=$(date +%s.%N)
    # In the background, so errexit holds inside functions (it is off under `||`).
    "$@" >"$log_dir/$name.log" 2>&1 &
    wait $! || rc=$?
    t1=$(date +%s.%N)
    names+=("$name"); seconds+=("$(echo "$t1 - $t0" | bc)"); codes+=("$rc")
    if ((rc)); then
        failed=1
        any_failed=1
        say "$name: FAILED (exit $rc) after ${seconds[-1]} s; last lines of $log_dir/$name.log:"
        tail -n 40 "$log_dir/$name.log" >&2
    else
        say "$name: ok in ${seconds[-1]} s"
    fi
}

independent() { failed=0; }

# What a new user has before the README: a minimal system with sudo, git to clone and make.
include=sudo,git,make,ca-certificates
bootstrap_root() {
    if ((foreign)); then
        debootstrap --foreign --arch="$arch" --variant=minbase --include="$include" "$suite" "$root" "$mirror"
        chroot "$root" /debootstrap/debootstrap --second-stage
    else
        debootstrap --arch="$arch" --variant=minbase --include="$include" "$suite" "$root" "$mirror"
    fi
}
base_tar=""
toolchain_tar=""
from_toolchain=0
[ -n "$cache" ] && base_tar=$cache/$suite-$arch.tar && toolchain_tar=$cache/$suite-$arch-toolchain.tar
if ((foreign)) && [ -n "$toolchain_tar" ] && [ -f "$toolchain_tar" ]; then
    # Under emulation the compiler's packages take half an hour to configure: a root that
    # already has them (saved by an earlier run, before any clone) starts from there.
    mkdir -p "$root"
    step toolchain-from-cache tar -C "$root" -xf "$toolchain_tar"
    from_toolchain=1
elif [ -n "$base_tar" ] && [ -f "$base_tar" ]; then
    mkdir -p "$root"
    step base-from-cache tar -C "$root" -xf "$base_tar"
else
    step debootstrap bootstrap_root
    if [ -n "$base_tar" ] && ! ((failed)); then
        mkdir -p "$cache"
        tar -C "$root" -cf "$base_tar.tmp" . && mv "$base_tar.tmp" "$base_tar"
    fi
fi

mount_all() {
    mount -t proc proc "$root/proc" && mounted+=("$root/proc")
    mount -t sysfs sysfs "$root/sys" && mounted+=("$root/sys")
    mount --bind /dev "$root/dev" && mounted+=("$root/dev")
    mount --bind /dev/pts "$root/dev/pts" && mounted+=("$root/dev/pts")
    mount -t tmpfs -o mode=1777 shm "$root/dev/shm" && mounted+=("$root/dev/shm")
    if ((foreign)); then
        # qemu-user passes the host's /proc/cpuinfo through (x86 fields on an aarch64 root,
        # qemu 7.2); the cpuinfo library inside LiteRT parses it as an ARM one and crashes the
        # interpreter's constructor (SIGSEGV). A real Pi's kernel reports its cores like this:
        # a Raspberry Pi 4's Cortex-A72 (implementer 0x41, part 0xd08), ARMv8.0 features only.
        local fake=$work/cpuinfo-aarch64
        for core in 0 1 2 3; do
            printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$core"
            printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n'
            printf 'CPU part\t: 0xd08\nCPU revision\t: 3\n\n'
        done >"$fake"
        mount --bind "$fake" "$root/proc/cpuinfo" && mounted+=("$root/proc/cpuinfo")
    fi
}

prepare_root() {
    # Name resolution and the host's CA bundle (package downloads here go through it).
    cp -L /etc/resolv.conf "$root/etc/resolv.conf"
    cp /etc/hosts "$root/etc/hosts"
    mkdir -p "$root/usr/local/share/ca-certificates"
    local bundle=$root/usr/local/share/ca-certificates/host-bundle.crt
    # Under emulation update-ca-certificates takes minutes: only when the bundle is new.
    if ! cmp -s /etc/ssl/certs/ca-certificates.crt "$bundle"; then
        cp /etc/ssl/certs/ca-certificates.crt "$bundle"
        chroot "$root" update-ca-certificates >/dev/null 2>&1 || true
    fi
    # pip bundles its own CA list; point it at the system's, as on the host. A long set-up
    # under emulation must survive a connection reset by the package index.
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\nretries = 10\ntimeout = 60\n' \
        >"$root/etc/pip.conf"
    # No init runs in a chroot: package scripts must not start mosquitto or RabbitMQ as
    # services (they would outlive the check); the tests start their own privately.
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 755 "$root/usr/sbin/policy-rc.d"
    chroot "$root" id debian >/dev/null 2>&1 || chroot "$root" useradd --create-home --shell /bin/bash debian
    echo 'debian ALL=(ALL) NOPASSWD: ALL' >"$root/etc/sudoers.d/debian"
    chmod 440 "$root/etc/sudoers.d/debian"
}
((failed)) || mount_all
step prepare-root prepare_root

commit=$(git -C "$repo" rev-parse HEAD)
clone() {
    git clone --quiet --no-local "$repo" "$root/home/debian/iomt-gateway"
    git -C "$root/home/debian/iomt-gateway" checkout --quiet --detach "$commit"
    chroot "$root" chown -R debian:debian /home/debian/iomt-gateway
}
step clone clone

# as_user COMMAND: a login shell of the new user in the clone.
as_user() {
    chroot "$root" /usr/bin/env -i TERM=dumb /bin/su - debian -c "cd ~/iomt-gateway && $1"
}

test_reqs=('pytest>=8' 'pytest-timeout>=2.3' 'hypothesis>=6.100' 'setuptools>=77' 'wheel')
fetch_wheels() {
    local pyver reqs
    pyver=$(chroot "$root" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    mapfile -t reqs < <(python3 -c 'import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(p["dependencies"] + p["optional-dependencies"]["litert"]))' "$repo/pyproject.toml")
    mkdir -p "$root/var/cache/iomt-wheels"
    python3 -m pip download --isolated --quiet --cert /etc/ssl/certs/ca-certificates.crt \
        --only-binary=:all: --implementation cp --python-version "$pyver" \
        --abi "cp${pyver/./}" --abi abi3 --abi none \
        --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
        --platform manylinux_2_27_aarch64 --platform manylinux_2_28_aarch64 \
        --platform manylinux_2_34_aarch64 --platform linux_aarch64 \
        -d "$root/var/cache/iomt-wheels" "${reqs[@]}" "${test_reqs[@]}"
    chmod -R a+rX "$root/var/cache/iomt-wheels"
}

if [ -n "$run_cmd" ]; then
    run_name=${run_cmd//[^A-Za-z0-9._-]/-}  # a file name: the log is named after the step
    step "${run_name:0:60}" as_user "$run_cmd"
elif [ -n "$pytest_args" ]; then
    step make-setup as_user "make setup"
    step pytest as_user ".venv/bin/python -m pytest $pytest_args"
elif ((foreign)) || [ "$arch" = arm64 ]; then
    # Under emulation: the set-up (apt packages, .venv, the C extension compiled natively for
    # aarch64), then the library's and the daemon's unit tests, without the broker tests. sudo
    # cannot work there (binfmt's qemu entry runs setuid programs without their privileges:
    # "sudo: effective uid is not 0"), so the compiler and Python headers are installed as root
    # first, and no broker packages, which these tests do not use. The venv gets what these
    # tests import (the package with its TFLite runtime, pytest, hypothesis, setuptools), not the linters,
    # ansible and validators of the full suite: each takes minutes to install under emulation.
    if ! ((from_toolchain)); then
        step apt-packages chroot "$root" /bin/sh -c 'apt-get update -qq && \
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
gcc libc6-dev python3-dev python3-venv'
        if [ -n "$toolchain_tar" ] && ! ((failed)); then
            # Saved without the clone; --one-file-system leaves the mounted /proc, /sys, /dev out.
            tar -C "$root" --one-file-system --exclude=./home/debian/iomt-gateway \
                -cf "$toolchain_tar.tmp" . && mv "$toolchain_tar.tmp" "$toolchain_tar"
        fi
    fi
    # pip under emulation spends most of its time in the package index's TLS sessions (and in
    # retries when the index resets them): the host fetches the same aarch64 wheels from PyPI
    # for the root's Python, and the root installs from that directory without the index.
    step wheels-for-arch fetch_wheels
    step venv-and-extension as_user "python3 -m venv .venv && \
.venv/bin/python -m pip install -q --no-index --find-links /var/cache/iomt-wheels \
-e '.[litert]' $(printf "'%s' " "${test_reqs[@]}")"
    step extension-arch as_user ".venv/bin/python -c 'import platform, pqlink._ascon as a; \
print(platform.machine(), a.__file__); assert platform.machine() == \"aarch64\"' && file -L pqlink/_ascon*.so 2>/dev/null || true"
    step ascon-kat as_user ".venv/bin/python -m pytest -q -p no:cacheprovider tests/test_ascon.py"
    independent
    # As root in the clone: the disk-full test mounts a small tmpfs, which the new user does
    # through sudo elsewhere, and sudo cannot work under emulation (see above).
    step unit-tests chroot "$root" /bin/sh -c "cd /home/debian/iomt-gateway && \
.venv/bin/python -m pytest -q -p no:cacheprovider \
tests/test_record.py tests/test_handshake.py tests/test_envelope.py tests/test_identity.py \
tests/test_properties.py tests/test_shamir.py tests/test_signed_batch.py \
tests/test_energy.py tests/test_features.py tests/test_signals.py \
tests/test_gateway_store.py tests/test_gateway_config.py tests/test_gateway_ingest.py"
    # The trainer's tests in two steps: LiteRT's training signature has crashed the emulated
    # process (SIGSEGV inside the interpreter, qemu 7.2 and 10.0, with or without XNNPACK),
    # which would hide every result after it; the NumPy twin's tests run on their own.
    independent
    step trainer-numpy chroot "$root" /bin/sh -c "cd /home/debian/iomt-gateway && \
.venv/bin/python -m pytest -q -p no:cacheprovider tests/test_trainer.py -k 'not lite'"
    independent
    step trainer-litert chroot "$root" /bin/sh -c "cd /home/debian/iomt-gateway && \
.venv/bin/python -m pytest -q -p no:cacheprovider tests/test_trainer.py -k 'lite'"
else
    step make-demo as_user "make demo"
    # The two commands are independent: the tests run (and are reported) whatever the demo did.
    independent
    step make-test as_user "make test"
fi

versions=$(chroot "$root" /bin/sh -c '. /etc/os-release; printf "%s|" "$PRETTY_NAME"; \
    (python3 -c "import sys, ssl; print(sys.version.split()[0] + \"|\" + ssl.OPENSSL_VERSION)" 2>/dev/null || echo "|")' 2>/dev/null || echo "||")

python3 - "$json" "$suite" "$arch" "$commit" "$any_failed" "$versions" "$log_dir" \
    "${names[*]}" "${seconds[*]}" "${codes[*]}" <<'PY'
import json, platform, sys
path, suite, arch, commit, failed, versions, log_dir, names, secs, codes = sys.argv[1:]
os_name, py, openssl = (versions.strip().split("|") + ["", "", ""])[:3]
steps = [
    {"name": n, "seconds": round(float(s), 1), "exit": int(c)}
    for n, s, c in zip(names.split(), secs.split(), codes.split())
]
summary = {
    "suite": suite, "arch": arch, "emulated": arch != {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine()),
    "host": platform.platform(), "commit": commit, "os": os_name, "python": py, "openssl": openssl,
    "passed": failed == "0", "steps": steps,
    "total_seconds": round(sum(s["seconds"] for s in steps), 1), "logs": log_dir,
}
with open(path, "w") as f:
    json.dump(summary, f, indent=2)
    f.write("\n")
PY
say "summary: $json"
if ((any_failed)); then say "FAIL ($suite $arch)"; exit 1; fi
say "PASS ($suite $arch)"
