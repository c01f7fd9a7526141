"""Every example marked ``.. netthreads-example: pytest|script`` in docs/*.rst is run.

A ``pytest`` example is a test module: all its tests must pass. A ``script`` example is plain
Python: it must exit 0. Both run with warnings as errors, in a process of their own.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

pytest_plugins = ["pytester"]

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
MARK = re.compile(
    r"^\.\. netthreads-example: (?P<kind>pytest|script)\n\n\.\. code-block:: python\n\n"
    r"(?P<body>(?:(?: {4}.*)?\n)+)",
    re.MULTILINE,
)


def examples(kind: str) -> list[tuple[str, str]]:
    """``(id, source)`` of every example of ``kind``, in document order."""
    found = []
    for doc in sorted(DOCS.glob("*.rst")):
        for i, m in enumerate(MARK.finditer(doc.read_text())):
            if m["kind"] == kind:
                found.append((f"{doc.stem}-{i}", textwrap.dedent(m["body"])))
    return found


def test_the_docs_have_examples() -> None:
    stems = {name.rsplit("-", 1)[0] for name, _ in examples("pytest") + examples("script")}
    assert {"tls", "faults", "detectors-locks", "detectors-threads", "detectors-asyncio"} <= stems


def _params(kind: str) -> list[object]:
    return [pytest.param(source, id=name) for name, source in examples(kind)]


@pytest.mark.parametrize("source", _params("pytest"))
def test_pytest_example_passes(pytester: pytest.Pytester, source: str) -> None:
    pytester.makepyfile(test_doc_example=source)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", timeout=120)
    result.assert_outcomes(passed=source.count("\ndef test_") + source.startswith("def test_"))


@pytest.mark.parametrize("source", _params("script"))
def test_script_example_runs(tmp_path: pathlib.Path, source: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", source],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
