#!/usr/bin/env python3
"""HTTP/1.x backend for the intermission benchmark (a helper process started by bench.py).

  --delay 0  answers 200 at once and records, for every request, its X-Seq and X-Worker
             headers and two arrival times, both on the time.monotonic() clock (system-wide
             on Linux, so comparable with the client's):
               user:   when this process had read the whole request head;
               kernel: the kernel's receive timestamp of the request's first bytes
                       (SO_TIMESTAMPNS, i.e. when nginx sent them), which does not depend on
                       how fast this Python process gets round to the connection.
             It also records when it accepted the connection (userspace, same clock).
  --delay S  reads the request and answers only after S seconds: a backend that does not
             answer for a while (nginx waits on it like on any slow upstream). A connection
             nginx closes before that is dropped.

Every answer closes its connection (no keepalive). Control requests, sent directly and not
through nginx: GET /__count, GET /__arrivals, POST /__reset.

A plain epoll loop rather than asyncio: with 10,000 connections arriving at once the
per-request cost matters, and asyncio transports do not expose recvmsg() ancillary data.
"""

import argparse
import heapq
import json
import select
import socket
import struct
import sys
import time

SO_TIMESTAMPNS = 35  # Linux (asm-generic and x86); not exported by the socket module
ANC_SIZE = socket.CMSG_SPACE(16)  # one struct timespec
ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
          b"Connection: close\r\n\r\nok\n")
MAX_HEAD = 64 * 1024


def real_to_monotonic_offset():
    """monotonic - realtime, from the tightest of a few paired readings (the kernel stamps
    packets with CLOCK_REALTIME)."""
    best = None
    for _ in range(5):
        m1 = time.monotonic()
        r = time.time()
        m2 = time.monotonic()
        if best is None or m2 - m1 < best[0]:
            best = (m2 - m1, (m1 + m2) / 2 - r)
    return best[1]


def parse_head(head):
    """(method, path, {lowercased header: value}) of a request head (bytes)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    method, path = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return method, path, headers


def as_int(s):
    try:
        return int(s)
    except (TypeError, ValueError):
        return None


class Conn:
    __slots__ = ("sock", "buf", "t_kernel", "t_accept", "answered")

    def __init__(self, sock, t_accept):
        self.sock = sock
        self.buf = b""
        self.t_kernel = None
        self.t_accept = t_accept
        self.answered = False


class Backend:
    def __init__(self, port, delay, backlog):
        self.delay = delay
        self.records = []  # (seq, worker, t_user, t_kernel, t_accept)
        self.conns = {}
        self.timers = []  # heap of (deadline, fd, conn)
        self.ep = select.epoll()
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Set on the listener, the option is inherited by every accepted socket, so even the
        # first bytes (which may arrive before accept()) carry a timestamp.
        self.ls.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.ls.bind(("127.0.0.1", port))
        self.ls.listen(backlog)  # the kernel caps it at net.core.somaxconn
        self.ls.setblocking(False)
        self.ep.register(self.ls.fileno(), select.EPOLLIN)
        self.offset = real_to_monotonic_offset()

    def run(self):
        while True:
            timeout = 1.0
            if self.timers:
                timeout = max(0.0, min(timeout, self.timers[0][0] - time.monotonic()))
            events = self.ep.poll(timeout)
            self.offset = real_to_monotonic_offset()  # cheap (vDSO); follows NTP slewing
            for fd, _ in events:
                if fd == self.ls.fileno():
                    self.accept_all()
                else:
                    conn = self.conns.get(fd)
                    if conn is not None:
                        self.on_readable(fd, conn)
            self.run_timers()

    def accept_all(self):
        while True:
            try:
                sock, _ = self.ls.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and the like: say so, keep serving
                print(f"backend: accept: {e}", file=sys.stderr, flush=True)
                return
            sock.setblocking(False)
            self.conns[sock.fileno()] = Conn(sock, time.monotonic())
            self.ep.register(sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP)

    def close(self, fd, conn):
        self.conns.pop(fd, None)
        try:
            self.ep.unregister(fd)
        except (OSError, ValueError):
            pass
        conn.sock.close()

    def on_readable(self, fd, conn):
        try:
            data, anc, _, _ = conn.sock.recvmsg(65536, ANC_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close(fd, conn)
            return
        t_user = time.monotonic()
        if not data:  # nginx closed (e.g. its client went away while we delayed)
            self.close(fd, conn)
            return
        if conn.answered:
            return
        if conn.t_kernel is None:
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
                    sec, nsec = struct.unpack("qq", payload[:16])
                    conn.t_kernel = sec + nsec / 1e9 + self.offset
        conn.buf += data
        end = conn.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(conn.buf) > MAX_HEAD:
                self.close(fd, conn)
            return
        method, path, headers = parse_head(conn.buf[:end])
        conn.answered = True
        if path.startswith("/__"):
            self.control(fd, conn, method, path)
            return
        if self.delay > 0:
            heapq.heappush(self.timers, (t_user + self.delay, fd, id(conn)))
            return
        self.records.append((as_int(headers.get("x-seq")), as_int(headers.get("x-worker")),
                             t_user, conn.t_kernel, conn.t_accept))
        self.answer(fd, conn, ANSWER)

    def answer(self, fd, conn, payload):
        try:
            if len(payload) <= 4096:
                conn.sock.send(payload)  # fits the empty socket buffer in one go
            else:
                conn.sock.setblocking(True)
                conn.sock.settimeout(10)
                conn.sock.sendall(payload)
        except OSError:
            pass
        self.close(fd, conn)

    def run_timers(self):
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, fd, conn_id = heapq.heappop(self.timers)
            conn = self.conns.get(fd)
            if conn is not None and id(conn) == conn_id:  # not closed (and fd not reused)
                self.answer(fd, conn, ANSWER)

    def control(self, fd, conn, method, path):
        if path == "/__count":
            body = {"count": len(self.records), "open": len(self.conns) - 1}
        elif path == "/__arrivals":
            body = {"fields": ["seq", "worker", "t_user", "t_kernel", "t_accept"], "arrivals": self.records}
        elif path == "/__reset" and method == "POST":
            self.records = []
            body = {"reset": True}
        else:
            body = {"error": "unknown"}
        data = json.dumps(body).encode()
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()
        self.answer(fd, conn, head + data)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--backlog", type=int, default=65535)
    ap.add_argument("--tag", default="", help="ignored; marks the command line as ours")
    args = ap.parse_args()
    backend = Backend(args.port, args.delay, args.backlog)
    print("ready", flush=True)
    try:
        backend.run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
