"""Echo load generator, run in its own process: ``python _loadgen.py SHAPE PORT SECONDS``.

Shapes: ``bulk`` (one client, full duplex, bytes/s), ``rtt1`` (one client ping-pong of 32-byte
messages, round trips/s), ``rtt32`` (32 clients driven by one epoll loop, round trips/s),
``conn1000`` (1000 connections open at once, one round trip each). Prints one JSON object.
Loopback only.
"""

from __future__ import annotations

import json
import selectors
import socket
import sys
import threading
import time

HOST = "127.0.0.1"
MSG = b"m" * 32


def bulk(port: int, seconds: float) -> dict[str, float]:
    sock = socket.create_connection((HOST, port), timeout=30)
    chunk = b"b" * 262144
    stop = threading.Event()

    def send() -> None:
        while not stop.is_set():
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send)
    buf = bytearray(262144)
    received = 0
    start = time.perf_counter()
    sender.start()
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    while n := sock.recv_into(buf):
        received += n
    elapsed = time.perf_counter() - start
    sender.join()
    timer.cancel()
    sock.close()
    return {"bytes_per_second": received / elapsed, "bytes": received}


def rtt1(port: int, seconds: float) -> dict[str, float]:
    sock = socket.create_connection((HOST, port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    count = 0
    size = len(MSG)
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    while True:
        sock.sendall(MSG)
        got = 0
        while got < size:
            got += len(sock.recv(size - got))
        count += 1
        if count % 256 == 0 and time.perf_counter() > deadline:
            break
    elapsed = time.perf_counter() - start
    sock.close()
    return {"round_trips_per_second": count / elapsed, "round_trips": count}


def rtt_many(port: int, seconds: float, clients: int = 32) -> dict[str, float]:
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(clients):
        s = socket.create_connection((HOST, port), timeout=30)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        socks.append(s)
        sel.register(s, selectors.EVENT_READ, [0])
    size = len(MSG)
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    for s in socks:
        s.send(MSG)
    done = False
    while not done:
        for key, _ in sel.select(5):
            state = key.data
            data = key.fileobj.recv(4096)  # type: ignore[union-attr]
            if not data:
                raise RuntimeError("server closed a connection")
            state[0] += len(data)
            while state[0] >= size:
                state[0] -= size
                count += 1
                key.fileobj.send(MSG)  # type: ignore[union-attr]
        if time.perf_counter() > deadline:
            done = True
    elapsed = time.perf_counter() - start
    for s in socks:
        s.close()
    sel.close()
    return {"round_trips_per_second": count / elapsed, "round_trips": count}


def conn_many(port: int, seconds: float, clients: int = 1000) -> dict[str, float]:
    del seconds
    start = time.perf_counter()
    socks = [socket.create_connection((HOST, port), timeout=30) for _ in range(clients)]
    for i, s in enumerate(socks):
        s.sendall(b"%08d" % i)
    ok = 0
    for i, s in enumerate(socks):
        data = b""
        while len(data) < 8:
            chunk = s.recv(8 - len(data))
            if not chunk:
                break
            data += chunk
        ok += data == b"%08d" % i
    elapsed = time.perf_counter() - start
    for s in socks:
        s.close()
    return {"served": ok, "clients": clients, "seconds": elapsed}


SHAPES = {"bulk": bulk, "rtt1": rtt1, "rtt32": rtt_many, "conn1000": conn_many}

if __name__ == "__main__":
    shape, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    print(json.dumps(SHAPES[shape](port, secs)))
