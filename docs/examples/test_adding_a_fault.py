"""The "Adding a fault" example of docs/faults.rst: its diff applies to the package as it is,
and the fault it adds works through a real proxy (``adding_a_fault_tests.py``)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest_netthreads

HERE = pathlib.Path(__file__).resolve().parent
PACKAGE = pathlib.Path(pytest_netthreads.__file__).resolve().parent


def _run(args: list[str], cwd: pathlib.Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, **env},
    )


def test_the_example_fault_applies_and_works_through_a_real_proxy(tmp_path: pathlib.Path) -> None:
    assert shutil.which("git"), "git applies the docs' diff (git apply)"
    shutil.copytree(PACKAGE, tmp_path / "pytest_netthreads",
                    ignore=shutil.ignore_patterns("__pycache__"))
    _run(["git", "init", "-q"], tmp_path)  # so that git apply works relative to tmp_path
    applied = _run(["git", "apply", "--verbose", str(HERE / "adding_a_fault.diff")], tmp_path)
    assert applied.returncode == 0, applied.stderr
    shutil.copy(HERE / "adding_a_fault_tests.py", tmp_path / "test_inject.py")
    result = _run(
        # Without pytest-asyncio (it warns at start-up, an error under -W error) and anyio.
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:asyncio", "-p",
         "no:anyio", "-W", "error", "-q", "--rootdir", str(tmp_path), "test_inject.py"],
        tmp_path,
        PYTHONPATH=str(tmp_path),  # the patched copy, ahead of the installed package
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
