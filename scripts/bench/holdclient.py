#!/usr/bin/env python3
"""Client for the intermission benchmark (a helper process started by bench.py).

Opens N connections to nginx, one after the other, and on connection i sends one
`GET /x?seq=i` with `X-Seq: i` (Connection: close). Every --batch requests it pauses briefly,
so that nginx accepts and reads them in the order they were sent. It then keeps the
connections open WITHOUT reading from them: no reader is registered, so this process uses no
CPU while nginx holds the requests or releases them (only 2 cores are shared by everything).

Commands on stdin, one per line; each is answered by one JSON line on stdout:
  peek             how many connections already have something to read (an answer or a close)
  collect SECONDS  read every connection until it closes (or the deadline): status counts
  close            close every connection (nginx sees its clients go away)
  exit
The first line printed is {"event": "sent", ...}, once every request has been written.
"""

import argparse
import asyncio
import json
import select
import socket
import sys
import time


def request(seq, port):
    return (f"GET /x?seq={seq} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Seq: {seq}\r\n"
            f"Connection: close\r\n\r\n").encode()


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def open_all(loop, port, n, batch, pause):
    """Connects and sends, in order; a failed connection stays in the list as None."""
    socks, errors = [], {}
    t0 = time.monotonic()
    for seq in range(1, n + 1):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            await loop.sock_connect(s, ("127.0.0.1", port))
            await loop.sock_sendall(s, request(seq, port))
        except OSError as e:
            errors[e.__class__.__name__] = errors.get(e.__class__.__name__, 0) + 1
            s.close()
            s = None
        socks.append(s)
        if seq % batch == 0:
            await asyncio.sleep(pause)
    return socks, errors, time.monotonic() - t0


def peek(socks):
    """Connections with something readable right now; a held request has nothing."""
    p = select.poll()
    for s in socks:
        if s is not None:
            p.register(s.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
    return len(p.poll(0))


async def read_to_eof(loop, s):
    chunks = []
    while True:
        data = await loop.sock_recv(s, 65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def status_of(answer):
    """HTTP status of an answer ('closed' if the connection closed without one)."""
    if not answer:
        return "closed"
    parts = answer.split(b"\r\n", 1)[0].split()
    return parts[1].decode() if len(parts) >= 2 else "garbled"


async def collect(loop, socks, timeout):
    t0 = time.monotonic()
    tasks = {asyncio.ensure_future(read_to_eof(loop, s)): s for s in socks if s is not None}
    done, pending = await asyncio.wait(tasks, timeout=timeout) if tasks else (set(), set())
    counts = {}
    for t in done:
        key = status_of(t.result()) if t.exception() is None else "error"
        counts[key] = counts.get(key, 0) + 1
    for t in pending:
        t.cancel()
    if pending:
        counts["no_answer"] = len(pending)
    return {"event": "collected", "status_counts": counts,
            "ok200": counts.get("200", 0), "seconds": time.monotonic() - t0}


def close_all(socks):
    for i, s in enumerate(socks):
        if s is not None:
            s.close()
            socks[i] = None


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("-n", type=int, required=True)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--pause-ms", type=float, default=10.0)
    ap.add_argument("--tag", default="", help="ignored; marks the command line as ours")
    args = ap.parse_args()

    loop = asyncio.get_running_loop()
    socks, errors, took = await open_all(loop, args.port, args.n, args.batch, args.pause_ms / 1000)
    emit({"event": "sent", "n": args.n, "connected": sum(s is not None for s in socks),
          "errors": errors, "seconds": took})
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        cmd = line.split()
        if not cmd or cmd[0] == "exit":
            break
        if cmd[0] == "peek":
            emit({"event": "peek", "readable": peek(socks)})
        elif cmd[0] == "collect":
            emit(await collect(loop, socks, float(cmd[1]) if len(cmd) > 1 else 30.0))
            close_all(socks)
        elif cmd[0] == "close":
            close_all(socks)
            emit({"event": "closed"})
        else:
            emit({"event": "error", "message": f"unknown command {cmd[0]!r}"})
    close_all(socks)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
