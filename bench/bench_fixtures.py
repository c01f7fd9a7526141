"""Per-test fixture and lock costs, interleaved in one file: ``python bench/bench_fixtures.py``.

1. One generated test file with the kinds interleaved test by test: a trivial test, a
   function-scoped no-op fixture (pytest's own floor), a fixture that opens a loopback
   listening socket and closes it (``listen_floor``: the system calls any fresh server makes,
   the kernel's floor under a fresh server), a fresh ``echo_server``, a fresh
   ``tls_echo_server`` and pytest-httpserver's (session-reused) ``httpserver``. A conftest
   times each test's whole protocol (set-up, call, teardown) with a
   ``pytest_runtest_protocol`` hook wrapper that runs outside every other one
   (``perf_counter_ns``). A kind's cost is its median test minus the median trivial test:
   the medians drop a reused server's one-off start and shutdown, the interleaving cancels
   drift. Ratios are against the anchors of the same run.
2. ``with lock:`` in a test body, for a lock created in that body (the case users have):
   a single lock and a nested pair, ns per acquire/release, under no option, under
   ``--lock-order-check`` and under ``--deadlock-timeout``. Each mode is a pytest session of
   its own (the options are per session); the sessions are interleaved round by round and
   the best round of each kept (the least disturbed).

Every run is a fresh ``python -m pytest`` process. ``--runs`` sessions of each (default 3,
``--quick`` 1 with fewer tests); the figures of every run are printed, then their range.
Results go to ``bench/results/fixtures.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable

KINDS: dict[str, str] = {
    # kind: the test's signature arguments
    "trivial": "",
    "noop": "noop",
    "listen_floor": "listen_floor",
    "echo_server": "echo_server",
    "tls_echo_server": "tls_echo_server",
    "httpserver": "httpserver",
}

CONFTEST = """
import json, os, socket, time
import pytest

_ns = {}
_props = {}


@pytest.fixture
def noop():
    yield None


@pytest.fixture
def listen_floor():
    # The system calls any fresh loopback server makes, and nothing else: the kernel's floor.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    yield sock.getsockname()
    sock.close()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    start = time.perf_counter_ns()
    yield
    _ns[item.nodeid] = time.perf_counter_ns() - start


def pytest_runtest_logreport(report):
    for name, value in report.user_properties:
        _props.setdefault(report.nodeid, {})[name] = value


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    with open(os.environ["BENCH_FIXTURES_OUT"], "w") as f:
        json.dump({"ns": _ns, "props": _props}, f)
"""

LOCK_TESTS = """
def test_lock_single_{i}(record_property):
    lock = threading.Lock()
    start = time.perf_counter_ns()
    for _ in range({n}):
        with lock:
            pass
    record_property("ns", (time.perf_counter_ns() - start) / {n})


def test_lock_nested_{i}(record_property):
    a = threading.Lock()
    b = threading.Lock()
    start = time.perf_counter_ns()
    for _ in range({n}):
        with a:
            with b:
                pass
    record_property("ns", (time.perf_counter_ns() - start) / {n})
"""

LOCK_MODES: dict[str, list[str]] = {
    "plain": [],
    "--lock-order-check": ["--lock-order-check"],
    "--deadlock-timeout": ["--deadlock-timeout=60"],
}

# pytest-localserver defines an ``httpserver`` fixture too; the threadleak plugin is off.
_PLUGINS = ["-p", "no:cacheprovider", "-p", "no:localserver", "-p", "no:threadleak"]


def _write_fixture_suite(directory: Path, count: int) -> Path:
    path = directory / "test_fixtures.py"
    with path.open("w") as f:
        for i in range(count):
            for kind, args in KINDS.items():
                f.write(f"def test_{kind}_{i}({args}):\n    pass\n\n")
    return path


def _write_lock_suite(directory: Path, count: int, n: int) -> Path:
    path = directory / "test_locks.py"
    with path.open("w") as f:
        f.write("import threading\nimport time\n\n")
        for i in range(count):
            f.write(LOCK_TESTS.format(i=i, n=n))
    return path


def _session(directory: Path, path: Path, extra: list[str]) -> dict[str, object]:
    out = directory / "out.json"
    proc = subprocess.run(
        [PY, "-m", "pytest", "-q", *_PLUGINS, "-c", "pytest.ini", *extra, str(path)],
        cwd=directory,
        env={**os.environ, "BENCH_FIXTURES_OUT": str(out)},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if proc.returncode != 0:
        output = proc.stdout[-3000:] + proc.stderr[-3000:]
        raise RuntimeError(f"{path.name} {extra} failed:\n{output}")
    data: dict[str, object] = json.loads(out.read_text())
    return data


def fixture_run(directory: Path, path: Path) -> dict[str, float]:
    """ms per test over the median trivial test, for each kind (and the trivial median)."""
    ns: dict[str, int] = _session(directory, path, [])["ns"]  # type: ignore[assignment]
    medians = {
        kind: statistics.median(
            v for k, v in ns.items() if k.split("::")[1].rsplit("_", 1)[0] == f"test_{kind}"
        )
        for kind in KINDS
    }
    base = medians["trivial"]
    row = {kind: (value - base) / 1e6 for kind, value in medians.items() if kind != "trivial"}
    row["trivial (absolute)"] = base / 1e6
    return row


def lock_run(directory: Path, path: Path) -> dict[str, dict[str, float]]:
    """The best ns per acquire/release of each shape, for each mode (one session each)."""
    result: dict[str, dict[str, float]] = {}
    for mode, extra in LOCK_MODES.items():
        props: dict[str, dict[str, float]] = _session(directory, path, extra)["props"]  # type: ignore[assignment]
        shapes: dict[str, float] = {}
        for nodeid, values in props.items():
            shape = "single" if "_single_" in nodeid else "nested"
            shapes[shape] = min(shapes.get(shape, float("inf")), values["ns"])
        result[mode] = shapes
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="one shorter run")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--tests", type=int, default=None, help="tests of each kind")
    opts = parser.parse_args()
    runs = opts.runs or (1 if opts.quick else 3)
    tests = opts.tests or (200 if opts.quick else 1000)
    fixture_rows: list[dict[str, float]] = []
    lock_rows: list[dict[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-fixtures-") as tmp:
        directory = Path(tmp)
        (directory / "pytest.ini").write_text("[pytest]\n")
        (directory / "conftest.py").write_text(CONFTEST)
        fixtures = _write_fixture_suite(directory, tests)
        lock_suite = _write_lock_suite(directory, 20 if opts.quick else 50, 20000)
        for run in range(runs):
            row = fixture_run(directory, fixtures)
            fixture_rows.append(row)
            locks = lock_run(directory, lock_suite)
            lock_rows.append(locks)
            print(
                f"run {run + 1}: ms/test over the trivial test "
                f"(trivial itself {row['trivial (absolute)']:.3f} ms):",
                flush=True,
            )
            http = row["httpserver"]
            for kind in ("noop", "listen_floor", "echo_server", "tls_echo_server", "httpserver"):
                value = row[kind]
                print(
                    f"  {kind:17s} {value:7.3f} ms  {value / http:5.2f}x httpserver  "
                    f"{value - row['noop']:+7.3f} ms vs no-op  "
                    f"{value - row['listen_floor']:+7.3f} ms vs listen floor",
                    flush=True,
                )
            plain = locks["plain"]
            for mode, shapes in locks.items():
                print(
                    f"  with lock: {mode:19s} single {shapes['single']:6.0f} ns "
                    f"({shapes['single'] / plain['single']:4.2f}x)  nested "
                    f"{shapes['nested']:6.0f} ns ({shapes['nested'] / plain['nested']:4.2f}x)",
                    flush=True,
                )
    if runs > 1:
        print(f"over {runs} runs (min-max):")
        for kind in ("noop", "listen_floor", "echo_server", "tls_echo_server", "httpserver"):
            values = [r[kind] for r in fixture_rows]
            ratios = [r[kind] / r["httpserver"] for r in fixture_rows]
            print(
                f"  {kind:17s} {min(values):.3f}-{max(values):.3f} ms  "
                f"{min(ratios):.2f}-{max(ratios):.2f}x httpserver"
            )
        for mode in LOCK_MODES:
            for shape in ("single", "nested"):
                ratios = [r[mode][shape] / r["plain"][shape] for r in lock_rows]
                print(f"  with lock: {mode:19s} {shape:6s} {min(ratios):.2f}-{max(ratios):.2f}x")
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / "fixtures.json").write_text(
        json.dumps({"fixtures": fixture_rows, "locks": lock_rows}, indent=2)
    )


if __name__ == "__main__":
    main()
