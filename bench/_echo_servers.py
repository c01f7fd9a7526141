"""Run one echo server in this process until stdin closes: ``python _echo_servers.py KIND``.

Prints the port on the first line; once stdin closes, the CPU seconds (every thread of the
process) used since then on a second line. KIND: netthreads-selector, netthreads-thread,
netthreads-pool, stdlib-threading, asyncio.
"""

from __future__ import annotations

import asyncio
import os
import socketserver
import sys
import threading
import time


def _wait_for_stdin_close() -> None:
    """Called right after the port is printed: wait, then print the CPU time used since."""
    start = time.process_time()
    sys.stdin.read()
    print(time.process_time() - start, flush=True)


def run_netthreads(concurrency: str) -> None:
    from pytest_netthreads import ThreadedServer, handlers

    small = os.environ.get("BENCH_ECHO_READ_SIZE")
    if small:  # an experiment: the echo's first read size (see bench_syscalls.py)
        from pytest_netthreads.servers import handlers as server_handlers

        server_handlers._SMALL = int(small)

    kwargs = {"max_workers": 64} if concurrency == "pool" else {}
    with ThreadedServer(handlers.echo, concurrency=concurrency, **kwargs) as srv:  # type: ignore[arg-type]
        print(srv.port, flush=True)
        _wait_for_stdin_close()


class _StdlibEcho(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock = self.request
        try:
            while data := sock.recv(262144):
                sock.sendall(data)
        except ConnectionError:
            pass


def run_stdlib() -> None:
    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True
        request_queue_size = 1024  # listen()'s backlog: read in __init__, so set on the class

    server = Server(("127.0.0.1", 0), _StdlibEcho)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    print(server.server_address[1], flush=True)
    _wait_for_stdin_close()
    server.shutdown()
    server.server_close()
    thread.join(5)


def run_asyncio() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(262144):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, _wait_for_stdin_close)
        server.close()

    asyncio.run(main())


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind.startswith("netthreads-"):
        run_netthreads(kind.split("-", 1)[1])
    elif kind == "stdlib-threading":
        run_stdlib()
    elif kind == "asyncio":
        run_asyncio()
    else:
        raise SystemExit(f"unknown server kind {kind!r}")
