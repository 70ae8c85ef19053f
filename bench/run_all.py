"""`make bench`: every benchmark in turn; each writes its JSON to bench/results/."""

from __future__ import annotations

import importlib

MODULES = (
    "bench_ascon",
    "bench_pqlink",
    "bench_trainer",
    "bench_ingest",
    "bench_rounds",
    "bench_secagg",
)


def main() -> int:
    failed = []
    for name in MODULES:
        print(f"== {name}")
        module = importlib.import_module(f"bench.{name}")
        if module.main([]) != 0:
            failed.append(name)
    if failed:
        print(f"budgets missed in: {', '.join(failed)} (see their JSON)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
