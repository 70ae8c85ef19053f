"""Ascon-AEAD128 of the working tree against the same extension built from an earlier commit,
in one process, alternating sample by sample: the paired speed ratio at 64 B and 1 MiB.

On a shared machine two separate bench_ascon.py runs differ by tens of percent; pairing each
sample of one build with the next sample of the other cancels most of the drift."""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from setuptools import Distribution, Extension
from setuptools.command.build_ext import build_ext

import pqlink
from bench._timing import write
from pqlink import _ascon

SOURCES = ("pqlink/_ascon.c", "pqlink/_ascon_core.h")
# (label, bytes, calls per sample, samples)
SIZES = (("64B", 64, 2000, 400), ("1MiB", 1 << 20, 2, 200))


def build_baseline(revision: str, tmp: Path) -> ModuleType:
    """The extension's sources at `revision`, compiled with the package's flags, loaded
    without touching sys.modules."""
    root = Path(pqlink.__file__).resolve().parent.parent
    src = tmp / "src"
    (src / "pqlink").mkdir(parents=True)
    for name in SOURCES:
        text = subprocess.run(
            ["git", "-C", str(root), "show", f"{revision}:{name}"],
            check=True,
            capture_output=True,
        ).stdout
        (src / name).write_bytes(text)
    ext = Extension(
        "pqlink._ascon",
        sources=[str(src / SOURCES[0])],
        extra_compile_args=["-O3", "-std=c99", "-Wall", "-Wextra", "-fno-strict-aliasing"],
    )
    cmd = build_ext(Distribution({"ext_modules": [ext]}))
    cmd.build_lib = str(tmp / "lib")
    cmd.build_temp = str(tmp / "obj")
    cmd.ensure_finalized()
    cmd.run()
    spec = importlib.util.spec_from_file_location("pqlink._ascon", cmd.get_ext_fullpath(ext.name))
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def paired(baseline: ModuleType, size: int, calls: int, samples: int) -> dict[str, float]:
    key, nonce, plaintext = os.urandom(16), os.urandom(16), os.urandom(size)
    ciphertext = _ascon.encrypt(key, nonce, b"", plaintext)
    times: dict[tuple[str, str], list[float]] = {
        (build, op): [] for build in ("baseline", "current") for op in ("encrypt", "decrypt")
    }
    builds = (("baseline", baseline), ("current", _ascon))
    for i in range(samples):
        for name, module in builds if i % 2 else builds[::-1]:
            encrypt, decrypt = module.encrypt, module.decrypt
            t0 = time.perf_counter()
            for _ in range(calls):
                encrypt(key, nonce, b"", plaintext)
            t1 = time.perf_counter()
            for _ in range(calls):
                decrypt(key, nonce, b"", ciphertext)
            t2 = time.perf_counter()
            times[(name, "encrypt")].append((t1 - t0) / calls)
            times[(name, "decrypt")].append((t2 - t1) / calls)
    row: dict[str, float] = {"bytes": size}
    for op in ("encrypt", "decrypt"):
        base, cur = times[("baseline", op)], times[("current", op)]
        row[f"baseline_{op}_mb_s"] = round(size / statistics.median(base) / 1e6, 1)
        row[f"current_{op}_mb_s"] = round(size / statistics.median(cur) / 1e6, 1)
        ratios = [b / c for b, c in zip(base, cur, strict=True)]  # > 1: current is faster
        row[f"paired_speed_ratio_{op}"] = round(statistics.median(ratios), 3)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline-rev", required=True, help="git revision to compare with")
    parser.add_argument("--out", help="JSON output path (default bench/results/ascon_ab.json)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        baseline = build_baseline(args.baseline_rev, Path(tmp))
    sizes: dict[str, Any] = {}
    for label, size, calls, samples in SIZES:
        row = paired(baseline, size, calls, samples)
        sizes[label] = row
        print(
            f"{label:>5}: encrypt {row['baseline_encrypt_mb_s']:.1f} -> "
            f"{row['current_encrypt_mb_s']:.1f} MB/s (paired ratio "
            f"{row['paired_speed_ratio_encrypt']:.3f}), decrypt "
            f"{row['baseline_decrypt_mb_s']:.1f} -> {row['current_decrypt_mb_s']:.1f} MB/s "
            f"(paired ratio {row['paired_speed_ratio_decrypt']:.3f})"
        )
    write(
        "ascon_ab",
        {
            "unit": "MB/s (1e6 bytes per second), medians; ratio = baseline time / current time",
            "baseline_revision": args.baseline_rev,
            "ascon_implementation": _ascon.IMPLEMENTATION,
            "load_average_1min": round(os.getloadavg()[0], 2),
            "sizes": sizes,
            "seconds": round(time.perf_counter() - t0, 1),
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
