"""The example in docs/detectors-threads.rst runs as written."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "detectors-threads.rst"


def test_standalone_example_runs(tmp_path: pathlib.Path) -> None:
    text = DOC.read_text()
    _, _, after = text.partition(".. threadleak-example\n\n.. code-block:: python\n\n")
    lines = []
    for line in after.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line)
    source = textwrap.dedent("\n".join(lines))
    assert "ThreadLeakChecker" in source
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", source],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
