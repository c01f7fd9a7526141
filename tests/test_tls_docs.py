"""The examples in docs/tls.rst are run: each must pass as written."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

pytest_plugins = ["pytester"]

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "tls.rst"
MARK = re.compile(
    r"^\.\. netthreads-example: (?P<kind>pytest|script)\n\n\.\. code-block:: python\n\n"
    r"(?P<body>(?:(?: {4}.*)?\n)+)",
    re.MULTILINE,
)


def examples(kind: str) -> list[str]:
    found = [
        textwrap.dedent(m["body"]) for m in MARK.finditer(DOC.read_text()) if m["kind"] == kind
    ]
    assert found, f"no {kind} examples found in {DOC}"
    return found


def test_pytest_examples_pass(pytester: pytest.Pytester) -> None:
    sources = examples("pytest")
    pytester.makepyfile(**{f"test_doc_{i}": src for i, src in enumerate(sources)})
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", timeout=120)
    result.assert_outcomes(passed=sum(src.count("\ndef test_") for src in sources))


def test_script_examples_run(tmp_path: pathlib.Path) -> None:
    for source in examples("script"):
        proc = subprocess.run(
            [sys.executable, "-W", "error", "-c", source],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
