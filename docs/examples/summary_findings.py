"""A test module with one of each finding (the run summary example in docs/reports.rst).

Run by tests/test_summary_plugin.py in a pytest subprocess with every detector on; not
collected by the project's own run (its name does not start with ``test_``).
No module teardown: under xdist it could end the leaks before the last test's check.
"""

import socket
import threading

from pytest_netthreads import faults

stop = threading.Event()
kept = []


def test_leaks_a_thread():
    threading.Thread(target=stop.wait, args=(30,), name="never-joined", daemon=True).start()


def test_leaks_a_socket():
    kept.append(socket.socket())


def test_abba_deadlock():
    a = threading.Lock()
    b = threading.Lock()
    barrier = threading.Barrier(2)

    def one():
        with a:
            barrier.wait()
            with b:
                pass

    def two():
        with b:
            barrier.wait()
            with a:
                pass

    threads = [threading.Thread(target=f, name=n) for f, n in ((one, "w-one"), (two, "w-two"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_inverted_lock_order():
    first = threading.Lock()
    second = threading.Lock()
    with first:
        with second:
            pass
    with second:
        with first:
            pass


def test_client_fails_behind_a_fault(echo_server, fault_proxy):
    proxy = fault_proxy(echo_server, faults.LimitData(2), seed=4242)
    with socket.create_connection(proxy.address, timeout=10) as s:
        s.sendall(b"hello")
        assert s.recv(5) == b"hello"  # LimitData(2): only "he" comes back


def test_clean(echo_server):
    with socket.create_connection(echo_server.address, timeout=10) as s:
        s.sendall(b"x")
        assert s.recv(1) == b"x"
