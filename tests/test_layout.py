"""The layout's contracts: imports follow the arrows, the documented reasons and events are
exactly the enums, and the shared wire and service-kit pieces hold their limits."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import importlib
import pkgutil
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gateway.cli import main as gateway_main
from gateway.config import load_config
from pqlink import ContentType, DecodeError
from servicekit.backoff import Backoff
from servicekit.cli import ExitCode
from servicekit.config import ConfigError
from wire.envelopes import SealedCodec, UnsealedCodec, envelope_codec
from wire.fl import SETTING_RANGES, GlobalModel, ModelUpdate, RoundSettings
from wire.reasons import Event, Reason

from .conftest import Parties

ROOT = Path(__file__).resolve().parents[1]

#: Which of our top-level packages each package may import (itself always).
ALLOWED: dict[str, frozenset[str]] = {
    "pqlink": frozenset(),
    "wire": frozenset({"pqlink"}),
    "servicekit": frozenset({"pqlink", "wire"}),
    "testbed": frozenset(),
    "gateway": frozenset({"pqlink", "wire", "servicekit"}),
    "aggregator": frozenset({"pqlink", "wire", "servicekit"}),
    "device_emulators": frozenset({"pqlink", "wire", "servicekit"}),
}
OURS = frozenset({*ALLOWED, "demo", "bench", "tests", "tools"})


def imported_modules(source: str) -> list[str]:
    """Absolute names of every module a source file imports (relative imports excluded)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            # `from pkg import _private` reaches a private module (or name) just the same.
            names += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    return names


def crossings(package: str, source: str) -> list[str]:
    """Imports in a module of `package` that cross the arrows, or reach into pqlink's private
    modules from outside pqlink."""
    bad = []
    for name in imported_modules(source):
        top = name.split(".")[0]
        if top == package or top not in OURS:
            continue
        private = top == "pqlink" and any(p.startswith("_") for p in name.split(".")[1:])
        if top not in ALLOWED[package] or private:
            bad.append(name)
    return bad


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_follow_the_arrows(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    found = {
        str(f.relative_to(ROOT)): crossings(package, f.read_text())
        for f in files
        if crossings(package, f.read_text())
    }
    assert found == {}


@pytest.mark.parametrize(
    ("package", "source", "expected"),
    [
        ("pqlink", "from wire.vitals import VitalsSample\n", ["wire.vitals"]),
        ("aggregator", "from gateway.metrics import X\n", ["gateway.metrics"]),
        ("gateway", "import device_emulators.hub\n", ["device_emulators.hub"]),
        ("gateway", "from pqlink._codec import Reader\n", ["pqlink._codec"]),
        ("gateway", "from pqlink import _codec\n", ["pqlink._codec"]),
        ("servicekit", "def f() -> None:\n    import gateway.cli\n", ["gateway.cli"]),
        ("wire", "from pqlink import DecodeError\nimport json\n", []),
        ("gateway", "from wire.reasons import Reason\nfrom .x import y\n", []),
    ],
)
def test_the_arrow_check_catches_crossings(package: str, source: str, expected: list[str]) -> None:
    assert crossings(package, source) == expected


def _doc_section(title: str) -> str:
    text = (ROOT / "docs" / "operations.md").read_text()
    start = text.index(f"### {title}\n")
    end = text.find("\n#", start + 4)
    return text[start : end if end > 0 else len(text)]


def _first_column_names(section: str) -> set[str]:
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            names |= set(re.findall(r"`([a-z_]+)`", first))
    return names


def test_documented_rejection_reasons_are_exactly_the_enum() -> None:
    documented = _first_column_names(_doc_section("Rejection reasons"))
    assert documented == {r.value for r in Reason}


def test_documented_events_are_exactly_the_enum() -> None:
    documented = _first_column_names(_doc_section("Events"))
    assert documented == {e.value for e in Event}


def test_gateway_logs_only_enumerated_events() -> None:
    # A string literal as an event name would bypass the enum (and the docs check above).
    for f in sorted((ROOT / "gateway").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "event"
                and node.args
            ):
                assert not isinstance(node.args[0], ast.Constant), f"{f}:{node.lineno}"


# --- wire: round settings and FL payloads ---------------------------------------------------


@pytest.mark.parametrize(("name", "bounds"), sorted(SETTING_RANGES.items()))
def test_round_settings_accept_each_bound_and_refuse_beyond(
    name: str, bounds: tuple[float, float]
) -> None:
    lo, hi = bounds
    integer = {f.name: f.type for f in dataclasses.fields(RoundSettings)}[name] in ("int", int)
    step = 1 if integer else max(abs(hi), 1) * 1e-6
    for ok in (lo, hi):
        value = int(ok) if integer else float(ok)
        settings = RoundSettings(**{name: value})  # type: ignore[arg-type]
        assert RoundSettings.from_json(settings.to_json()) == settings
    for bad in (lo - step, hi + step):
        value = int(bad) if integer else float(bad)
        with pytest.raises(ValueError, match=name):
            RoundSettings(**{name: value})  # type: ignore[arg-type]
        with pytest.raises(DecodeError, match=name):
            RoundSettings.from_json({name: value})


@pytest.mark.parametrize(
    "obj",
    [
        [],
        {"epochs": True},
        {"epochs": 1.5},
        {"learning_rate": "0.1"},
        {"learning_rate": float("nan")},
        {"final": 1},
        {"unknown": 1},
    ],
)
def test_round_settings_refuse_bad_json(obj: object) -> None:
    with pytest.raises(DecodeError):
        RoundSettings.from_json(obj)


def test_global_model_round_trip_and_refusals() -> None:
    settings = RoundSettings(epochs=3, clip_norm=1.5, noise_multiplier=0.5, final=True)
    model = GlobalModel(b"\0" * 8, 2, 17, 1_000, settings)
    assert GlobalModel.decode(model.encode()) == model
    with pytest.raises(ValueError, match="float32"):
        GlobalModel(b"\0" * 7, 2, 7, 1_000).encode()
    blob = model.encode().replace(b'"round":17', b'"round":-1')  # same length
    with pytest.raises(DecodeError, match="round"):
        GlobalModel.decode(blob)


def test_model_update_metrics_are_scalars() -> None:
    update = ModelUpdate(b"\0" * 4, 1, {"loss": 0.5, "backend": "numpy", "clipped": False})
    assert ModelUpdate.decode(update.encode()) == update
    with pytest.raises(ValueError, match="nested"):
        ModelUpdate(b"\0" * 4, 1, {"nested": {"a": 1}}).encode()


# --- servicekit: config errors, exit codes, backoff -----------------------------------------


@pytest.mark.parametrize(
    ("key", "value"), [("power_model", "raspberry-pi-3"), ("backend", "tensorflow")]
)
def test_unknown_learning_choices_exit_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: str
) -> None:
    conf = tmp_path / "g.toml"
    conf.write_text(f'[gateway]\nid = "gw-1"\nstate_dir = "s"\n[learning]\n{key} = "{value}"\n')
    code = gateway_main(["keygen", "--config", str(conf)])
    assert code == ExitCode.USAGE
    assert int(code) == 2
    err = capsys.readouterr().err
    assert f"learning.{key} = {value!r} is invalid" in err
    with pytest.raises(ConfigError) as info:
        load_config(conf)
    assert info.value.key == f"learning.{key}"


def test_backoff_doubles_up_to_its_maximum_and_resets() -> None:
    backoff = Backoff(0.25, 1.0)
    assert [backoff.failed() for _ in range(5)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    backoff.succeeded()
    assert backoff.delay == 0.25
    with pytest.raises(ValueError, match="initial"):
        Backoff(0.0, 1.0)
    with pytest.raises(ValueError, match="initial"):
        Backoff(2.0, 1.0)


def test_backoff_waits_end_when_stopping() -> None:
    stop = threading.Event()
    stop.set()
    t0 = time.monotonic()
    assert Backoff(30.0, 60.0).wait_blocking(stop) is True

    async def stopped() -> bool:
        event = asyncio.Event()
        event.set()
        return await Backoff(30.0, 60.0).wait(event)

    assert asyncio.run(stopped()) is True
    assert time.monotonic() - t0 < 10.0
    assert asyncio.run(Backoff(0.01, 0.01).wait(asyncio.Event())) is False


def test_pqlink_imports_without_the_applications() -> None:
    code = (
        "import sys, pqlink, wire.fl, wire.reasons, servicekit.config\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'gateway', 'aggregator', 'device_emulators', 'demo', 'testbed'})\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


# --- wire: the envelope codec chosen at wiring time -----------------------------------------


def test_envelope_codecs_round_trip_and_refuse_each_other(parties: Parties) -> None:
    registry = parties.gateway_registry()
    sealed, unsealed = envelope_codec(False), envelope_codec(True)
    assert isinstance(sealed, SealedCodec)
    assert isinstance(unsealed, UnsealedCodec)
    for codec in (sealed, unsealed):
        frame = codec.seal(
            parties.gateway,
            [parties.aggregator.public],
            b"payload",
            content_type=ContentType.MODEL_UPDATE,
            round=5,
            model_version=4,
            sample_count=30,
        )
        opened = codec.open(frame, parties.aggregator, registry, max_size=len(frame))
        assert (opened.sender, opened.round, opened.model_version, opened.sample_count) == (
            "gw-01",
            5,
            4,
            30,
        )
        assert opened.content_type is ContentType.MODEL_UPDATE
        assert opened.payload == b"payload"
        assert codec.peek_round(frame) == 5
        with pytest.raises(DecodeError):
            codec.open(frame, parties.aggregator, registry, max_size=len(frame) - 1)
        other = unsealed if codec is sealed else sealed
        with pytest.raises(DecodeError):
            other.open(frame, parties.aggregator, registry)


#: Each application's one exception root (configuration errors are servicekit's ConfigError).
ROOTS = {
    "gateway": "gateway.errors.GatewayError",
    "aggregator": "aggregator.errors.AggregatorError",
    "device_emulators": "device_emulators.errors.EmulatorError",
}


def _own_exceptions(package: str) -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for info in pkgutil.walk_packages([str(ROOT / package)], prefix=f"{package}."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, BaseException)
                and obj.__module__ == info.name
            ):
                found.append(obj)
    return found


@pytest.mark.parametrize("package", sorted(ROOTS))
def test_every_exception_of_an_application_derives_from_its_root(package: str) -> None:
    module_name, _, class_name = ROOTS[package].rpartition(".")
    root = getattr(importlib.import_module(module_name), class_name)
    exceptions = _own_exceptions(package)
    assert root in exceptions
    assert len(exceptions) > 1
    assert [e.__qualname__ for e in exceptions if not issubclass(e, root)] == []
