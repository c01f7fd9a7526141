"""Run every benchmark (``bench/bench_*.py``) in turn: ``python bench/run.py [--quick] [NAME...]``.

Each benchmark prints its figures side by side with its anchors, measured in the same run,
and writes them to ``bench/results/``. NAME selects benchmarks by file name part
(``servers``, ``tls``, ``faults``, ``threadleak``, ``locks``, ``fixtures``, ``syscalls``).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    args = sys.argv[1:]
    flags = [a for a in args if a.startswith("-")]
    names = [a for a in args if not a.startswith("-")]
    scripts = sorted(HERE.glob("bench_*.py"))
    if names:
        scripts = [s for s in scripts if any(n in s.stem for n in names)]
    failed = []
    for script in scripts:
        print(f"== {script.stem} ==", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, str(script), *flags])
        print(f"   ({time.perf_counter() - start:.0f}s, exit {code})", flush=True)
        if code:
            failed.append(script.stem)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
