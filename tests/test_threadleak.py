"""``--thread-leak-check`` end to end: real threads in a pytest subprocess (leaked threads die
with it), reports read from its output."""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

# Leaked threads wait on STOP, set when the inner session ends, so non-daemon threads do not
# hold the subprocess open; daemon or not, they never outlive it.
HELPERS = """
import threading

STOP = threading.Event()

def idle():
    STOP.wait(120)

def start(name, daemon=True, target=idle):
    t = threading.Thread(target=target, name=name, daemon=daemon)
    t.start()
    return t
"""

CONFTEST = """
import helpers

def pytest_unconfigure(config):
    helpers.STOP.set()
"""


@pytest.fixture
def tl(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(helpers=HELPERS)
    pytester.makeconftest(CONFTEST)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=120)


def test_thread_left_running_by_a_test_errors_at_teardown_with_a_full_report(
    tl: pytest.Pytester,
) -> None:
    tl.makepyfile(
        test_leaky="""
        from helpers import start

        def test_leaks():
            start("leaky-worker", daemon=False)

        def test_next():
            pass
        """
    )
    result = run(tl, "--thread-leak-check", "--thread-leak-grace=0.05")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaks*",
            "1 thread(s) started by test_leaky.py::test_leaks still running 0.05s after its "
            "teardown:",
            "--- thread 'leaky-worker' (non-daemon), target helpers.idle",
            "started at */helpers.py:10 in start",
            "start stack (most recent call last):",
            '  File "*test_leaky.py", line 4, in test_leaks',
            '    start("leaky-worker", daemon=False)',
            '  File "*helpers.py", line 10, in start',
            "current stack (most recent call last):",
            '  File "*helpers.py", line 6, in idle',
            "    STOP.wait(120)",
        ]
    )
    # Reported once, blamed on nobody else.
    assert "ERROR at teardown of test_next" not in result.stdout.str()


def test_off_by_default_and_ini_switches_it_on(tl: pytest.Pytester) -> None:
    tl.makepyfile(
        test_leaky="""
        from helpers import start

        def test_leaks(pytestconfig):
            start("leaky")
            assert pytestconfig.pluginmanager.get_plugin("netthreads-thread-leak") is None
        """
    )
    run(tl).assert_outcomes(passed=1)
    tl.makeini("[pytest]\nthread_leak_check = true\nthread_leak_grace = 0\n")
    result = run(tl)
    result.assert_outcomes(failed=1, errors=1)
    result.stdout.fnmatch_lines(["--- thread 'leaky' (daemon), target helpers.idle"])


def test_daemon_thread_leaks_are_reported_as_daemon(tl: pytest.Pytester) -> None:
    tl.makepyfile(
        test_d="""
        from helpers import start

        def test_leaks():
            start("bg", daemon=True)
        """
    )
    result = run(tl, "--thread-leak-check", "--thread-leak-grace=0")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["--- thread 'bg' (daemon), target helpers.idle"])


def test_fixture_leaks_belong_to_their_scope_and_are_checked_when_it_ends(
    tl: pytest.Pytester,
) -> None:
    tl.makepyfile(
        test_scopes="""
        import pytest
        from helpers import start

        @pytest.fixture
        def func_fix():
            start("from-function-fixture")
            yield

        @pytest.fixture(scope="module")
        def mod_fix():
            start("from-module-fixture")
            yield

        @pytest.fixture(scope="class")
        def cls_fix():
            start("from-class-fixture")
            yield

        @pytest.fixture(scope="session")
        def sess_fix():
            start("from-session-fixture")
            yield

        def test_function_scope(func_fix):
            pass

        def test_uses_module_fixture(mod_fix, sess_fix):
            pass

        class TestClass:
            def test_a(self, cls_fix, mod_fix):
                pass

            def test_b(self, cls_fix):
                pass

        def test_last_in_module(mod_fix):
            pass
        """
    )
    result = run(tl, "--thread-leak-check", "--thread-leak-grace=0")
    # Blamed where each scope ends: the function fixture on its test, the class fixture on the
    # class's last test, module and session fixtures on the module's (and session's) last test.
    result.assert_outcomes(passed=5, errors=3)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_function_scope*",
            "1 thread(s) started by test_scopes.py::test_function_scope still running*",
            "--- thread 'from-function-fixture' (daemon)*",
            "started at */helpers.py:10 in start",
            '  File "*test_scopes.py", line 6, in func_fix',
            "*ERROR at teardown of TestClass.test_b*",
            "1 thread(s) started by class-scoped fixture 'cls_fix' "
            "(test_scopes.py::TestClass) still running*",
            "--- thread 'from-class-fixture' (daemon)*",
            "*ERROR at teardown of test_last_in_module*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "1 thread(s) started by module-scoped fixture 'mod_fix' (test_scopes.py) still*",
            "--- thread 'from-module-fixture' (daemon)*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "1 thread(s) started by session-scoped fixture 'sess_fix' (the session) still*",
            "--- thread 'from-session-fixture' (daemon)*",
        ]
    )
    assert "ERROR at teardown of test_uses_module_fixture" not in out
    assert "ERROR at teardown of TestClass.test_a" not in out


def test_threads_stopped_by_fixtures_and_at_scope_end_are_not_leaks(tl: pytest.Pytester) -> None:
    tl.makepyfile(
        test_clean="""
        import threading
        import pytest

        def serve(stop):
            stop.wait(120)

        @pytest.fixture
        def worker():
            stop = threading.Event()
            t = threading.Thread(target=serve, args=(stop,), name="fixture-worker")
            t.start()
            yield t
            stop.set()  # the thread exits during teardown, after this line

        @pytest.fixture(scope="module")
        def mod_worker():
            stop = threading.Event()
            t = threading.Thread(target=serve, args=(stop,), name="module-worker")
            t.start()
            yield t
            stop.set()
            t.join(10)

        def test_one(worker, mod_worker):
            assert worker.is_alive() and mod_worker.is_alive()

        def test_two(mod_worker):
            assert mod_worker.is_alive()
        """
    )
    run(tl, "--thread-leak-check").assert_outcomes(passed=2)


def test_grace_joins_threads_that_finish_shortly_after_the_test(tl: pytest.Pytester) -> None:
    tl.makepyfile(
        test_grace="""
        import threading
        import time

        def test_finishes_soon():
            threading.Thread(target=time.sleep, args=(0.3,), name="almost-done").start()
        """
    )
    run(tl, "--thread-leak-check", "--thread-leak-grace=60").assert_outcomes(passed=1)
    result = run(tl, "--thread-leak-check", "--thread-leak-grace=0")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["--- thread 'almost-done' (non-daemon), target time.sleep"])


def test_executors_shut_down_without_waiting_are_fine_forgotten_ones_leak(
    tl: pytest.Pytester,
) -> None:
    tl.makepyfile(
        test_pool="""
        import concurrent.futures
        import pytest
        from helpers import STOP

        def test_shutdown_no_wait():
            ex = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="nowait")
            ex.submit(STOP.wait, 0.2)
            ex.shutdown(wait=False)

        def test_forgotten():
            global ex  # still referenced: a collected executor would stop its workers
            ex = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="forgotten")
            assert ex.submit(sum, [1, 2]).result(timeout=60) == 3

        @pytest.fixture(scope="module")
        def pool():
            with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="modpool") as ex:
                yield ex

        def test_module_pool_first_used_by_a_test(pool):
            # The worker threads start here, but they belong to the pool's fixture.
            assert pool.submit(sum, [1, 2]).result(timeout=60) == 3

        def test_module_pool_again(pool):
            assert pool.submit(sum, [3]).result(timeout=60) == 3
        """
    )
    result = run(tl, "--thread-leak-check", "--thread-leak-grace=5")
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_forgotten*",
            "--- thread 'forgotten_0' (non-daemon), target concurrent.futures.thread._worker",
            "started at */test_pool.py:13 in test_forgotten",
        ]
    )


def test_opt_outs_marker_with_and_without_patterns_and_ini_ignore(tl: pytest.Pytester) -> None:
    tl.makeini(
        """
        [pytest]
        thread_leak_ignore =
            ^known-
            background$
        """
    )
    tl.makepyfile(
        test_opt="""
        import pytest
        from helpers import start

        @pytest.mark.allow_thread_leak
        def test_allows_all():
            start("anything")

        @pytest.mark.allow_thread_leak("^cache-", "refresher")
        def test_allows_some():
            start("cache-1")
            start("token-refresher-2")
            start("unexpected")

        def test_ini_ignore():
            start("known-pool")
            start("my-background")
        """
    )
    result = run(tl, "--thread-leak-check", "--thread-leak-grace=0")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_allows_some*",
            "1 thread(s) started by test_opt.py::test_allows_some*",
            "--- thread 'unexpected' (daemon)*",
        ]
    )
    assert "cache-1" not in result.stdout.str()


def test_module_marker_allows_its_fixtures_and_tests(tl: pytest.Pytester) -> None:
    tl.makepyfile(
        test_mod="""
        import pytest
        from helpers import start

        pytestmark = pytest.mark.allow_thread_leak

        @pytest.fixture(scope="module")
        def mod():
            start("mod")

        def test_a(mod):
            start("a")
        """
    )
    run(tl, "--thread-leak-check", "--thread-leak-grace=0").assert_outcomes(passed=1)


def test_bad_options_are_usage_errors_naming_the_option(tl: pytest.Pytester) -> None:
    tl.makepyfile(test_x="def test_x(): pass")
    result = run(tl, "--thread-leak-check", "--thread-leak-grace=soon")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: --thread-leak-grace {_SECONDS}, got 'soon'"]
    )
    tl.makeini("[pytest]\nthread_leak_ignore = (unclosed\n")
    result = run(tl, "--thread-leak-check")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*thread_leak_ignore: '(unclosed' is not a valid regular expression*"]
    )
    tl.makeini("[pytest]\n")
    tl.makepyfile(
        test_x="""
        import pytest
        from helpers import start

        @pytest.mark.allow_thread_leak("[")
        def test_x():
            start("x")
        """
    )
    result = run(tl, "--thread-leak-check")
    result.stdout.fnmatch_lines(
        ["*allow_thread_leak on test_x.py::test_x: '[' is not a valid regular expression*"]
    )


def test_threads_from_before_the_session_are_never_blamed(tl: pytest.Pytester) -> None:
    tl.makeconftest(
        CONFTEST
        + textwrap.dedent(
            """
            import queue, threading

            # A thread alive before the session, which itself starts threads on request.
            requests = queue.Queue()

            def spawner():
                while not helpers.STOP.is_set():
                    try:
                        name, done = requests.get(timeout=0.1)
                    except queue.Empty:
                        continue
                    helpers.start(name)
                    done.set()

            helpers.start("pre-session")
            threading.Thread(target=spawner, name="spawner", daemon=True).start()
            """
        )
    )
    tl.makepyfile(
        test_pre="""
        import threading
        import conftest

        def test_asks_old_thread_for_a_thread():
            done = threading.Event()
            conftest.requests.put(("spawned-by-old-thread", done))
            assert done.wait(60)

        def test_sees_them():
            names = {t.name for t in threading.enumerate()}
            assert "pre-session" in names
        """
    )
    result = run(tl, "--thread-leak-check", "--thread-leak-grace=0")
    result.assert_outcomes(passed=2)


def test_threads_started_by_a_tests_threads_belong_to_the_test(tl: pytest.Pytester) -> None:
    tl.makepyfile(
        test_nested="""
        import threading
        from helpers import start

        def parent():
            start("grandchild")

        def test_nested():
            t = threading.Thread(target=parent, name="child")
            t.start()
            t.join(60)

        def test_after():
            pass
        """
    )
    result = run(tl, "--thread-leak-check", "--thread-leak-grace=0")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_nested*",
            "--- thread 'grandchild' (daemon), target helpers.idle",
            "started at */helpers.py:10 in start",
            "start stack (most recent call last):",
            '  File "*test_nested.py", line 5, in parent',
        ]
    )


def test_kit_servers_and_their_connections_are_not_leaks(tl: pytest.Pytester) -> None:
    tl.makepyfile(
        test_servers="""
        import socket
        import pytest
        from pytest_netthreads import ThreadedServer, handlers

        @pytest.fixture(scope="module")
        def module_server():
            with ThreadedServer(handlers.echo) as srv:   # a thread per connection
                yield srv

        @pytest.fixture(scope="module")
        def module_client(module_server):
            with socket.create_connection(module_server.address, timeout=30) as c:
                yield c

        def test_first_use_connects(module_client):
            # The server's connection thread starts now and outlives this test: it belongs
            # to the module-scoped server, not to the test.
            module_client.sendall(b"hi")
            assert module_client.recv(2) == b"hi"

        def test_echo(echo_server):
            with socket.create_connection(echo_server.address, timeout=30) as c:
                c.sendall(b"x")
                assert c.recv(1) == b"x"

        @pytest.mark.parametrize("concurrency", ["thread", "pool"])
        def test_factory(server_factory, concurrency):
            srv = server_factory(handlers.echo, concurrency=concurrency)
            with socket.create_connection(srv.address, timeout=30) as c:
                c.sendall(b"y")
                assert c.recv(1) == b"y"

        def test_module_client_again(module_client):
            module_client.sendall(b"ok")
            assert module_client.recv(2) == b"ok"
        """
    )
    result = run(tl, "--thread-leak-check", "--socket-leak-check", "--thread-leak-grace=0")
    result.assert_outcomes(passed=5)


def test_a_server_left_running_is_reported_with_its_connection_thread(
    tl: pytest.Pytester,
) -> None:
    tl.makepyfile(
        test_forgot="""
        import socket
        from pytest_netthreads import ThreadedServer, handlers

        def test_forgets_to_stop():
            global client
            srv = ThreadedServer(handlers.echo, name="forgotten").start()
            client = socket.create_connection(srv.address, timeout=30)
            client.sendall(b"x")
            assert client.recv(1) == b"x"
        """
    )
    result = run(tl, "--thread-leak-check", "--socket-leak-check", "--thread-leak-grace=0")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "1 thread(s) started by test_forgot.py::test_forgets_to_stop still running*",
            "--- thread 'netthreads[forgotten]#0' (daemon), target "
            "pytest_netthreads.servers.core.ThreadedServer._serve_connection",
            "2 socket(s) created by test_forgot.py::test_forgets_to_stop still open*",
            "--- socket fd=* AF_INET SOCK_STREAM 127.0.0.1:* (not connected)",
            "created at */test_forgot.py:6 in test_forgets_to_stop",
            "--- socket fd=* AF_INET SOCK_STREAM 127.0.0.1:* -> 127.0.0.1:*",
            "created at */test_forgot.py:7 in test_forgets_to_stop",
        ]
    )


def test_hook_filters_or_takes_over_reports(tl: pytest.Pytester) -> None:
    tl.makeconftest(
        CONFTEST
        + textwrap.dedent(
            """
            def pytest_netthreads_thread_leaks(config, node, owner, leaks):
                # filter: forget threads this plugin knows about
                leaks[:] = [leak for leak in leaks if not leak.name.startswith("mine-")]
                if node.name == "test_taken_over":
                    for leak in leaks:
                        print(f"TAKEN OVER: {leak.name} from {leak.started_at}")
                    return True
                return None
            """
        )
    )
    tl.makepyfile(
        test_hook="""
        from helpers import start

        def test_filtered():
            start("mine-1")

        def test_taken_over():
            start("theirs-1")

        def test_reported():
            start("mine-2")
            start("other")
        """
    )
    result = run(tl, "--thread-leak-check", "--thread-leak-grace=0", "-s")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*TAKEN OVER: theirs-1 from */helpers.py:10 in start",
            "*ERROR at teardown of test_reported*",
            "1 thread(s) started by test_hook.py::test_reported still running*",
            "--- thread 'other' (daemon)*",
        ]
    )


def test_teardown_error_keeps_its_own_message_and_gets_the_leaks_as_a_note(
    tl: pytest.Pytester,
) -> None:
    tl.makepyfile(
        test_both="""
        import pytest
        from helpers import start

        @pytest.fixture
        def broken():
            yield
            start("half-stopped")
            raise RuntimeError("teardown failed")

        def test_x(broken):
            pass
        """
    )
    result = run(tl, "--thread-leak-check", "--thread-leak-grace=0")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*RuntimeError: teardown failed",
            "*1 thread(s) started by test_both.py::test_x still running*",
            "*--- thread 'half-stopped' (daemon)*",
        ]
    )


def test_xdist_workers_check_their_own_tests_and_the_report_reaches_the_controller(
    tl: pytest.Pytester,
) -> None:
    tl.makepyfile(
        test_dist="""
        import pytest
        from helpers import start

        @pytest.mark.parametrize("i", range(6))
        def test_clean(i):
            pass

        def test_leaks():
            start("leaked-on-a-worker")
        """
    )
    result = run(tl, "-n", "2", "--thread-leak-check", "--thread-leak-grace=0")
    result.assert_outcomes(passed=7, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaks*",
            "1 thread(s) started by test_dist.py::test_leaks still running*",
            "--- thread 'leaked-on-a-worker' (daemon), target helpers.idle",
            "started at */helpers.py:10 in start",
            '  File "*test_dist.py", line 9, in test_leaks',
        ]
    )


def test_parametrized_module_fixture_instances_are_each_checked(tl: pytest.Pytester) -> None:
    tl.makepyfile(
        test_param="""
        import pytest
        from helpers import start

        @pytest.fixture(scope="module", params=["a", "b"])
        def backend(request):
            start(f"backend-{request.param}")
            yield request.param

        def test_one(backend):
            pass

        def test_two(backend):
            pass
        """
    )
    result = run(tl, "--thread-leak-check", "--thread-leak-grace=0")
    # Instance "a" is finalized while test_one[b] sets up: reported at test_one[b]'s teardown
    # (the test itself runs); instance "b" at the end of the module.
    result.assert_outcomes(passed=4, errors=2)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_one[[]b[]]*"])
    result.stdout.fnmatch_lines(["--- thread 'backend-a' (daemon)*"])
    result.stdout.fnmatch_lines(["--- thread 'backend-b' (daemon)*"])
    result.stdout.fnmatch_lines(
        ["1 thread(s) started by module-scoped fixture 'backend' (test_param.py) still*"]
    )


@pytest.mark.parametrize("option", ["--thread-leak-check", "--socket-leak-check"])
def test_a_finished_thread_is_collectable_before_the_teardown(
    tl: pytest.Pytester, option: str
) -> None:
    # A library whose connection object is a Thread subclass (an SSH transport, say) tests
    # that a closed connection is garbage-collected: the check must not keep it alive.
    tl.makepyfile(
        test_collected="""
        import gc
        import threading
        import weakref

        class Transport(threading.Thread):
            def __init__(self):
                super().__init__(name="transport")
                self.peer = self  # a cycle, as connection objects often have

            def run(self):
                pass

        def test_transport_is_collected_once_closed():
            transport = Transport()
            transport.start()
            transport.join(60)
            assert not transport.is_alive()
            ref = weakref.ref(transport)
            del transport
            gc.collect()
            assert ref() is None, "something keeps the finished thread alive"
        """
    )
    run(tl, option, "--thread-leak-grace=0").assert_outcomes(passed=1)


def test_a_running_thread_nobody_references_is_still_reported_in_full(
    tl: pytest.Pytester,
) -> None:
    tl.makepyfile(
        test_dropped="""
        import gc
        import threading
        from helpers import idle

        def test_drops_its_thread():
            threading.Thread(target=idle, name="dropped", daemon=True).start()
            gc.collect()
        """
    )
    result = run(tl, "--thread-leak-check", "--thread-leak-grace=0")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "--- thread 'dropped' (daemon), target helpers.idle",
            "started at */test_dropped.py:6 in test_drops_its_thread",
            "start stack (most recent call last):",
            '  File "*test_dropped.py", line 6, in test_drops_its_thread',
            "current stack (most recent call last):",
        ]
    )


_SECONDS = "must be a finite number of seconds >= 0 and <= 9.22337e+09"


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ("option", "inf"),  # used to be accepted, then every teardown raised OverflowError
        ("option", "1e10"),
        ("option", "nan"),
        ("option", "-1"),
        ("option", ""),
        ("ini", "inf"),
        ("ini", "soon"),
    ],
)
def test_bad_grace_values_are_usage_errors_naming_option_and_ini_key(
    tl: pytest.Pytester, source: str, value: str
) -> None:
    tl.makepyfile(test_x="def test_x(): pass")
    for mode in ("--thread-leak-check", "--socket-leak-check"):
        if source == "option":
            result = run(tl, mode, f"--thread-leak-grace={value}")
            where = "--thread-leak-grace"
        else:
            tl.makeini(f"[pytest]\nthread_leak_grace = {value}\n")
            result = run(tl, mode)
            where = "ini thread_leak_grace (tox.ini)"
        assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
        result.stderr.fnmatch_lines([f"ERROR: {where} {_SECONDS}, got {value!r}"])


def test_reported_threads_and_sockets_are_not_kept_alive_by_the_report(
    tl: pytest.Pytester,
) -> None:
    tl.makepyfile(
        test_reported="""
        import gc
        import socket
        import threading
        import weakref

        release = threading.Event()
        refs = []

        def hold(sock):
            release.wait(120)
            sock.close()

        def test_leaks_a_thread_holding_a_socket():
            sock = socket.socket()
            thread = threading.Thread(target=hold, args=(sock,), name="holder", daemon=True)
            thread.start()
            refs.extend([weakref.ref(thread), weakref.ref(sock)])

        def test_both_are_collected_once_the_thread_ends():
            release.set()
            [thread] = [t for t in threading.enumerate() if t.name == "holder"]
            thread.join(60)
            del thread
            gc.collect()
            assert [ref() for ref in refs] == [None, None]
        """
    )
    result = run(tl, "--thread-leak-check", "--socket-leak-check", "--thread-leak-grace=0")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaks_a_thread_holding_a_socket*",
            "--- thread 'holder' (daemon), target test_reported.hold",
            "1 socket(s) created by test_reported.py::test_leaks_a_thread_holding_a_socket*",
        ]
    )


RAW = """
import _thread
import threading

from helpers import STOP

def serve_forever():
    STOP.wait(120)

def quick(done):
    done.set()

def test_raw_thread_leaks():
    _thread.start_new_thread(serve_forever, ())

def test_raw_thread_that_ends_is_fine():
    done = threading.Event()
    _thread.start_new_thread(quick, (done,))
    assert done.wait(10)

def test_raw_thread_started_by_a_raw_thread_is_the_tests_too():
    started = threading.Event()

    def outer():
        _thread.start_new_thread(serve_forever, ())
        started.set()

    _thread.start_new_thread(outer, ())
    assert started.wait(10)

def test_raw_thread_bad_arguments_raise_as_without_the_check():
    import pytest
    with pytest.raises(TypeError):
        _thread.start_new_thread(serve_forever, [])  # args must be a tuple
    with pytest.raises(TypeError):
        _thread.start_new_thread("not callable", ())
"""


def test_threads_started_with_the_thread_module_are_attributed_to_their_test(
    tl: pytest.Pytester,
) -> None:
    tl.makepyfile(test_raw=RAW)
    result = run(tl, "--thread-leak-check", "--thread-leak-grace=0.5", "-p", "no:randomly")
    result.assert_outcomes(passed=4, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_raw_thread_leaks _*",
            "1 thread(s) started by test_raw.py::test_raw_thread_leaks still running 0.5s "
            "after its teardown:",
            "--- thread '<_thread *>' (started with _thread, no Thread object), target "
            "test_raw.serve_forever",
            "started at *test_raw.py:13 in test_raw_thread_leaks",
            "start stack (most recent call last):",
            "*_thread.start_new_thread(serve_forever, ())",
            "current stack (most recent call last):",
            '  File "*test_raw.py", line 7, in serve_forever',
            "*STOP.wait(120)",
            "*_ ERROR at teardown of test_raw_thread_started_by_a_raw_thread_is_the_tests_too _*",
            "1 thread(s) started by test_raw.py::test_raw_thread_started_by_a_raw_thread_is_the_"
            "tests_too still running 0.5s after its teardown:",
            "--- thread '<_thread *>' (started with _thread, no Thread object), target "
            "test_raw.serve_forever",
            "started at *test_raw.py:* in outer",
        ]
    )
    result.stdout.no_fnmatch_line("*test_raw_thread_that_ends_is_fine still running*")


def test_allow_thread_leak_patterns_match_thread_module_threads(tl: pytest.Pytester) -> None:
    tl.makepyfile(
        test_raw_allowed="""
        import _thread
        import pytest
        from helpers import STOP

        @pytest.mark.allow_thread_leak("^<_thread ")
        def test_allowed():
            _thread.start_new_thread(STOP.wait, (120,))
        """
    )
    result = run(tl, "--thread-leak-check", "--thread-leak-grace=0.2")
    result.assert_outcomes(passed=1)
