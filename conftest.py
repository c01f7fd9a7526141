"""Shared by the project's own test directories (tests/, examples/, docs/examples/)."""

from __future__ import annotations

import pytest

# Inner pytest runs (pytester; nearly ninety start a process of their own) go without two
# plugins that the test extra installs and no inner test uses: Hypothesis's (its terminal
# summary imports all of Hypothesis) and pytest-run-parallel's (it imports Hypothesis at
# start). Either one costs about half a second of CPU per pytest process, more than the rest
# of a small inner run. Nor pytest-asyncio's and anyio's (tests/test_tasks_plugin.py runs the
# task-leak check under them): pytest-asyncio >= 0.24 warns at start-up about an unset ini
# key, an error under the inner runs' -W error. A test that needs one sets PYTEST_ADDOPTS
# itself.
INNER_RUN_ADDOPTS = "-p no:hypothesispytest -p no:run-parallel -p no:asyncio -p no:anyio"


@pytest.fixture(autouse=True)
def _lean_inner_runs(request: pytest.FixtureRequest) -> None:
    if "pytester" not in request.fixturenames:
        return
    request.getfixturevalue("pytester")  # it removes PYTEST_ADDOPTS: set it afterwards
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    monkeypatch.setenv("PYTEST_ADDOPTS", INNER_RUN_ADDOPTS)
