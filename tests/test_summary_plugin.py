"""One summary section at the end of the run, and the same facts as JUnit XML properties.

Real pytest sessions in subprocesses (a deadlock could hang), each bounded by ``timeout=``.
"""

from __future__ import annotations

import pathlib
import xml.etree.ElementTree as ET

import pytest

RUN_TIMEOUT = 180

FINDINGS = (
    pathlib.Path(__file__).parent.parent / "docs" / "examples" / "summary_findings.py"
).read_text()


def _line(text: str) -> int:
    """The line number of the line of FINDINGS containing ``text``."""
    return next(i for i, line in enumerate(FINDINGS.splitlines(), 1) if text in line)


OPTIONS = (
    "--thread-leak-check",
    "--thread-leak-grace=0.2",
    "--socket-leak-check",
    "--deadlock-timeout=600",
    "--lock-order-check",
    "-p",
    "no:randomly",
)


def _properties(xml_path: str) -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        props = [(p.get("name", ""), p.get("value", "")) for p in case.iter("property")]
        found[case.get("name", "")] = props
    return found


def _summary_lines(lines: list[str]) -> list[str]:
    # The section's header line (a path in a stack above it may name pytest-netthreads too).
    start = next(i for i, line in enumerate(lines) if "= pytest-netthreads =" in line)
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("====="))
    return lines[start + 1 : end]


def _check(result: pytest.RunResult, xml_path: str) -> None:
    # The leaks are teardown errors of passing tests; the ABBA test is also an inversion.
    result.assert_outcomes(passed=3, failed=3, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*= pytest-netthreads =*",
            "thread leaks: 1",
            "  test_findings.py::test_leaks_a_thread: 'never-joined' (*wait, daemon), "
            f"started at *test_findings.py:{_line('never-joined')} in test_leaks_a_thread",
            "socket leaks: 1",
            "  test_findings.py::test_leaks_a_socket: *SOCK_STREAM*, "
            f"created at *test_findings.py:{_line('kept.append')} in test_leaks_a_socket",
            "deadlocks (wait-for cycles): 1",
            "  test_findings.py::test_abba_deadlock: wait-for cycle of 2 threads: "
            "thread 'w-*' waits for Lock created at *; thread 'w-*' waits for Lock created *",
            "lock-order inversions (potential deadlocks): 2",
            "  test_findings.py::test_abba_deadlock: Lock-order inversion * between 2 *",
            "  test_findings.py::test_inverted_lock_order: Lock-order inversion * between 2 "
            f"lock classes: test_findings.py:{_line('second = ')} -> "
            f"test_findings.py:{_line('first = ')} -> back to the first.",
            "fault seeds of failed tests (replay with --fault-seed): 1",
            "  test_findings.py::test_client_fails_behind_a_fault: "
            "127.0.0.1:*->127.0.0.1:* seed=4242",
            "=*",
        ]
    )
    # One section, and nothing for the clean test or the tests that found nothing.
    assert result.stdout.str().count("= pytest-netthreads =") == 1
    summary = _summary_lines(result.outlines)
    assert not any("test_clean" in line for line in summary)
    assert len([line for line in summary if line.startswith("  ")]) == 6

    props = _properties(xml_path)
    assert props["test_clean"] == []
    assert props["test_leaks_a_thread"] == [
        ("netthreads_thread_leak", props["test_leaks_a_thread"][0][1])
    ]
    assert "'never-joined'" in props["test_leaks_a_thread"][0][1]
    assert [n for n, _ in props["test_leaks_a_socket"]] == ["netthreads_socket_leak"]
    assert sorted(n for n, _ in props["test_abba_deadlock"]) == [
        "netthreads_deadlock",
        "netthreads_lock_order",
    ]
    assert "wait-for cycle of 2 threads" in dict(props["test_abba_deadlock"])["netthreads_deadlock"]
    assert [n for n, _ in props["test_inverted_lock_order"]] == ["netthreads_lock_order"]
    ((name, value),) = props["test_client_fails_behind_a_fault"]
    assert name == "netthreads_fault_seed"
    assert value.endswith("seed=4242")


def test_one_summary_section_and_junit_properties(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_findings=FINDINGS)
    xml_path = str(pytester.path / "report.xml")
    result = pytester.runpytest_subprocess(*OPTIONS, f"--junitxml={xml_path}", timeout=RUN_TIMEOUT)
    _check(result, xml_path)


def test_the_summary_works_under_xdist(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_findings=FINDINGS)
    xml_path = str(pytester.path / "report.xml")
    result = pytester.runpytest_subprocess(
        *OPTIONS, "-n", "2", f"--junitxml={xml_path}", timeout=RUN_TIMEOUT
    )
    _check(result, xml_path)


def test_no_section_when_nothing_was_found(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import socket

        def test_ok(echo_server):
            with socket.create_connection(echo_server.address, timeout=10) as s:
                s.sendall(b"x")
                assert s.recv(1) == b"x"
        """
    )
    result = pytester.runpytest_subprocess(*OPTIONS, timeout=RUN_TIMEOUT)
    result.assert_outcomes(passed=1)
    assert "= pytest-netthreads =" not in result.stdout.str()  # no summary section
    # The header still says which detectors were on.
    assert [line for line in result.stdout.lines if line.startswith("pytest-netthreads: ")]


def test_a_fault_seed_of_a_passing_test_is_not_listed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import socket
        from pytest_netthreads import faults

        def test_ok(echo_server, fault_proxy):
            proxy = fault_proxy(echo_server, faults.Slice(1), seed=7)
            with socket.create_connection(proxy.address, timeout=10) as s:
                s.sendall(b"xy")
                got = b""
                while len(got) < 2:
                    got += s.recv(2)
                assert got == b"xy"
        """
    )
    result = pytester.runpytest_subprocess(timeout=RUN_TIMEOUT)
    result.assert_outcomes(passed=1)
    assert "pytest-netthreads" not in result.stdout.str()
    assert "seed=7" not in result.stdout.str()
