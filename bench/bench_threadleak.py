"""Thread-leak check overhead, measured side by side in one run.

    python bench/bench_threadleak.py [--tests 3000] [--reps 7]

Two generated suites of ``--tests`` tests (spread over files of 100): ``trivial`` (each test
does nothing) and ``one thread`` (each test starts a thread and joins it, so every start
goes through the patched ``Thread.start`` and every test has a thread to check). Each suite
runs in a fresh ``python -m pytest`` subprocess with:

- no check (the baseline);
- ``--thread-leak-check`` (this plugin);
- ``--thread-leak-check --socket-leak-check``;
- ``--task-leak-check`` (asyncio tasks; trivial tests create none, so this is the per-test
  cost of the check itself);
- ``--threadleak`` (pytest-threadleak, the anchor: it diffs ``threading.enumerate()``
  around each test's call phase), when it is installed.

A conftest times the session from ``pytest_sessionstart`` to the end of
``pytest_sessionfinish`` (interpreter start-up and plugin imports excluded), in wall-clock
and in process CPU time (less disturbed by other work on a shared machine). Runs are
interleaved (the order rotating each round, after one warm-up run) and the median of
``--reps`` is taken. Each ratio is a median over the baseline's median in the same run.
Goal: ``--thread-leak-check`` <= 1.10x.

First, in-process: the cost of starting and joining one thread, plain and with the checker
recording it (``--micro-only`` runs just that).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile

SUITES = {
    "trivial": "def test_{i}():\n    pass\n",
    "one thread": (
        "def test_{i}():\n"
        "    t = threading.Thread(target=int)\n"
        "    t.start()\n"
        "    t.join()\n"
    ),
}

CONFTEST = """
import os, time
import pytest

_start = []

def pytest_sessionstart(session):
    _start.extend((time.perf_counter(), time.process_time()))

@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    with open(os.environ["BENCH_THREADLEAK_OUT"], "w") as f:
        f.write(f"{time.perf_counter() - _start[0]!r} {time.process_time() - _start[1]!r}")
"""


def configs() -> dict[str, list[str]]:
    found = {
        "no check": [],
        "--thread-leak-check": ["--thread-leak-check"],
        "--socket-leak-check": ["--socket-leak-check"],
        "--socket-leak-collected": ["--socket-leak-collected"],
        "--thread-leak-check --socket-leak-check": ["--thread-leak-check", "--socket-leak-check"],
        "--task-leak-check": ["--task-leak-check"],
    }
    if importlib.util.find_spec("pytest_threadleak") is not None:
        found["pytest-threadleak --threadleak"] = ["--threadleak"]
    return found


def write_suite(directory: str, body: str, count: int) -> None:
    os.makedirs(directory)
    with open(os.path.join(directory, "conftest.py"), "w") as f:
        f.write(CONFTEST)
    for start in range(0, count, 100):
        with open(os.path.join(directory, f"test_{start:05d}.py"), "w") as f:
            f.write("import threading\n\n")
            for i in range(start, min(start + 100, count)):
                f.write(body.format(i=i) + "\n")


def run(directory: str, args: list[str], expected: int) -> tuple[float, float]:
    out = os.path.join(directory, "time.txt")
    env = dict(os.environ, BENCH_THREADLEAK_OUT=out, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run(
        # Without pytest-asyncio and anyio (the test extra installs them; no test here is
        # async): each run measures pytest and this plugin only, as before they were installed.
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:asyncio",
         "-p", "no:anyio", *args, directory],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=directory,
    )
    if proc.returncode != 0 or f"{expected} passed" not in proc.stdout:
        raise RuntimeError(f"pytest {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr}")
    with open(out) as f:
        wall, cpu = f.read().split()
    return float(wall), float(cpu)


def per_thread_cost(count: int, reps: int) -> tuple[float, float]:
    """Microseconds to start and join one thread, plain and with the checker recording it."""
    import threading
    import time

    from pytest_netthreads.detect.threadleak import ThreadLeakChecker

    def start_and_join() -> float:
        begin = time.perf_counter()
        for _ in range(count):
            thread = threading.Thread(target=int)
            thread.start()
            thread.join()
        return (time.perf_counter() - begin) / count * 1e6

    plain: list[float] = []
    checked: list[float] = []
    for _ in range(reps):
        plain.append(start_and_join())
        checker = ThreadLeakChecker(grace=0).start()
        try:
            with checker.owned_by("bench"):
                checked.append(start_and_join())
            assert checker.check("bench") == []
        finally:
            checker.stop()
    return statistics.median(plain), statistics.median(checked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument(
        "--micro-only", action="store_true", help="only the per-thread cost (in-process)"
    )
    parser.add_argument("--quick", action="store_true", help="300 tests, 3 runs (a smoke run)")
    options = parser.parse_args()
    if options.quick:
        options.tests, options.reps = 300, 3
    if options.tests < 1 or options.reps < 1:
        parser.error("--tests and --reps must be at least 1")
    runs = configs()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {options.tests} tests, "
          f"median of {options.reps} interleaved runs")
    plain, checked = per_thread_cost(2000, max(options.reps, 5))
    results: dict[str, object] = {
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "tests": options.tests,
        "reps": options.reps,
        "thread_start_join_us": {"plain": round(plain, 1), "checked": round(checked, 1)},
    }
    suites: dict[str, list[dict[str, object]]] = {}
    print(
        f"start + join one thread: {plain:.1f} us plain, {checked:.1f} us with the checker "
        f"recording it ({checked / plain:.2f}x; 2000 threads, median of {max(options.reps, 5)})"
    )
    if options.micro_only:
        return
    with tempfile.TemporaryDirectory(prefix="bench-threadleak-") as tmp:
        for suite, body in SUITES.items():
            directory = os.path.join(tmp, suite.replace(" ", "_"))
            write_suite(directory, body, options.tests)
            walls: dict[str, list[float]] = {name: [] for name in runs}
            cpus: dict[str, list[float]] = {name: [] for name in runs}
            names = list(runs)
            run(directory, [], options.tests)  # warm-up (file cache, bytecode), not counted
            for rep in range(options.reps):
                for name in names[rep % len(names) :] + names[: rep % len(names)]:
                    wall, cpu = run(directory, runs[name], options.tests)
                    walls[name].append(wall)
                    cpus[name].append(cpu)
            base_wall = statistics.median(walls["no check"])
            base_cpu = statistics.median(cpus["no check"])
            print(f"\nsuite: {suite}")
            print(f"  {'configuration':42} {'wall s':>7} {'ratio':>6} {'CPU s':>7} {'ratio':>6}")
            rows = suites[suite] = []
            for name in runs:
                wall = statistics.median(walls[name])
                cpu = statistics.median(cpus[name])
                rows.append(
                    {
                        "configuration": name,
                        "wall_s": round(wall, 3),
                        "wall_ratio": round(wall / base_wall, 3),
                        "cpu_s": round(cpu, 3),
                        "cpu_ratio": round(cpu / base_cpu, 3),
                    }
                )
                print(
                    f"  {name:42} {wall:7.3f} {wall / base_wall:5.2f}x "
                    f"{cpu:7.3f} {cpu / base_cpu:5.2f}x"
                )
    results["suites"] = suites
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "threadleak.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
