#!/usr/bin/env python3
"""Benchmarks of ngx_http_intermission_module: overhead, held requests, release.

Run it through scripts/bench/run, which raises the fd limit and net.core.somaxconn, makes the
temp prefix and kills leftovers if this process dies; see that file for how to run each
scenario. Everything here is started by us, listens on 127.0.0.1 only, and is stopped in
reverse order on the way out (normal end, error, Ctrl-C, SIGTERM).
"""

import sys

sys.dont_write_bytecode = True  # no __pycache__ in the work tree

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import socket
import signal
import statistics
import subprocess
import tempfile
import time

import nginxproc
import procstat
from report import Table, num

SCENARIOS = ("overhead", "hold", "release", "drain", "cycle")
COMPARISONS = ("proxy-wait", "limit-req")
DEFAULT_MODULE = os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "../../target/module/ngx_http_intermission_module.so"))

TARGET_RATIO = 0.99
TARGET_CPU_PCT = 1.0
TARGET_OWN_BYTES = 512
TARGET_FIRST_MS = 5.0
TARGET_LAST_MS = 200.0


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ------------------------------------------------------------------------------ context

class Context:
    """Options, the temp prefix, and everything started (stopped in reverse order)."""

    def __init__(self, args):
        self.args = args
        self.prefix = args.prefix
        self.running = []
        # Our own copy of the module: a rebuild under us must not change it mid-run.
        self.module = os.path.join(self.prefix, "ngx_http_intermission_module.so")
        shutil.copyfile(args.module, self.module)
        self.hold_ports = None
        self.backends = {}

    def start_nginx(self, name, make_conf, workers, ports):
        ng = nginxproc.Nginx(self.args.nginx, self.prefix, name, make_conf, workers, ports)
        self.running.append(ng)
        return ng.start()

    def stop(self, thing):
        if thing in self.running:
            self.running.remove(thing)
        thing.stop()

    def stop_all(self):
        while self.running:
            thing = self.running.pop()
            try:
                thing.stop()
            except Exception as e:  # keep stopping the rest
                log(f"stopping {thing}: {e}")

    def hold_setup(self):
        """Ports of the hold configuration, and its two Python backends (started once)."""
        if self.hold_ports is None:
            self.hold_ports = nginxproc.free_ports(
                ["held", "proxy-wait", "limit-req", "ctl", "rec_backend", "slow_backend"])
            p = self.hold_ports
            self.backends["rec"] = nginxproc.start_backend(p["rec_backend"], 0, self.prefix)
            self.running.append(self.backends["rec"])
            self.backends["slow"] = nginxproc.start_backend(
                p["slow_backend"], self.args.slow_delay, self.prefix)
            self.running.append(self.backends["slow"])
        return self.hold_ports


# ------------------------------------------------------------------------------- control

def scope_status(ctl_port, name="default"):
    st = nginxproc.http_json(ctl_port, "GET", "/ctl/status")["json"]
    for s in st.get("scopes", []):
        if s.get("name") == name:
            return s
    raise RuntimeError(f"status has no scope {name!r}: {st}")


def stub_status(ctl_port):
    """nginx's stub_status; 'held' = Writing minus this very request."""
    body = nginxproc.http(ctl_port, "GET", "/stub")["body"]
    nums = {k.lower(): int(v) for k, v in re.findall(r"(Active connections|Reading|Writing|Waiting):\s*(\d+)", body)}
    nums["held"] = nums.get("writing", 1) - 1
    return nums


def pause(ctl_port):
    r = nginxproc.http_json(ctl_port, "POST", "/ctl/pause")
    if not scope_status(ctl_port).get("paused"):
        raise RuntimeError(f"pause did not pause: {r['body']}")


def wait_held(ctl_port, kind, expected, timeout):
    """Polls until `expected` requests are held: the module's own count for `held`,
    stub_status Writing for the others. Returns (held, seconds waited)."""
    t0 = time.monotonic()
    held = -1
    while time.monotonic() - t0 < timeout:
        held = scope_status(ctl_port)["held"] if kind == "held" else stub_status(ctl_port)["held"]
        if held >= expected:
            break
        time.sleep(0.1)
    return held, time.monotonic() - t0


# ------------------------------------------------------------------------------ overhead

WRK_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(out):
    def latency(pct):
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        return float(m.group(1)) * WRK_UNITS_MS[m.group(2)] if m else None

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    reqs = re.search(r"(\d+) requests in", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(rps.group(1)) if rps else None,
        "requests": int(reqs.group(1)) if reqs else None,
        "p50_ms": latency(50), "p75_ms": latency(75), "p90_ms": latency(90), "p99_ms": latency(99),
        "socket_errors": dict(zip(("connect", "read", "write", "timeout"),
                                  map(int, sock.groups()))) if sock else {},
        "non_2xx_3xx": int(non2xx.group(1)) if non2xx else 0,
    }


def run_wrk(args, port, seconds):
    cmd = [args.wrk, f"-t{args.wrk_threads}", f"-c{args.wrk_connections}", f"-d{seconds}s",
           "--latency", f"http://127.0.0.1:{port}/"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True, preexec_fn=procstat.die_with_parent)
    procstat.track(p.pid)
    try:
        out, _ = p.communicate(timeout=seconds + 30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    res = parse_wrk(out)
    if res["rps"] is None:
        raise RuntimeError(f"wrk gave no result:\n{out}")
    return res


def scenario_overhead(ctx):
    a = ctx.args
    ports = nginxproc.free_ports(["backend_nginx", "with", "without", "ctl"])
    backend = ctx.start_nginx("overhead-backend",
                              lambda d: nginxproc.backend_nginx_conf(d, ports["backend_nginx"]),
                              1, [ports["backend_nginx"]])
    front = ctx.start_nginx("overhead", lambda d: nginxproc.overhead_conf(d, ctx.module, ports),
                            2, [ports["with"], ports["without"], ports["ctl"]])
    if scope_status(ports["ctl"]).get("paused"):
        raise RuntimeError("the scope is paused in a fresh nginx")
    for label in ("with", "without"):
        r = nginxproc.http(ports[label], "GET", "/")
        if r["status"] != 200 or r["body"] != "ok":
            raise RuntimeError(f"overhead/{label}: HTTP {r['status']} {r['body']!r}")

    if a.warmup > 0:  # connections, upstream keepalive pools, caches, CPU frequency
        for label in ("with", "without"):
            run_wrk(a, ports[label], a.warmup)
    runs = {"with": [], "without": []}
    for i in range(a.rounds):  # A/B/A/B...: slow drifts of the machine hit both alike
        for label in ("with", "without"):
            r = run_wrk(a, ports[label], a.duration)
            runs[label].append(r)
            log(f"overhead round {i + 1}/{a.rounds} {label:>7}: {r['rps']:.0f} req/s, "
                f"p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms")
    alerts = front.alerts() + backend.alerts()
    ctx.stop(front)
    ctx.stop(backend)

    summary = {}
    for label, rs in runs.items():
        summary[label] = {
            "rps_median": median(r["rps"] for r in rs),
            "p50_ms_median": median(r["p50_ms"] for r in rs),
            "p99_ms_median": median(r["p99_ms"] for r in rs),
            "errors": sum(sum(r["socket_errors"].values()) + r["non_2xx_3xx"] for r in rs),
        }
    ratio = summary["with"]["rps_median"] / summary["without"]["rps_median"]
    round_ratios = [w["rps"] / wo["rps"] for w, wo in zip(runs["with"], runs["without"])]
    return {
        "settings": {"rounds": a.rounds, "duration_s": a.duration, "warmup_s": a.warmup,
                     "wrk": f"-t{a.wrk_threads} -c{a.wrk_connections} -d{a.duration}s --latency",
                     "backend": "stock nginx, worker_processes 1, return 200 \"ok\"",
                     "upstream_keepalive": 64, "order": "with/without alternating"},
        "runs": runs, "summary": summary,
        "ratio_with_without": ratio,
        "round_ratio_median": median(round_ratios),
        "error_log_alerts": alerts,
    }


def table_overhead(t, r):
    s = r["summary"]
    n = r["settings"]["rounds"]
    t.section(f"overhead  (wrk {r['settings']['wrk']}, {n} rounds each, medians)")
    t.row("req/s with intermission on (not paused)", num(s["with"]["rps_median"], "{:.0f}"))
    t.row("req/s without", num(s["without"]["rps_median"], "{:.0f}"))
    t.row("ratio with/without (of medians)", num(r["ratio_with_without"], "{:.3f}"),
          f">= {TARGET_RATIO}", r["ratio_with_without"] >= TARGET_RATIO)
    t.row("ratio with/without (median of rounds)", num(r["round_ratio_median"], "{:.3f}"))
    for label in ("with", "without"):
        t.row(f"latency p50 / p99 {label} (ms)",
              f"{num(s[label]['p50_ms_median'], '{:.3f}')} / {num(s[label]['p99_ms_median'], '{:.3f}')}")
    t.row("wrk errors (socket + non-2xx), all runs",
          f"{s['with']['errors']} / {s['without']['errors']}", "0 / 0",
          s["with"]["errors"] == 0 and s["without"]["errors"] == 0)


# ---------------------------------------------------------------------------------- hold

def measure_hold(ctx, kind, n, keep):
    """N requests held by `kind` in a fresh nginx; CPU over the window, memory growth.

    A fresh nginx per measurement: memory freed by an earlier run would be reused by the next
    and hide its growth. Returns (result, state); state is (nginx, client, held) if keep,
    for the release scenario to continue from, else None.
    """
    a = ctx.args
    ports = ctx.hold_setup()
    ng = ctx.start_nginx(f"hold-{kind}-{n}", lambda d: nginxproc.hold_conf(d, ctx.module, ports),
                         2, [ports[kind], ports["ctl"]])
    if kind == "held":
        pause(ports["ctl"])
    # The same few requests before every baseline, whatever the kind, so that one-time
    # allocations of a worker's first requests are in the baseline of all of them alike.
    for _ in range(8):
        scope_status(ports["ctl"])
        stub_status(ports["ctl"])
    time.sleep(a.settle)
    workers = ng.workers()
    base = procstat.mem_sample(workers)

    log(f"hold {kind} N={n}: connecting")
    client, sent = nginxproc.start_holdclient(ports[kind], n, a.batch, a.batch_pause_ms,
                                              ctx.prefix, timeout=60 + n / 100)
    ctx.running.append(client)
    # limit_req lets the first request through (no excess yet) and delays the others
    expected = n - 1 if kind == "limit-req" else n
    held, waited = wait_held(ports["ctl"], kind, expected, timeout=30 + n / 500)
    if held < expected:
        log(f"hold {kind} N={n}: only {held} of {expected} held after {waited:.1f} s")
    time.sleep(a.settle)
    mem_start = procstat.mem_sample(workers)
    log(f"hold {kind} N={n}: {held} held; measuring for {a.measure:g} s")
    cpu = procstat.cpu_window(workers, a.measure)
    mem_end = procstat.mem_sample(workers)
    peek = client.command("peek", 30)["readable"]
    held_end = scope_status(ports["ctl"])["held"] if kind == "held" else stub_status(ports["ctl"])["held"]
    if workers != ng.workers():
        raise RuntimeError(f"hold {kind}: workers changed (crash?):\n{ng.log_tail()}")

    denom = max(held, 1)
    result = {
        "kind": kind, "n": n, "sent": sent, "expected_held": expected,
        "held": held, "held_at_end": held_end, "wait_held_s": waited,
        "answered_or_closed_while_held": peek,
        "workers": workers,
        "cpu": cpu,
        "mem_baseline": base, "mem_held_start": mem_start, "mem_held_end": mem_end,
        "bytes_per_held": {k: (mem_end[k] - base[k]) / denom for k in base},
        "growth_during_window": {k: mem_end[k] - mem_start[k] for k in base},
        "stub_status": stub_status(ports["ctl"]),
    }
    if kind == "held":
        result["scope_status"] = scope_status(ports["ctl"])
    result["error_log_alerts"] = ng.alerts()
    if keep:
        return result, (ng, client, held)
    client.command("close", 30)
    ctx.stop(client)
    ctx.stop(ng)
    return result, None


def scenario_hold(ctx, keep_for_release):
    a = ctx.args
    out, state = {}, None
    for n in a.n:
        per = {}
        # The module's measurement last: the release scenario can continue from it.
        for kind in list(a.compare) + ["held"]:
            keep = keep_for_release and kind == "held" and n == a.release_n
            per[kind], st = measure_hold(ctx, kind, n, keep)
            state = st or state
        mod = per["held"]["bytes_per_held"]
        per["module_own_bytes_per_held"] = {
            f"vs_{kind}": {k: mod[k] - per[kind]["bytes_per_held"][k] for k in mod}
            for kind in a.compare}
        out[str(n)] = per
    out["settings"] = {
        "measure_s": a.measure, "settle_s": a.settle, "batch": a.batch,
        "batch_pause_ms": a.batch_pause_ms, "slow_backend_delay_s": a.slow_delay,
        "memory": "sum over the workers of /proc/<pid>/smaps_rollup, end of window minus "
                  "idle baseline of the same fresh nginx, divided by the number held",
        "comparisons": {
            "proxy-wait": "no module; proxied to a Python backend that reads the request and "
                          "answers only after the delay (nginx keeps an upstream connection "
                          "and its upstream state per request: an upper bound)",
            "limit-req": "no module; limit_req (rate=1r/m, burst=1000000) delays the requests "
                         "on a timer inside nginx, which is how the module parks them too: "
                         "the tighter comparison"},
    }
    return out, state


def table_hold(t, r):
    for n in [k for k in r if k != "settings"]:
        per = r[n]
        held = per["held"]
        t.section(f"hold  N={n}  (CPU over {r['settings']['measure_s']:g} s; memory = "
                  f"smaps_rollup growth over the idle baseline / held)")
        t.row("held (module count, end of window)",
              f"{held['held_at_end']}/{held['expected_held']}", "all",
              held["held_at_end"] == held["expected_held"])
        t.row("module: workers' CPU, % of one core", num(held["cpu"]["cpu_pct_of_one_core"], "{:.2f}"),
              f"< {TARGET_CPU_PCT:g}", held["cpu"]["cpu_pct_of_one_core"] < TARGET_CPU_PCT)
        t.row("module: workers' wakeups/s", num(held["cpu"]["wakeups_per_s"], "{:.0f}"))
        t.row("module: bytes per held request, Private / Rss",
              f"{held['bytes_per_held']['private']:.0f} / {held['bytes_per_held']['rss']:.0f}")
        for kind in [k for k in per if k not in ("held", "module_own_bytes_per_held")]:
            c = per[kind]
            t.row(f"{kind}: held (stub_status Writing)", f"{c['held_at_end']}/{c['expected_held']}")
            t.row(f"{kind}: workers' CPU, % of one core", num(c["cpu"]["cpu_pct_of_one_core"], "{:.2f}"))
            t.row(f"{kind}: bytes per held request, Private / Rss",
                  f"{c['bytes_per_held']['private']:.0f} / {c['bytes_per_held']['rss']:.0f}")
            d = per["module_own_bytes_per_held"][f"vs_{kind}"]
            t.row(f"module own cost vs {kind}, Private / Rss (B)",
                  f"{d['private']:.0f} / {d['rss']:.0f}", f"< {TARGET_OWN_BYTES}",
                  d["private"] < TARGET_OWN_BYTES)
        early = {k: per[k]["answered_or_closed_while_held"] for k in per
                 if k != "module_own_bytes_per_held"}
        t.row("connections answered/closed while held", " ".join(f"{k}:{v}" for k, v in early.items()),
              "held:0")


# ------------------------------------------------------------------------------- release

def inversions(seqs):
    """Consecutive pairs whose sequence number decreases."""
    return sum(1 for x, y in zip(seqs, seqs[1:]) if y < x)


def histogram(values_ms, width):
    """{bucket start in ms: count}, buckets of `width` ms."""
    h = {}
    for v in values_ms:
        b = int(v // width * width)
        h[b] = h.get(b, 0) + 1
    return {str(k): h[k] for k in sorted(h)}


def analyze_release(arrivals, t0, n):
    """First/last arrival relative to t0, and order inversions, by both backend clocks."""
    recs = [r for r in arrivals if r[0] is not None]
    seqs = [r[0] for r in recs]
    out = {
        "arrivals": len(arrivals),
        "reached_backend": len(set(seqs) & set(range(1, n + 1))),
        "duplicates": len(seqs) - len(set(seqs)),
    }
    # kernel: request bytes received (socket timestamp); user: request read by the backend;
    # accept: connection accepted by the backend (its order is nginx's connect() order)
    for clock, idx in (("kernel", 3), ("user", 2), ("accept", 4)):
        timed = [r for r in recs if r[idx] is not None]
        if not timed:
            out[clock] = None
            continue
        order = sorted(timed, key=lambda r: r[idx])  # stable: ties keep processing order
        rel = [(r[idx] - t0) * 1000 for r in order]
        workers = {}
        for r in order:
            workers.setdefault(str(r[1]), []).append(r)
        out[clock] = {
            "first_ms": rel[0], "p50_ms": statistics.median(rel), "last_ms": rel[-1],
            "inversions_all_workers": inversions([r[0] for r in order]),
            "histogram_10ms": histogram(rel, 10.0),
            "per_worker": {
                w: {"count": len(rs),
                    "first_ms": (rs[0][idx] - t0) * 1000, "last_ms": (rs[-1][idx] - t0) * 1000,
                    "inversions": inversions([r[0] for r in rs])}
                for w, rs in workers.items()},
        }
        out[clock]["inversions_within_workers"] = sum(
            w["inversions"] for w in out[clock]["per_worker"].values())
    return out


def hold_for_release(ctx, n):
    """The release scenario's own held state when it does not continue from `hold`."""
    ports = ctx.hold_setup()
    ng = ctx.start_nginx(f"release-{n}", lambda d: nginxproc.hold_conf(d, ctx.module, ports),
                         2, [ports["held"], ports["ctl"]])
    pause(ports["ctl"])
    log(f"release N={n}: connecting")
    client, _ = nginxproc.start_holdclient(ports["held"], n, ctx.args.batch, ctx.args.batch_pause_ms,
                                           ctx.prefix, timeout=60 + n / 100)
    ctx.running.append(client)
    held, waited = wait_held(ports["ctl"], "held", n, timeout=30 + n / 500)
    if held < n:
        log(f"release N={n}: only {held} held after {waited:.1f} s")
    time.sleep(ctx.args.settle)
    return ng, client, held


RELEASE_MODES = {
    "live": "the backend answers as the requests come, sharing the 2 cores with nginx",
    "frozen": "the backend is SIGSTOPped from just before the resume until nginx's workers are "
              "idle: nginx releases and sends without competing with it for CPU; the kernel "
              "queues the connections and timestamps the requests' bytes as they arrive",
}


def wait_workers_idle(pids, quiet, timeout):
    """Waits until the pids have used no CPU for `quiet` seconds (or timeout)."""
    t_end = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < t_end:
        ticks = sum(procstat.cpu_ticks(p) for p in pids)
        if ticks != last:
            last, since = ticks, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return True
        time.sleep(0.05)
    return False


def scenario_release(ctx, state, mode):
    """Resumes N held requests and times their arrival at the backend (mode: RELEASE_MODES)."""
    a = ctx.args
    n = a.release_n
    ng, client, held = state or hold_for_release(ctx, n)
    ports = ctx.hold_ports
    rec = ports["rec_backend"]
    rec_proc = ctx.backends["rec"].proc
    nginxproc.http_json(rec, "POST", "/__reset")  # limit-req runs sent it a request each
    before = scope_status(ports["ctl"])
    early = client.command("peek", 30)["readable"]
    workers = ng.workers()

    log(f"release N={n} ({mode} backend): resume ({before['held']} held)")
    frozen_for = None
    # CPU time of the backend and of nginx's workers across the release: on 2 cores, what the
    # backend takes is what nginx does not get.
    hz = os.sysconf("SC_CLK_TCK")
    cpu0 = {"backend": procstat.cpu_ticks(rec_proc.pid),
            "workers": sum(procstat.cpu_ticks(p) for p in workers)}
    if mode == "frozen":
        rec_proc.send_signal(signal.SIGSTOP)
    try:
        # This (otherwise idle) process sends the resume on a blocking socket: t0 is taken
        # right after the read that completes the answer, not when a busy event loop gets to it.
        r = nginxproc.http_json(ports["ctl"], "POST", "/ctl/resume")
        t0, t_sent = r["t_answer"], r["t_sent"]
        if mode == "frozen":
            wait_workers_idle(workers, quiet=0.3, timeout=a.collect_timeout)
            frozen_for = time.monotonic() - t0
    finally:
        if mode == "frozen":
            rec_proc.send_signal(signal.SIGCONT)
    scope = next((s for s in r["json"].get("scopes", []) if s.get("name") == "default"), {})

    # Wait until the backend has seen them all; poll gently (its CPU is the 2 cores' too).
    deadline = time.monotonic() + a.collect_timeout
    count = 0
    while time.monotonic() < deadline:
        count = nginxproc.http_json(rec, "GET", "/__count")["json"]["count"]
        if count >= held:
            break
        time.sleep(0.1)
    cpu_s = {"backend": (procstat.cpu_ticks(rec_proc.pid) - cpu0["backend"]) / hz,
             "workers": (sum(procstat.cpu_ticks(p) for p in workers) - cpu0["workers"]) / hz}
    # Only now does the client read its answers, so it did not compete for CPU before.
    collected = client.command(f"collect {a.collect_timeout}", a.collect_timeout + 30)
    arrivals = nginxproc.http_json(rec, "GET", "/__arrivals", timeout=60)["json"]["arrivals"]
    after = scope_status(ports["ctl"])
    alerts = ng.alerts()
    ctx.stop(client)
    ctx.stop(ng)

    res = analyze_release(arrivals, t0, n)
    res.update({
        "n": n, "mode": mode, "held_before": before["held"], "answered_before_resume": early,
        "resume_round_trip_ms": (t0 - t_sent) * 1000,
        "resume_answer": r["json"], "released": scope.get("released"),
        "backend_frozen_s": frozen_for,
        "cpu_seconds_during_release": cpu_s,
        "client": collected, "ok200": collected["ok200"],
        "scope_status_after": after, "error_log_alerts": alerts,
        "settings": {
            "backend": "Python epoll backend, answers 200 at once and closes; arrival = kernel "
                       "receive timestamp (SO_TIMESTAMPNS) of the request's first bytes and "
                       "the backend's userspace read time, both on the time.monotonic() clock",
            "mode": RELEASE_MODES[mode],
            "upstream_keepalive": "off (each released request opens a new connection)",
            "t0": "time.monotonic() in the orchestrator right after the resume answer was read",
            "inversions": "consecutive backend arrivals (sorted by the clock) whose X-Seq "
                          "decreases, per X-Worker and across all workers",
        },
    })
    return res


def table_release(t, r):
    n = r["n"]
    frozen = r["mode"] == "frozen"
    t.section(f"release  N={n}, {r['mode']} backend  (ms relative to t0 = resume answer read by "
              f"the client; kernel = backend socket receive timestamp"
              + (f"; backend stopped for the first {r['backend_frozen_s']:.2f} s)" if frozen
                 else ", user = backend process read)"))
    t.row("held before resume / released (resume answer)", f"{r['held_before']} / {r['released']}")
    t.row("resume round trip (ms)", num(r["resume_round_trip_ms"], "{:.2f}"))
    c = r.get("cpu_seconds_during_release") or {}
    t.row("CPU seconds until all arrived: nginx workers / backend",
          f"{num(c.get('workers'), '{:.2f}')} / {num(c.get('backend'), '{:.2f}')}")
    target_note = "" if n == 10000 else " (for 10,000)"
    for clock in ("kernel",) if frozen else ("kernel", "user"):
        c = r.get(clock)
        if not c:
            t.row(f"{clock}: no timestamps", "-")
            continue
        first_ok = c["first_ms"] <= TARGET_FIRST_MS if clock == "kernel" else None
        last_ok = c["last_ms"] <= TARGET_LAST_MS if clock == "kernel" else None
        t.row(f"{clock}: first arrival - t0 (ms)", num(c["first_ms"], "{:.2f}"),
              f"<= {TARGET_FIRST_MS:g}{target_note}", first_ok)
        t.row(f"{clock}: median arrival - t0 (ms)", num(c["p50_ms"], "{:.2f}"))
        t.row(f"{clock}: last arrival - t0 (ms)", num(c["last_ms"], "{:.2f}"),
              f"<= {TARGET_LAST_MS:g}{target_note}", last_ok)
        for w, pw in sorted(c["per_worker"].items()):
            t.row(f"{clock}: worker {w}: count, first/last (ms)",
                  f"{pw['count']}, {pw['first_ms']:.2f}/{pw['last_ms']:.2f}")
        t.row(f"{clock}: inversions within workers", str(c["inversions_within_workers"]), "0",
              c["inversions_within_workers"] == 0)
        t.row(f"{clock}: inversions across all workers", str(c["inversions_all_workers"]))
    if not frozen and r.get("accept"):
        t.row("first upstream connection accepted - t0 (ms)", num(r["accept"]["first_ms"], "{:.2f}"))
    t.row("reached backend (distinct X-Seq)", f"{r['reached_backend']}/{n}", "all",
          r["reached_backend"] == n)
    t.row("200s at the client", f"{r['ok200']}/{n}", "all", r["ok200"] == n)
    t.row("answered before resume / duplicates", f"{r['answered_before_resume']} / {r['duplicates']}",
          "0 / 0", r["answered_before_resume"] == 0 and r["duplicates"] == 0)


# ------------------------------------------------------------------------- environment

TARGET_DRAIN_MS = 10.0


def read_response(sock, deadline):
    """Reads one whole HTTP/1.1 response (Content-Length) from a blocking socket; returns the
    time.monotonic() at which its last byte arrived."""
    buf = b""
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError(f"connection closed after {len(buf)} bytes")
        buf += chunk
        head, sep, body = buf.partition(b"\r\n\r\n")
        if sep:
            length = next((int(l.split(b":", 1)[1]) for l in head.split(b"\r\n")
                           if l.lower().startswith(b"content-length:")), 0)
            if len(body) >= length:
                return time.monotonic(), head.split(b"\r\n", 1)[0]


def scenario_drain(ctx):
    """A request in flight on a backend that answers after --drain-delay s, and a drain
    waiter on another connection: the time from the client's receipt of the slow response
    (the request's end) to its receipt of the drain answer, over --drain-rounds rounds."""
    a = ctx.args
    ports = nginxproc.free_ports(["front", "ctl", "slow_backend"])
    backend = nginxproc.start_backend(ports["slow_backend"], a.drain_delay, ctx.prefix)
    ctx.running.append(backend)
    ctx.start_nginx("drain", lambda d: nginxproc.drain_conf(d, ctx.module, ports), 2,
                    [ports["front"], ports["ctl"]])
    gaps, statuses = [], []
    for _ in range(a.drain_rounds):
        slow = socket.create_connection(("127.0.0.1", ports["front"]))
        waiter = socket.create_connection(("127.0.0.1", ports["ctl"]))
        try:
            slow.sendall(b"GET /slow HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
            # the request must be in flight before the drain asks
            deadline = time.monotonic() + 5
            while scope_status(ports["ctl"]).get("inflight", 0) < 1:
                if time.monotonic() > deadline:
                    raise RuntimeError("the slow request never became in flight")
                time.sleep(0.005)
            waiter.sendall(b"GET /ctl/drain?timeout=30s HTTP/1.1\r\nHost: b\r\n"
                           b"Connection: close\r\n\r\n")
            deadline = time.monotonic() + a.drain_delay + 10
            t_end, _ = read_response(slow, deadline)
            t_drained, status = read_response(waiter, deadline)
            gaps.append((t_drained - t_end) * 1000)
            statuses.append(status.decode(errors="replace"))
        finally:
            slow.close()
            waiter.close()
    ok = sum(1 for s in statuses if " 200 " in s + " ")
    return {"rounds": a.drain_rounds, "backend_delay_s": a.drain_delay, "answered_200": ok,
            "gap_ms": gaps, "median_ms": median(gaps), "max_ms": max(gaps) if gaps else None}


def table_drain(t, r):
    t.section(f"drain  ({r['rounds']} rounds: a request in flight for {r['backend_delay_s']} s, "
              "a drain waiter on another connection, 2 workers)")
    t.row("drain answered 200", f"{r['answered_200']}/{r['rounds']}", "all",
          r["answered_200"] == r["rounds"])
    t.row("drain answer - end of the last in-flight request, median (ms)",
          num(r["median_ms"], "{:.2f}"), f"<= {TARGET_DRAIN_MS:g}",
          r["median_ms"] is not None and r["median_ms"] <= TARGET_DRAIN_MS)
    t.row("... max (ms)", num(r["max_ms"], "{:.2f}"), f"<= {TARGET_DRAIN_MS:g}",
          r["max_ms"] is not None and r["max_ms"] <= TARGET_DRAIN_MS)


def scenario_cycle(ctx):
    """A maintenance cycle under steady load: --cycle-rate requests/s to each of two servers
    of one nginx (with `intermission on`, and without) for --cycle-duration s; in the middle,
    pause and wait for drain, stop the backend for --cycle-down s, start it, check it, resume.
    The load is scripts/demo-load: a new connection per request, 30 s to answer."""
    a = ctx.args
    ports = nginxproc.free_ports(["with", "without", "ctl", "backend"])
    backend = nginxproc.Nginx(a.nginx, ctx.prefix, "cycle-backend",
                              lambda d: nginxproc.backend_nginx_conf(d, ports["backend"]), 1,
                              [ports["backend"]])
    ctx.running.append(backend)
    backend.start()
    ctx.start_nginx("cycle", lambda d: nginxproc.cycle_conf(d, ctx.module, ports), 2,
                    [ports["with"], ports["without"], ports["ctl"]])
    load = subprocess.Popen(
        [sys.executable, os.path.join(os.path.dirname(nginxproc.HERE), "demo-load"),
         "--rate", str(a.cycle_rate), "--duration", str(a.cycle_duration),
         f"127.0.0.1:{ports['with']}/", f"127.0.0.1:{ports['without']}/"],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=procstat.die_with_parent)
    procstat.track(load.pid)
    ctl = ports["ctl"]
    peak, steps = 0, {}
    lead = (a.cycle_duration - a.cycle_down) / 2 - 1
    time.sleep(max(0.0, lead))
    t = time.monotonic()
    nginxproc.http_json(ctl, "POST", "/ctl/pause?wait=drained&timeout=10s&auto_resume=2m", 15)
    steps["pause_and_drain_ms"] = (time.monotonic() - t) * 1000
    backend.stop()
    down_until = time.monotonic() + a.cycle_down
    while time.monotonic() < down_until:
        peak = max(peak, scope_status(ctl).get("held", 0))
        time.sleep(0.1)
    backend.start()
    t = time.monotonic()
    while nginxproc.http(ports["backend"], "GET", "/", 1)["status"] != 200:  # the check
        time.sleep(0.05)
    steps["check_ms"] = (time.monotonic() - t) * 1000
    peak = max(peak, scope_status(ctl).get("held", 0))
    r = nginxproc.http_json(ctl, "POST", "/ctl/resume")
    released = r["json"]["scopes"][0]["released"]
    out, _ = load.communicate(timeout=a.cycle_duration + 60)
    doc = json.loads(out)
    by_port = {p: next(v for k, v in doc["targets"].items() if k.startswith(f"127.0.0.1:{p}/"))
               for p in (ports["with"], ports["without"])}
    return {"rate": a.cycle_rate, "duration_s": a.cycle_duration, "down_s": a.cycle_down,
            "with": by_port[ports["with"]], "without": by_port[ports["without"]],
            "held_peak": peak, "released": released, **steps}


def table_cycle(t, r):
    t.section(f"cycle  ({r['rate']:g} requests/s to each side for {r['duration_s']:g} s; backend "
              f"down {r['down_s']:g} s; pause+drain {r['pause_and_drain_ms']:.0f} ms, "
              f"most held {r['held_peak']}, released {r['released']})")
    for side in ("with", "without"):
        x = r[side]
        l = x["latency_ms"]
        target = side == "with"
        t.row(f"{side} the module: sent / errors / lost", f"{x['sent']} / {x['errors']} / {x['lost']}",
              "0 errors, 0 lost" if target else "",
              (x["errors"] == 0 and x["lost"] == 0) if target else None)
        t.row(f"{side} the module: latency p50 / p99 / max (ms)",
              f"{num(l['p50'], '{:.1f}')} / {num(l['p99'], '{:.1f}')} / {num(l['max'], '{:.1f}')}")
        if x["errors"]:
            t.row(f"{side} the module: errors", ", ".join(f"{n} {k}" for k, n in x["error_kinds"].items()))


def read_first(path, default=None):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def machine():
    model = None
    for line in (read_first("/proc/cpuinfo", "") or "").splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = re.search(r"MemTotal:\s+(\d+)", read_first("/proc/meminfo", "") or "")
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "kernel_version": platform.version(), "arch": platform.machine(),
            "mem_total_bytes": int(mem.group(1)) * 1024 if mem else None}


def foreign_nginx():
    """nginx processes that are not ours (other people's tests): a source of noise."""
    out = subprocess.run(["pgrep", "-a", "nginx"], capture_output=True, text=True).stdout
    return [l for l in out.splitlines() if l]


def environment(ctx):
    a = ctx.args
    with open(a.module, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    git = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "--no-optional-locks", "-C", repo, "status", "--porcelain",
                            "--", "src", "crates"], capture_output=True, text=True)
    nginx_v = subprocess.run([a.nginx, "-v"], capture_output=True, text=True).stderr.strip()
    return {
        "machine": machine(),
        "nginx": nginx_v,
        "module": {"path": a.module, "sha256": sha,
                   "mtime": datetime.datetime.fromtimestamp(os.path.getmtime(a.module)).isoformat()},
        "git": {"head": git.stdout.strip() or None,
                "src_crates_changes": len(dirty.stdout.splitlines()) if dirty.returncode == 0 else None},
        "python": sys.version.split()[0],
        "limits": {"nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
                   "nginx_worker_rlimit_nofile": nginxproc.worker_rlimit()},
        "sysctl": {
            "net.core.somaxconn": int(read_first("/proc/sys/net/core/somaxconn", "0")),
            "somaxconn_before_run": os.environ.get("BENCH_SOMAXCONN_BEFORE"),
            "somaxconn_note": os.environ.get("BENCH_SOMAXCONN_NOTE"),
            "net.ipv4.tcp_max_syn_backlog": int(read_first("/proc/sys/net/ipv4/tcp_max_syn_backlog", "0")),
            "net.ipv4.ip_local_port_range": read_first("/proc/sys/net/ipv4/ip_local_port_range"),
        },
        "loadavg_start": os.getloadavg(),
        "foreign_nginx_processes_start": foreign_nginx(),
    }


# ------------------------------------------------------------------------------------ main

def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="scripts/bench/run",
        description="Benchmarks of ngx_http_intermission_module (see the header of scripts/bench/run).")
    ap.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                    help=f"any of {', '.join(SCENARIOS)} (default: all, in that order)")
    g = ap.add_argument_group("overhead")
    g.add_argument("--rounds", type=int, default=5, help="wrk runs per side (default 5)")
    g.add_argument("--duration", type=int, default=5, help="seconds per wrk run (default 5)")
    g.add_argument("--warmup", type=int, default=2, help="warm-up seconds per side (default 2)")
    g.add_argument("--wrk-threads", type=int, default=2)
    g.add_argument("--wrk-connections", type=int, default=50)
    g = ap.add_argument_group("hold / release")
    g.add_argument("--n", default="1000,10000", help="held counts for hold (default 1000,10000)")
    g.add_argument("--release-n", type=int, help="held count for release (default: largest --n)")
    g.add_argument("--measure", type=float, default=10.0, help="CPU window in seconds (default 10)")
    g.add_argument("--settle", type=float, default=1.0, help="seconds before sampling (default 1)")
    g.add_argument("--compare", default=",".join(COMPARISONS),
                   help=f"comparisons for hold, from {','.join(COMPARISONS)} (default both)")
    g.add_argument("--slow-delay", type=float, default=30.0,
                   help="proxy-wait backend answers after this many seconds (default 30)")
    g.add_argument("--batch", type=int, default=100, help="client pauses every this many requests")
    g.add_argument("--batch-pause-ms", type=float, default=10.0, help="... for this long (default 10)")
    g.add_argument("--release-modes", default="live,frozen",
                   help="release runs: live (backend answers as they come) and/or frozen "
                        "(backend stopped during the release; kernel timestamps) (default both)")
    g.add_argument("--collect-timeout", type=float, default=60.0,
                   help="release: seconds to wait for every answer (default 60)")
    g = ap.add_argument_group("drain")
    g.add_argument("--drain-rounds", type=int, default=20)
    g.add_argument("--drain-delay", type=float, default=0.5,
                   help="seconds the backend takes to answer the in-flight request")
    g = ap.add_argument_group("cycle")
    g.add_argument("--cycle-rate", type=float, default=200, help="requests/s to each side")
    g.add_argument("--cycle-duration", type=float, default=25, help="seconds of load")
    g.add_argument("--cycle-down", type=float, default=5, help="seconds the backend is down")
    g = ap.add_argument_group("paths")
    g.add_argument("--json", default="/tmp/intermission-bench.json", help="results file")
    g.add_argument("--module", default=DEFAULT_MODULE)
    g.add_argument("--nginx", default="/usr/sbin/nginx")
    g.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk")
    g.add_argument("--prefix", help="temp directory for everything (default: a new one in /tmp)")
    a = ap.parse_intermixed_args(argv)  # scenarios and options in any order
    a.scenarios = a.scenarios or list(SCENARIOS)
    for s in a.scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s!r} (choose from {', '.join(SCENARIOS)})")
    for path in (a.module, a.nginx, a.wrk):
        if not os.access(path, os.R_OK):
            ap.error(f"{path}: not found")
    a.n = [int(x) for x in a.n.split(",") if x]
    a.release_n = a.release_n or max(a.n)
    a.compare = [c for c in a.compare.split(",") if c]
    for c in a.compare:
        if c not in COMPARISONS:
            ap.error(f"unknown comparison {c!r}")
    a.release_modes = [m for m in a.release_modes.split(",") if m]
    for m in a.release_modes:
        if m not in ("live", "frozen"):
            ap.error(f"unknown release mode {m!r}")
    if a.slow_delay < a.measure + 2 * a.settle + 5:
        ap.error("--slow-delay must outlast the measurement (else proxy-wait answers early)")
    return a


def install_signal_handlers():
    """SIGTERM/SIGHUP (and SIGINT, which the wrapper's background job ignores) unwind
    through the finally blocks, which stop everything; a second signal does not cut that short."""
    def handler(signum, frame):
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        raise KeyboardInterrupt(f"signal {signum}")
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, handler)


def main(argv):
    a = parse_args(argv)
    own_prefix = a.prefix is None
    if own_prefix:
        a.prefix = tempfile.mkdtemp(prefix="intermission-bench.")
    procstat.set_pid_file(os.path.join(a.prefix, "pids"))
    install_signal_handlers()
    ctx = Context(a)
    results = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": os.environ.get("BENCH_COMMAND") or " ".join([sys.argv[0], *argv]),
        "scenarios_selected": a.scenarios,
        **environment(ctx),
        "targets": {"overhead_ratio_min": TARGET_RATIO, "hold_cpu_pct_max": TARGET_CPU_PCT,
                    "module_own_bytes_per_held_max": TARGET_OWN_BYTES,
                    "release_first_ms_max_for_10000": TARGET_FIRST_MS,
                    "release_last_ms_max_for_10000": TARGET_LAST_MS,
                    "drain_answer_ms_max": TARGET_DRAIN_MS},
        "scenarios": {},
    }
    table = Table()
    status = 0
    try:
        if "overhead" in a.scenarios:
            log("overhead")
            results["scenarios"]["overhead"] = scenario_overhead(ctx)
            table_overhead(table, results["scenarios"]["overhead"])
        state = None
        if "hold" in a.scenarios:
            log("hold")
            keep = "release" in a.scenarios and a.release_n in a.n
            results["scenarios"]["hold"], state = scenario_hold(ctx, keep)
            table_hold(table, results["scenarios"]["hold"])
        if "release" in a.scenarios:
            results["scenarios"]["release"] = {}
            for mode in a.release_modes:
                # the first run continues from hold's held requests, if any; later ones hold anew
                log(f"release, {mode} backend" + (" (continuing from hold)" if state else ""))
                res = scenario_release(ctx, state, mode)
                res["continued_from_hold"] = state is not None
                state = None
                results["scenarios"]["release"][mode] = res
                table_release(table, res)
        if "drain" in a.scenarios:
            log("drain")
            results["scenarios"]["drain"] = scenario_drain(ctx)
            table_drain(table, results["scenarios"]["drain"])
        if "cycle" in a.scenarios:
            log("cycle")
            results["scenarios"]["cycle"] = scenario_cycle(ctx)
            table_cycle(table, results["scenarios"]["cycle"])
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); stopping")
        results["interrupted"] = str(e) or "SIGINT"
        status = 130
    except Exception as e:
        log(f"error: {e.__class__.__name__}: {e}")
        results["error"] = f"{e.__class__.__name__}: {e}"
        status = 1
        import traceback
        traceback.print_exc()
    finally:
        ctx.stop_all()
        results["loadavg_end"] = os.getloadavg()
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
        if own_prefix:
            shutil.rmtree(a.prefix, ignore_errors=True)
    print(table.render() if table.rows else "(no scenario completed)")
    if status:
        kind = "interrupted" if "interrupted" in results else "failed"
        print(f"\n{kind}: {results.get(kind) or results.get('error')}")
    print()
    print(f"machine: {results['machine']['nproc']} x {results['machine']['cpu_model']}, "
          f"kernel {results['machine']['kernel']}; {results['nginx']}; "
          f"loadavg {results['loadavg_start'][0]:.2f} -> {results['loadavg_end'][0]:.2f}")
    nofile = results["limits"]["nofile"][0]
    if nofile < 200000:
        print(f"fd limit: {nofile} (could not raise it to 200000; nginx worker_rlimit_nofile "
              f"{results['limits']['nginx_worker_rlimit_nofile']})")
    if results["sysctl"]["somaxconn_note"]:
        print(f"sysctl: {results['sysctl']['somaxconn_note']}")
    others = results["foreign_nginx_processes_start"]
    if others:
        print(f"note: {len(others)} other nginx processes were running (not ours): figures may be noisy")
    print(f"results: {a.json}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
