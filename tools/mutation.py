"""Mutation testing of the security, policy and aggregation code (`make mutation`): mutmut runs
the fast tests against each small change and this writes a per-module JSON report."""

# How the mutated code is the code the tests run: mutmut 3 copies the packages into
# `<work>/mutants/`, rewrites every function of the mutated modules into a trampoline that
# picks the original or one mutant at run time, and puts `<work>/mutants` first on sys.path,
# so the tests import the copy even though the project is installed in editable mode (the
# editable finder comes after the path finder, and the copy carries the built Ascon
# extension). Before any mutant runs, mutmut makes every trampoline raise and stops with
# "Unable to force test failures" if the tests still pass.
#
# Equivalent mutants (no test can kill them because behaviour does not change) are read from
# docs/mutation-equivalents.md, whose top says how a mutant is named there.

from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENTS = Path("docs/mutation-equivalents.md")
DEFAULT_WORK = Path("build/mutation")

# Packages copied whole, so that imports between their modules resolve inside the copy (only
# the modules in TESTS are mutated).
PACKAGES = ("pqlink", "wire", "servicekit", "testbed", "gateway", "aggregator", "device_emulators")
# Files the tests read relative to the project root (the example configurations), and the
# vector generator tests/test_vectors.py checks its file against.
ALSO_COPY = ("configs", "tools")

# The mutated modules and the fast unit and property tests that cover each (no broker
# integration tests). mutmut then runs, for each mutant, only those of these tests that call
# the mutated function.
TESTS: Mapping[str, tuple[str, ...]] = {
    "pqlink/record.py": (
        "tests/test_record.py",
        "tests/test_record_limits.py",
        "tests/test_vectors.py",
        "tests/test_properties.py",
    ),
    "pqlink/handshake.py": (
        "tests/test_handshake.py",
        "tests/test_handshake_limits.py",
        "tests/test_decode_messages.py",
        "tests/test_vectors.py",
        "tests/test_properties.py",
    ),
    "pqlink/envelope.py": (
        "tests/test_envelope.py",
        "tests/test_envelope_limits.py",
        "tests/test_decode_messages.py",
        "tests/test_vectors.py",
        "tests/test_properties.py",
    ),
    "gateway/ingest.py": ("tests/test_gateway_ingest.py", "tests/test_ingest_reasons.py"),
    "gateway/sessions.py": ("tests/test_sessions.py", "tests/test_gateway_ingest.py"),
    "gateway/energy.py": ("tests/test_energy.py", "tests/test_energy_edges.py"),
    "aggregator/strategies.py": ("tests/test_strategies.py", "tests/test_aggregator_logic.py"),
    "aggregator/validation.py": ("tests/test_validation.py", "tests/test_aggregator_logic.py"),
    "pqlink/shamir.py": ("tests/test_shamir.py",),
    "pqlink/_secagg_codec.py": (
        "tests/test_secagg_fields.py",
        "tests/test_secagg_parts.py",
        "tests/test_secagg.py",
        "tests/test_secure_update.py",
    ),
    "pqlink/secagg.py": (
        "tests/test_secagg.py",
        "tests/test_secagg_recovery.py",
        "tests/test_secagg_partials.py",
        "tests/test_secagg_aborts.py",
        "tests/test_secagg_key_schedule.py",
        "tests/test_secagg_parts.py",
        "tests/test_adverts_ahead.py",
        "tests/test_secure_update.py",
    ),
    "pqlink/_secagg_encoding.py": ("tests/test_secagg_encoding.py", "tests/test_secagg_parts.py"),
    "pqlink/_secagg_graph.py": ("tests/test_secagg_graph.py", "tests/test_secagg_parts.py"),
    "aggregator/privacy.py": ("tests/test_privacy_ledger.py",),
    "aggregator/adverts_ahead.py": ("tests/test_adverts_ahead.py",),
    "pqlink/broadcast.py": (
        "tests/test_broadcast.py",
        "tests/test_broadcast_fields.py",
        "tests/test_global_intake.py",
    ),
    "pqlink/signed_batch.py": (
        "tests/test_signed_batch.py",
        "tests/test_signed_batch_fields.py",
        "tests/test_secure_update.py",
    ),
    "aggregator/key_epochs.py": ("tests/test_key_epochs.py", "tests/test_aggregator_logic.py"),
    "gateway/spool.py": (
        "tests/test_spool_outbox.py",
        "tests/test_spool_parts.py",
        "tests/test_global_intake.py",
        "tests/test_gateway_store.py",
    ),
    "gateway/windows.py": ("tests/test_windows.py", "tests/test_window_cache.py"),
    "gateway/delivery.py": ("tests/test_delivery.py", "tests/test_delivery_ledger.py"),
    "wire/feature_scaling.py": (
        "tests/test_feature_scaling.py",
        "tests/test_feature_scaling_fields.py",
    ),
    "gateway/store.py": (
        "tests/test_gateway_store.py",
        "tests/test_store_limits.py",
        "tests/test_ingest_reasons.py",
        "tests/test_windows.py",
    ),
    "pqlink/delivery.py": (
        "tests/test_delivery.py",
        "tests/test_delivery_ledger.py",
        "tests/test_wire_records.py",
        "tests/test_properties.py",
    ),
    "wire/vitals.py": (
        "tests/test_wire_records.py",
        "tests/test_properties.py",
        "tests/test_gateway_ingest.py",
    ),
    "wire/rr.py": ("tests/test_rr_record.py", "tests/test_wire_records.py"),
    "wire/fl.py": (
        "tests/test_fl_fields.py",
        "tests/test_properties.py",
        "tests/test_aggregator_logic.py",
        "tests/test_validation.py",
    ),
    "gateway/features.py": ("tests/test_features.py", "tests/test_features_fields.py"),
    "gateway/rhythm.py": (
        "tests/test_rhythm_features.py",
        "tests/test_rhythm_model.py",
        "tests/test_rhythm_fields.py",
    ),
    "pqlink/identity.py": (
        "tests/test_identity.py",
        "tests/test_identity_fields.py",
        "tests/test_key_files.py",
    ),
    "pqlink/keys.py": (
        "tests/test_keys_fields.py",
        "tests/test_vectors.py",
        "tests/test_handshake_limits.py",
        "tests/test_secagg_key_schedule.py",
    ),
    "pqlink/kdf.py": ("tests/test_keys_fields.py", "tests/test_secagg_key_schedule.py"),
    "pqlink/_codec.py": (
        "tests/test_keys_fields.py",
        "tests/test_decode_messages.py",
        "tests/test_record_limits.py",
    ),
    "aggregator/momentum.py": ("tests/test_momentum.py", "tests/test_aggregation_parts.py"),
    "aggregator/partials.py": (
        "tests/test_aggregation_parts.py",
        "tests/test_aggregator_logic.py",
        "tests/test_momentum.py",
    ),
    "aggregator/masked.py": ("tests/test_aggregation_parts.py",),
    "wire/weighting.py": ("tests/test_aggregation_parts.py",),
    "wire/secagg.py": (
        "tests/test_secagg_wire_fields.py",
        "tests/test_secure_update.py",
        "tests/test_adverts_ahead.py",
        "tests/test_aggregation_parts.py",
    ),
    "aggregator/secure_round.py": (
        "tests/test_secure_round_parts.py",
        "tests/test_secure_update.py",
        "tests/test_adverts_ahead.py",
    ),
    "aggregator/secure_rounds.py": (
        "tests/test_secure_rounds_gate.py",
        "tests/test_privacy_gate.py",
    ),
    "gateway/secure_update.py": (
        "tests/test_secure_update_fields.py",
        "tests/test_secure_update.py",
        "tests/test_adverts_ahead.py",
    ),
    "wire/envelopes.py": (
        "tests/test_envelope_codecs.py",
        "tests/test_aggregation_parts.py",
        "tests/test_validation.py",
    ),
    "wire/reasons.py": (
        "tests/test_ingest_reasons.py",
        "tests/test_aggregation_parts.py",
        "tests/test_validation.py",
        "tests/test_secure_update.py",
    ),
    "aggregator/rounds.py": (
        "tests/test_round_coordinator.py",
        "tests/test_aggregator_logic.py",
        "tests/test_momentum.py",
    ),
    "gateway/config.py": (
        "tests/test_gateway_config_fields.py",
        "tests/test_gateway_config.py",
        "tests/test_store_limits.py",
    ),
    "aggregator/config.py": (
        "tests/test_aggregator_config_fields.py",
        "tests/test_aggregator_logic.py",
        "tests/test_feature_stats_config.py",
        "tests/test_momentum.py",
    ),
    "servicekit/config.py": (
        "tests/test_servicekit_config.py",
        "tests/test_feature_stats_config.py",
        "tests/test_gateway_config.py",
        "tests/test_momentum.py",
    ),
    "gateway/trainer.py": ("tests/test_trainer_parts.py", "tests/test_trainer.py"),
    "wire/model.py": ("tests/test_trainer_parts.py", "tests/test_trainer.py"),
    "gateway/learning.py": (
        "tests/test_learning_parts.py",
        "tests/test_feature_stats_gateway.py",
        "tests/test_trainer.py",
    ),
    "gateway/federated_stats.py": (
        "tests/test_federated_stats_parts.py",
        "tests/test_federated_stats.py",
    ),
    "gateway/af_rule.py": ("tests/test_af_rule.py", "tests/test_rhythm_features.py"),
    "servicekit/notify.py": ("tests/test_servicekit_logs.py", "tests/test_notify_and_logs.py"),
    "servicekit/logs.py": ("tests/test_servicekit_logs.py", "tests/test_notify_and_logs.py"),
    "wire/amqp.py": ("tests/test_broker_urls.py",),
    "wire/topics.py": (
        "tests/test_topics.py",
        "tests/test_delivery_ledger.py",
        "tests/test_ingest_reasons.py",
        "tests/test_gateway_ingest.py",
    ),
    "aggregator/round_store.py": (
        "tests/test_round_store.py",
        "tests/test_round_coordinator.py",
        "tests/test_aggregator_logic.py",
        "tests/test_momentum.py",
    ),
    "device_emulators/replay.py": ("tests/test_replay_parts.py",),
}

KILLED = "killed"
SURVIVED = "survived"
TIMEOUT = "timeout"
NO_TESTS = "no tests"


@dataclass(frozen=True, slots=True)
class Mutant:
    name: str  # mutmut's own name, valid for this run only
    ident: str  # the stable identifier used in docs/mutation-equivalents.md
    status: str


@dataclass(slots=True)
class ModuleReport:
    path: str
    tests: list[str]
    mutants: list[Mutant] = field(default_factory=list)
    equivalent: dict[str, str] = field(default_factory=dict)  # identifier -> reason

    def is_equivalent(self, m: Mutant) -> bool:
        """Listed by its identifier, or by mutmut's name (with or without the module)."""
        return not self.equivalent.keys().isdisjoint(_names(m))

    def counts(self) -> dict[str, Any]:
        by_status: dict[str, int] = {}
        equivalent = 0
        for m in self.mutants:
            if m.status != KILLED and self.is_equivalent(m):
                equivalent += 1
                continue
            by_status[m.status] = by_status.get(m.status, 0) + 1
        total = len(self.mutants)
        killed = by_status.pop(KILLED, 0)
        scored = total - equivalent
        return {
            "mutants": total,
            "killed": killed,
            "survived": by_status.pop(SURVIVED, 0),
            "timeout": by_status.pop(TIMEOUT, 0),
            "no_tests": by_status.pop(NO_TESTS, 0),
            "other": by_status,
            "equivalent": equivalent,
            "score": round(killed / scored, 4) if scored else None,
        }

    def survivors(self) -> list[Mutant]:
        return [m for m in self.mutants if m.status != KILLED and not self.is_equivalent(m)]

    def stale_equivalents(self) -> list[str]:
        """Listed mutants that match no surviving mutant: removed code, or a kill."""
        alive = {n for m in self.mutants if m.status != KILLED for n in _names(m)}
        return sorted(set(self.equivalent) - alive)


def _names(m: Mutant) -> set[str]:
    return {m.ident, m.name, m.name.rpartition(".")[2]}


# A list item `- `identifier` — reason`, or a table row `| `identifier`, ... | ... | reason |`.
_ENTRY = re.compile(r"^- `(?P<ident>[^`]+)` — (?P<reason>.+)$")
_ROW = re.compile(r"^\|\s*(?P<first>`[^|]+)\|.*\|\s*(?P<reason>[^|]+?)\s*\|\s*$")


def read_equivalents(text: str) -> dict[str, dict[str, str]]:
    """{module path: {identifier: reason}} from the markdown file (see its Format section)."""
    result: dict[str, dict[str, str]] = {}
    section: str | None = None
    for line in text.splitlines():
        if line.startswith("## "):
            name = line[3:].strip()
            section = name if name.endswith(".py") else None
            if section is not None:
                result.setdefault(section, {})
            continue
        if section is None:
            continue
        if match := _ENTRY.match(line):
            result[section][match["ident"]] = match["reason"].strip()
        elif match := _ROW.match(line):
            # a row may name several mutants with the same reason: `a`, `b`
            for ident in re.findall(r"`([^`]+)`", match["first"]):
                result[section][ident] = match["reason"].strip()
    return result


def identifier(function: str, original: list[str], mutated: list[str]) -> str:
    """`function: original -> mutated`, from the changed lines of one function."""
    removed: list[str] = []
    added: list[str] = []
    for line in difflib.unified_diff(original, mutated, lineterm="", n=0):
        if line.startswith(("---", "+++", "@@")):
            continue
        (removed if line[0] == "-" else added).append(line[1:].strip())
    return f"{function}: {' / '.join(removed)} -> {' / '.join(added)}"


def _split_name(name: str) -> tuple[str, str]:
    """(generated function name, qualified original name) of a mutmut mutant name:
    `pkg.mod.x_func__mutmut_3` or `pkg.mod.xǁClassǁmethod__mutmut_3`."""
    generated = name.rpartition(".")[2]
    mangled = generated.rpartition("__mutmut_")[0]
    if mangled.startswith("x\u01c1"):
        cls, _, method = mangled[2:].partition("\u01c1")
        return generated, f"{cls}.{method}"
    return generated, mangled[2:]


def _functions(source: str) -> dict[str, list[str]]:
    """Source lines of every function in a mutated module, by (generated) name."""
    lines = source.splitlines()
    return {
        node.name: lines[node.lineno - 1 : node.end_lineno]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def prepare(work: Path, modules: Iterable[str], tests: Iterable[str], *, keep: bool) -> None:
    """A private copy of the packages and tests, with the mutmut settings of this run."""
    if work.exists() and not keep:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", ".hypothesis")
    for name in (*PACKAGES, *ALSO_COPY, "tests"):
        shutil.rmtree(work / name, ignore_errors=True)
        shutil.copytree(ROOT / name, work / name, ignore=ignore)
    settings = {
        "source_paths": list(PACKAGES),
        "only_mutate": list(modules),
        "also_copy": list(ALSO_COPY),
        "pytest_add_cli_args_test_selection": sorted(set(tests)),
        # the same examples for every mutant, so a score does not depend on luck
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "--hypothesis-seed=0"],
        "use_git_change_detection": False,
        # Message text is for people; the contract is the error class and its reason, which
        # the tests pin (docs/mutation-equivalents.md): lines that only carry a message, and
        # one-line raises of a message, are not mutated.
        "do_not_mutate_patterns": [
            r"^\s*[rbf]*[\"']",
            r"^\s*raise \w+\([rbf]*\"[^\"]*\"\)\s*$",
        ],
    }
    lines = ["", "[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    pyproject = (ROOT / "pyproject.toml").read_text() + "\n".join(lines) + "\n"
    (work / "pyproject.toml").write_text(pyproject)


def collect(
    work: Path, modules: Iterable[str], equivalents: Mapping[str, Mapping[str, str]]
) -> list[ModuleReport]:
    """Read mutmut's per-module results and name each mutant by what it changed."""
    # mutmut's own table from exit code to status (killed, survived, timeout, ...)
    from mutmut.stats import status_by_exit_code  # noqa: PLC0415

    reports = []
    for path in modules:
        report = ModuleReport(path, list(TESTS[path]), equivalent=dict(equivalents.get(path, {})))
        meta = json.loads((work / "mutants" / f"{path}.meta").read_text())
        functions = _functions((work / "mutants" / path).read_text())
        for name, code in sorted(meta["exit_code_by_key"].items()):
            generated, qualname = _split_name(name)
            orig = generated.rpartition("__mutmut_")[0] + "__mutmut_orig"
            # the two copies differ in their name on the def line: give both the real one, so
            # a changed default argument still shows
            name_only = qualname.rpartition(".")[2]
            original, mutated = (
                [lines[0].replace(n, name_only, 1), *lines[1:]]
                for n, lines in ((orig, functions[orig]), (generated, functions[generated]))
            )
            ident = identifier(qualname, original, mutated)
            report.mutants.append(Mutant(name, ident, status_by_exit_code[code]))
        reports.append(report)
    return reports


def write_report(
    reports: list[ModuleReport],
    output: Path,
    *,
    seconds: float,
    cpu_seconds: float,
    jobs: int,
    missing: list[str],
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "tool": "mutmut",
        "seconds": round(seconds, 1),
        # wall time depends on what else runs on the machine; CPU time much less
        "cpu_seconds": round(cpu_seconds, 1),
        "jobs": jobs,
        "missing_test_files": missing,
        "modules": {},
    }
    for r in reports:
        doc["modules"][r.path] = {
            **r.counts(),
            "tests": r.tests,
            "survivors": [
                {"id": m.ident, "status": m.status, "mutmut": m.name} for m in r.survivors()
            ],
            "stale_equivalents": r.stale_equivalents(),
        }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return doc


def print_summary(doc: Mapping[str, Any], output: Path, *, verbose: bool) -> None:
    print(f"{'module':28} {'mutants':>7} {'killed':>6} {'surv':>5} {'t/o':>4} {'equiv':>5} score")
    for path, m in doc["modules"].items():
        score = "-" if m["score"] is None else f"{100 * m['score']:.1f}%"
        survived = m["survived"] + m["no_tests"] + sum(m["other"].values())
        print(
            f"{path:28} {m['mutants']:7} {m['killed']:6} {survived:5} {m['timeout']:4} "
            f"{m['equivalent']:5} {score}"
        )
    for path, m in doc["modules"].items():
        if verbose and m["survivors"]:
            print(f"\n## {path}: not killed")
            for s in m["survivors"]:
                print(f"- `{s['id']}` ({s['status']}, {s['mutmut']})")
        for stale in m["stale_equivalents"]:
            print(f"stale entry in {EQUIVALENTS} ({path}): {stale}")
    for missing in doc["missing_test_files"]:
        print(f"missing test file (not run): {missing}")
    print(
        f"\n{doc['seconds']:.0f} s ({doc['cpu_seconds']:.0f} s of CPU) with {doc['jobs']} "
        f"workers; report: {output}"
    )


def run_mutmut(work: Path, jobs: int) -> tuple[int, float, float]:
    """(exit status, wall seconds, CPU seconds of mutmut and its workers)."""
    log = work / "mutmut.log"
    start = time.monotonic()
    with log.open("w") as out:
        run = subprocess.run(  # noqa: S603 (our own interpreter, fixed arguments)
            [sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs)],
            cwd=work,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    seconds = time.monotonic() - start
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode != 0:
        print(log.read_text()[-4000:], file=sys.stderr)
        print(f"mutmut failed with exit code {run.returncode}; full log: {log}", file=sys.stderr)
        return 1, seconds, 0.0
    return 0, seconds, cpu.ru_utime + cpu.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="scratch directory")
    parser.add_argument("--output", type=Path, help="JSON report (default: WORK/report.json)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", action="store_true", help="reuse results of the last run")
    parser.add_argument("--quiet", action="store_true", help="do not list the survivors")
    parser.add_argument(
        "--report-only", action="store_true", help="report on the last run in WORK, run nothing"
    )
    parser.add_argument(
        "--module",
        action="append",
        choices=list(TESTS),
        help="mutate only this module (repeatable; default: all of them)",
    )
    args = parser.parse_args(argv)
    modules: list[str] = args.module or list(TESTS)
    work = (ROOT / args.work).resolve()
    output = (ROOT / (args.output or args.work / "report.json")).resolve()

    wanted = sorted({t for m in modules for t in TESTS[m]})
    missing = [t for t in wanted if not (ROOT / t).is_file()]
    seconds = cpu_seconds = 0.0
    if not args.report_only:
        prepare(work, modules, [t for t in wanted if t not in missing], keep=args.keep)
        status, seconds, cpu_seconds = run_mutmut(work, args.jobs)
        if status != 0:
            return status
    equivalents = read_equivalents((ROOT / EQUIVALENTS).read_text())
    reports = collect(work, modules, equivalents)
    doc = write_report(
        reports, output, seconds=seconds, cpu_seconds=cpu_seconds, jobs=args.jobs, missing=missing
    )
    print_summary(doc, output, verbose=not args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
