"""Process bookkeeping and /proc sampling for the intermission benchmark.

Every process the benchmark starts is recorded (pid and start time) in <prefix>/pids, so that
the shell wrapper can kill leftovers after a crash without ever touching a process that merely
reuses one of those pids.
"""

import ctypes
import os
import signal
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1

_pid_file = None


def set_pid_file(path):
    global _pid_file
    _pid_file = path


def _stat_fields(pid):
    """Fields 3.. of /proc/<pid>/stat (the command name may contain spaces and parentheses)."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    return text[text.rindex(")") + 2:].split()


def start_time(pid):
    return int(_stat_fields(pid)[19])  # field 22: starttime, in clock ticks since boot


def track(pid):
    """Records a process we started, so that the wrapper's trap can find it if we die."""
    if _pid_file is None:
        return
    try:
        st = start_time(pid)
    except (OSError, ValueError):
        return
    with open(_pid_file, "a") as f:
        f.write(f"{pid} {st}\n")


def die_with_parent():
    """preexec_fn: the child gets SIGTERM if the benchmark process dies (even by SIGKILL)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def children(ppid):
    """Pids whose parent is ppid (nginx workers are the master's children)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if int(_stat_fields(name)[1]) == ppid:  # field 4: ppid
                out.append(int(name))
        except (OSError, ValueError, IndexError):
            pass  # exited while we looked
    return sorted(out)


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


# ------------------------------------------------------------------------------ CPU

def cpu_ticks(pid):
    f = _stat_fields(pid)
    return int(f[11]) + int(f[12])  # fields 14, 15: utime, stime


def ctx_switches(pid):
    """Voluntary + involuntary context switches: roughly how often the process woke up."""
    n = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                n += int(line.split()[1])
    return n


def cpu_window(pids, seconds):
    """CPU time (utime+stime) of pids over a window of wall time, as % of one core, plus wakeups.

    /proc counts in clock ticks (1/CLK_TCK s), so a 10 s window resolves 0.1 % of a core.
    """
    t0 = time.monotonic()
    ticks0 = {p: cpu_ticks(p) for p in pids}
    ctx0 = {p: ctx_switches(p) for p in pids}
    time.sleep(seconds)
    ticks1 = {p: cpu_ticks(p) for p in pids}
    ctx1 = {p: ctx_switches(p) for p in pids}
    wall = time.monotonic() - t0
    per_pid = {}
    for p in pids:
        cpu_s = (ticks1[p] - ticks0[p]) / CLK_TCK
        per_pid[str(p)] = {
            "cpu_s": cpu_s,
            "cpu_pct": 100.0 * cpu_s / wall,
            "wakeups_per_s": (ctx1[p] - ctx0[p]) / wall,
        }
    total_s = sum(v["cpu_s"] for v in per_pid.values())
    return {
        "wall_s": wall,
        "cpu_s": total_s,
        "cpu_pct_of_one_core": 100.0 * total_s / wall,
        "wakeups_per_s": sum(v["wakeups_per_s"] for v in per_pid.values()),
        "per_worker": per_pid,
        "clk_tck": CLK_TCK,
    }


# --------------------------------------------------------------------------- memory

def _smaps_rollup(pid):
    vals = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                vals[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return vals


def _vm_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def mem_sample(pids):
    """Memory of pids, summed, in bytes.

    rss: resident pages (shared ones counted once per process); pss: shared pages divided
    among the processes that map them; private: pages only this process maps (Private_Clean +
    Private_Dirty), which is where a worker's heap growth shows.
    """
    tot = {"rss": 0, "pss": 0, "private": 0, "anonymous": 0, "vm_rss": 0}
    for p in pids:
        s = _smaps_rollup(p)
        tot["rss"] += s.get("Rss", 0)
        tot["pss"] += s.get("Pss", 0)
        tot["private"] += s.get("Private_Clean", 0) + s.get("Private_Dirty", 0)
        tot["anonymous"] += s.get("Anonymous", 0)
        tot["vm_rss"] += _vm_rss(p)
    return tot


# ------------------------------------------------------------------------- stopping

def stop_process(proc, sig=signal.SIGTERM, timeout=10.0, extra_pids=()):
    """Signals a Popen child and waits; SIGKILLs it (and extra_pids, e.g. nginx workers that
    outlived their master) if it does not go in time."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.send_signal(signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except Exception:  # subprocess.TimeoutExpired
            proc.kill()
            proc.wait(5)
    deadline = time.monotonic() + timeout
    for p in extra_pids:
        while alive(p) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(p):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
