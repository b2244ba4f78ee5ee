"""nginx configurations, nginx and helper-process lifecycle, and a tiny HTTP client.

All servers listen on 127.0.0.1 only. Every nginx runs in the foreground (daemon off) as our
child, in its own directory under the benchmark's temp prefix.
"""

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time

import procstat

HERE = os.path.dirname(os.path.abspath(__file__))

# ---------------------------------------------------------------------- configurations

MAIN = """\
{load_module}user root;
daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile {rlimit};
pid {dir}/nginx.pid;
lock_file {dir}/nginx.lock;
error_log {dir}/error.log notice;
events {{ worker_connections 40000; }}
"""



def worker_rlimit():
    """100000, or the hard fd limit if that is lower: raising the hard limit needs
    CAP_SYS_RESOURCE, without which nginx's setrlimit() fails with an [alert] per process."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 100000 if hard == resource.RLIM_INFINITY or hard >= 100000 else hard


def main_conf(module, workers, dir):
    return MAIN.format(load_module=f"load_module {module};\n" if module else "",
                       workers=workers, dir=dir, rlimit=worker_rlimit())


HTTP_COMMON = """\
    access_log off;
    client_body_temp_path {dir}/client_body_temp;
    proxy_temp_path {dir}/proxy_temp;
    fastcgi_temp_path {dir}/fastcgi_temp;
    uwsgi_temp_path {dir}/uwsgi_temp;
    scgi_temp_path {dir}/scgi_temp;
    # wrk keeps its connections: do not make it reconnect every 1000 requests
    keepalive_requests 100000000;
"""

# The control endpoint and stub_status (whose "Writing" counts requests past their header,
# i.e. held or waiting ones, for the locations the module does not count).
CONTROL_SERVER = """\
    server {{
        listen 127.0.0.1:{ctl_port};
        location /ctl/ {{ intermission_control; }}
        location = /stub {{ stub_status; }}
    }}
"""


def backend_nginx_conf(dir, port):
    """The stock backend of `overhead`: no module, one worker, answers "ok"."""
    return (main_conf(None, 1, dir)
            + "http {\n" + HTTP_COMMON.format(dir=dir)
            + f"""\
    server {{
        listen 127.0.0.1:{port} backlog=65535;
        location / {{ return 200 "ok"; }}
    }}
}}
""")


def overhead_conf(dir, module, ports):
    """Two identical proxies to the stock backend (keepalive upstream), one with the module."""
    def server(port, extra):
        return f"""\
    server {{
        listen 127.0.0.1:{port} backlog=65535;
        location / {{
{extra}            proxy_pass http://wrk_backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""
    return (main_conf(module, 2, dir)
            + "http {\n" + HTTP_COMMON.format(dir=dir)
            + f"""\
    upstream wrk_backend {{
        server 127.0.0.1:{ports['backend_nginx']};
        keepalive 64;
    }}
"""
            + server(ports["with"], "            intermission on;\n")
            + server(ports["without"], "")
            + CONTROL_SERVER.format(ctl_port=ports["ctl"])
            + "}\n")


def hold_conf(dir, module, ports):
    """One config for every held-request measurement, so that they differ only in what is held:
      held:       `intermission on` (`intermission_release_window off`), proxying to the
                  recording backend (no keepalive);
      proxy-wait: no module, proxying to the backend that answers only after a delay;
      limit-req:  no module, requests delayed inside nginx by limit_req (rate 1r/m, the first
                  request passes), i.e. nginx's own way of parking a request on a timer.
    """
    listen = "listen 127.0.0.1:{} backlog=65535;"
    return (main_conf(module, 2, dir)
            + "http {\n" + HTTP_COMMON.format(dir=dir)
            + f"""\
    proxy_read_timeout 600s;
    upstream rec_backend {{ server 127.0.0.1:{ports['rec_backend']}; }}
    upstream slow_backend {{ server 127.0.0.1:{ports['slow_backend']}; }}
    limit_req_zone $server_port zone=bench_delay:1m rate=1r/m;
    server {{
        {listen.format(ports['held'])}
        location / {{
            intermission on;
            # The release scenario measures the immediate release; scripts/bench/window
            # compares it with the window.
            intermission_release_window off;
            proxy_pass http://rec_backend;
            proxy_set_header X-Worker $pid;
        }}
    }}
    server {{
        {listen.format(ports['proxy-wait'])}
        location / {{
            proxy_pass http://slow_backend;
            proxy_set_header X-Worker $pid;
        }}
    }}
    server {{
        {listen.format(ports['limit-req'])}
        location / {{
            limit_req zone=bench_delay burst=1000000;
            proxy_pass http://rec_backend;
            proxy_set_header X-Worker $pid;
        }}
    }}
"""
            + CONTROL_SERVER.format(ctl_port=ports["ctl"])
            + "}\n")


def drain_conf(dir, module, ports):
    """`drain`: two workers, `intermission on` proxying to a backend that answers after a
    delay; reuseport spreads connections over the workers, so the in-flight request and the
    drain waiter are often in different workers (the eventfd path) and sometimes in one."""
    return (main_conf(module, 2, dir)
            + "http {\n" + HTTP_COMMON.format(dir=dir)
            + f"""\
    proxy_read_timeout 60s;
    server {{
        listen 127.0.0.1:{ports['front']} reuseport;
        location / {{
            intermission on;
            proxy_pass http://127.0.0.1:{ports['slow_backend']};
        }}
    }}
"""
            + CONTROL_SERVER.format(ctl_port=ports["ctl"]).replace(
                f"listen 127.0.0.1:{ports['ctl']};", f"listen 127.0.0.1:{ports['ctl']} reuseport;")
            + "}\n")


def cycle_conf(dir, module, ports):
    """`cycle`: the same application twice in one nginx, with `intermission on` and without,
    both proxying to one stock backend that the maintenance stops and starts."""
    def server(port, extra):
        return f"""\
    server {{
        listen 127.0.0.1:{port} backlog=65535;
        location / {{
{extra}            proxy_pass http://127.0.0.1:{ports['backend']};
        }}
    }}
"""
    return (main_conf(module, 2, dir)
            + "http {\n" + HTTP_COMMON.format(dir=dir)
            + server(ports["with"], "            intermission on;\n")
            + server(ports["without"], "")
            + CONTROL_SERVER.format(ctl_port=ports["ctl"])
            + "}\n")


# ------------------------------------------------------------------------------- ports

def free_ports(names):
    """Distinct free TCP ports on 127.0.0.1 (bound together, so they differ; released before
    use, which leaves a small race with other programs that we accept)."""
    socks, ports = [], {}
    for name in names:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports[name] = s.getsockname()[1]
    for s in socks:
        s.close()
    return ports


def wait_port(port, timeout, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


# --------------------------------------------------------------------------------- HTTP

def http(port, method, path, timeout=10.0):
    """One HTTP/1.1 request on a fresh connection. Returns a dict with status, body (text),
    t_sent, and t_answer: time.monotonic() right after the read that completed the answer."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        req = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n"
               f"Connection: close\r\n\r\n").encode()
        t_sent = time.monotonic()
        s.sendall(req)
        buf = b""
        while True:
            data = s.recv(65536)
            t_answer = time.monotonic()
            buf += data
            if not data or _complete(buf):
                break
    finally:
        s.close()
    head, _, body = buf.partition(b"\r\n\r\n")
    line = head.split(b"\r\n", 1)[0].split()
    status = int(line[1]) if len(line) >= 2 else 0
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return {"status": status, "body": body.decode("utf-8", "replace"),
            "t_sent": t_sent, "t_answer": t_answer}


def _complete(buf):
    head, sep, body = buf.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    if b"transfer-encoding: chunked" in head.lower():
        return body.endswith(b"0\r\n\r\n")
    return False  # read to EOF


def _dechunk(body):
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return out


def http_json(port, method, path, timeout=10.0):
    r = http(port, method, path, timeout)
    if r["status"] != 200:
        raise RuntimeError(f"{method} {path} on port {port}: HTTP {r['status']}: {r['body'][:300]}")
    r["json"] = json.loads(r["body"])
    return r


# ---------------------------------------------------------------------- nginx processes

class Nginx:
    def __init__(self, nginx_bin, root, name, make_conf, workers, ports):
        """make_conf(dir) -> the configuration text, for an instance living in dir."""
        self.bin = nginx_bin
        self.dir = os.path.join(root, name)
        self.name = name
        self.workers_expected = workers
        self.ports = ports  # the ports it must be listening on before it counts as started
        os.makedirs(self.dir, exist_ok=True)
        self.conf = os.path.join(self.dir, "nginx.conf")
        self.conf_text = make_conf(self.dir)
        with open(self.conf, "w") as f:
            f.write(self.conf_text)
        self.proc = None
        self.worker_pids = []

    def start(self, timeout=15.0):
        out = open(os.path.join(self.dir, "stdout.log"), "ab")
        self.proc = subprocess.Popen(
            [self.bin, "-p", self.dir + "/", "-c", self.conf, "-e", os.path.join(self.dir, "error.log")],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=procstat.die_with_parent)
        out.close()
        procstat.track(self.proc.pid)
        deadline = time.monotonic() + timeout
        for port in self.ports:
            if not wait_port(port, max(0.1, deadline - time.monotonic()), self.proc):
                self.stop()
                raise RuntimeError(f"nginx {self.name} did not start:\n{self.log_tail()}")
        while time.monotonic() < deadline:
            self.worker_pids = procstat.children(self.proc.pid)
            if len(self.worker_pids) >= self.workers_expected:
                break
            time.sleep(0.05)
        for p in self.worker_pids:
            procstat.track(p)
        if len(self.worker_pids) != self.workers_expected:
            self.stop()
            raise RuntimeError(f"nginx {self.name}: {len(self.worker_pids)} workers, "
                               f"expected {self.workers_expected}")
        return self

    def workers(self):
        """The current workers (re-read: a crashed worker is replaced under a new pid)."""
        return procstat.children(self.proc.pid)

    def log_tail(self, n=20):
        try:
            with open(os.path.join(self.dir, "error.log")) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return "(no error.log)"

    def alerts(self):
        """error.log lines at [alert] or worse: crashes, "no memory to hold", ..."""
        try:
            with open(os.path.join(self.dir, "error.log")) as f:
                return [l.rstrip() for l in f if any(k in l for k in ("[alert]", "[emerg]", "[crit]"))]
        except OSError:
            return []

    def stop(self):
        """Fast shutdown (SIGTERM): held requests are dropped, not released."""
        if self.proc is None:
            return
        workers = set(self.worker_pids) | set(procstat.children(self.proc.pid))
        procstat.stop_process(self.proc, signal.SIGTERM, timeout=10.0, extra_pids=workers)
        self.proc = None


# --------------------------------------------------------------------- python helpers

class Helper:
    """A Python helper process (backend.py or holdclient.py) speaking lines on stdin/stdout."""

    def __init__(self, script, args, tag):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, script), *args, "--tag", tag],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            start_new_session=True, preexec_fn=procstat.die_with_parent)
        procstat.track(self.proc.pid)

    def readline(self, timeout):
        """One stdout line, or RuntimeError if none comes in time (or the helper died)."""
        import select
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            raise RuntimeError(f"{self.proc.args[1]}: no answer within {timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.proc.args[1]}: exited with {self.proc.wait()}")
        return line

    def command(self, cmd, timeout):
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return json.loads(self.readline(timeout))

    def stop(self):
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self.proc.stdin.close()  # holdclient: EOF means exit
        except OSError:
            pass
        procstat.stop_process(self.proc, signal.SIGTERM, timeout=5.0)
        self.proc = None


def start_backend(port, delay, tag):
    b = Helper("backend.py", ["--port", str(port), "--delay", str(delay)], tag)
    line = b.readline(10)
    if line.strip() != "ready":
        b.stop()
        raise RuntimeError(f"backend on port {port}: {line!r}")
    return b


def start_holdclient(port, n, batch, pause_ms, tag, timeout):
    c = Helper("holdclient.py", ["--port", str(port), "-n", str(n), "--batch", str(batch),
                                 "--pause-ms", str(pause_ms)], tag)
    sent = json.loads(c.readline(timeout))
    return c, sent
