"""``run_buggy``: run one buggy module in a fresh ``pytest`` and keep its report in the docs.

The docs show the real report of each buggy module (``docs/examples/reports/<module>.txt``).
Each run here checks that the report it got still matches the one in the docs, in its key
lines (line numbers, ports, file descriptors, timings and other threads' stacks may differ).
To rewrite the docs' copies from fresh runs::

    NETTHREADS_WRITE_REPORTS=1 pytest examples/buggy
"""

from __future__ import annotations

import fnmatch
import os
import pathlib
import re
import shutil
import sysconfig
from collections.abc import Callable

import pytest

import pytest_netthreads

HERE = pathlib.Path(__file__).resolve().parent
REPORTS = HERE.parent.parent / "docs" / "examples" / "reports"
CHECKOUT = "/src/pytest-netthreads"  # where the docs say the reports were made
STDLIB = sysconfig.get_paths()["stdlib"]
PACKAGE = str(pathlib.Path(pytest_netthreads.__file__).resolve().parent)


def shorten(text: str, workdir: pathlib.Path) -> str:
    """The report as the docs show it: the checkout and library paths shortened."""
    text = text.replace(str(workdir), CHECKOUT)
    text = text.replace(PACKAGE, ".../pytest_netthreads")
    return text.replace(STDLIB, f".../python{STDLIB.rsplit('python', 1)[-1]}")


def report_section(lines: list[str]) -> list[str]:
    """The FAILURES/ERRORS section of a pytest run, without its ``===`` title."""
    start = next(i for i, line in enumerate(lines) if re.match(r"=+ (FAILURES|ERRORS) =+$", line))
    end = next(i for i in range(start + 1, len(lines)) if re.match(r"=+ .* =+$", lines[i]))
    return lines[start + 1 : end]


def summary_section(lines: list[str]) -> list[str]:
    """The run's pytest-netthreads section, with its ``===`` title."""
    start = next(i for i, line in enumerate(lines) if re.match(r"=+ pytest-netthreads =+$", line))
    end = next(i for i in range(start + 1, len(lines)) if re.match(r"=+ .* =+$", lines[i]))
    return lines[start:end]


_FRAME = re.compile(r'\s*(?:E\s+)?File "([^"]+)", line \d+')
_SHORT_FRAME = re.compile(r"\.\.\./\S+:\d+: in ")  # --tb=short, in the kit's code
_THREAD = re.compile(r"(?:E\s+)?--- thread ")
_HIDDEN = re.compile(r"\s+\(\d+ frames of pytest and pluggy not shown\)")


def _outside(line: str) -> bool:
    """Whether ``line`` is a frame of a file outside the checkout (stdlib, the kit)."""
    frame = _FRAME.match(line)
    return bool(frame and not frame.group(1).startswith(CHECKOUT))


def key_patterns(report: str) -> list[str]:
    """fnmatch patterns for the lines of a stored report that must still appear.

    Left out: blank lines, the frames (and their source lines) of files outside the checkout
    and the headers of threads with only such frames (they change with Python and with the
    kit's own code), and assertion diff details (they change with pytest). Numbers, ``0x``
    addresses and runs of ``_``, ``-`` or ``=`` match anything. In the current stack of a
    running thread (under a ``--- thread`` header) only the frames are kept, not their source
    lines: a busy thread is caught at whichever line of its loop it was running.
    """
    lines = report.splitlines()
    patterns = []
    skip = 0
    in_thread = False
    for i, line in enumerate(lines):
        if skip:
            skip -= 1
            continue
        if _outside(line) or _SHORT_FRAME.match(line):
            skip = 1  # and its source line
            continue
        if in_thread and _FRAME.match(line):
            skip = 1
        elif not line.startswith(("  ", "E  ")):
            in_thread = False
        if _THREAD.match(line):
            in_thread = True
            block = []
            for following in lines[i + 1 :]:
                if _FRAME.match(following) or _HIDDEN.match(following):
                    block.append(following)
                elif block and following.startswith(("    ", "E     ")):
                    continue  # a source line
                else:
                    break
            if block and all(_outside(f) or _HIDDEN.match(f) for f in block):
                continue
        if not line.strip() or re.match(r"E\s*([-+] .*)?$", line):
            continue
        pattern = re.sub(r"[*?[]", lambda m: f"[{m.group()}]", line.rstrip())
        pattern = re.sub(r"0x[0-9a-f]+|\d+", "*", pattern)
        pattern = re.sub(r"[_=-]{3,}", "*", pattern)
        patterns.append(pattern)
    return patterns


@pytest.fixture
def run_buggy(pytester: pytest.Pytester) -> Callable[..., pytest.RunResult]:
    """``run_buggy(module, *options)`` runs ``examples/buggy/<module>`` as a user would;
    with ``summary=True`` the report kept in the docs ends with the run's summary section."""

    def run(module: str, *options: str, summary: bool = False) -> pytest.RunResult:
        target = pytester.path / "examples" / "buggy"
        target.mkdir(parents=True)
        shutil.copy(HERE / module, target / module)
        result = pytester.runpytest_subprocess(
            *options, f"examples/buggy/{module}", "-p", "no:cacheprovider", timeout=120
        )
        lines = report_section(result.outlines)
        if summary:
            lines += summary_section(result.outlines)
        report = shorten("\n".join(lines), pytester.path) + "\n"
        stored = REPORTS / (pathlib.Path(module).stem + ".txt")
        if os.environ.get("NETTHREADS_WRITE_REPORTS"):
            stored.write_text(report)
        else:
            # In any order: the threads of a deadlock cycle are listed from the one that
            # closed it, which depends on timing.
            missing = [
                pattern for pattern in key_patterns(stored.read_text())
                if not any(fnmatch.fnmatch(line, pattern) for line in report.splitlines())
            ]
            assert not missing, (
                f"the report in {stored} no longer matches the output (NETTHREADS_WRITE_REPORTS=1 "
                f"rewrites it); lines not found: {missing}\noutput:\n{report}"
            )
        return result

    return run
