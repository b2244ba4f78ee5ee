//! A graceful stop while requests are held (`nginx -s quit`, `systemctl stop`).
//!
//! nginx closes the listening sockets at once, the control endpoint's too, so no resume can
//! come any more; a worker that kept holding would only wait for `intermission_max_time` or
//! for the fast shutdown that follows (Debian's unit: `QUIT`, 5 s, `TERM`, 5 s, `KILL`), and
//! its clients would get an empty reply. So a worker that stops for real releases what it
//! holds at once, to the backend, oldest first and ignoring the release pace. The pause
//! itself stays (and so does the state file): the next start is paused again.
//!
//! A worker gets the same `QUIT` in two cases where it must keep holding, because the
//! nginx that follows it takes over the pause and will be resumed:
//!
//! - a reload: the master committed a newer configuration with the same zone before it
//!   told the old workers to quit (`Shared::configs` moved past the worker's own);
//! - the old generation of a binary upgrade: the new binary has a zone of its own, but the
//!   old master renamed its pid file to the `oldpid` name (`<pid>.oldbin`) before it ran the
//!   new binary, and renames it back if that one dies: the file exists and names the
//!   worker's master. The new generation resumes it through the state file, as before.
//!
//! A worker that a reload left holding learns of a later real stop from the zone: the
//! workers of the newest configuration set `Shared::set_stopping` when they stop (on their
//! tick, or when they exit holding nothing), and the old ones see it on their next tick.
//!
//! `nginx -s stop` (`TERM`) is a fast shutdown: the worker exits at once, without finalizing
//! any request, and the kernel closes the held requests' connections with the process.

use core::cell::Cell;
use core::ptr::{self, addr_of};
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use ngx::ffi::{
    ngx_core_conf_t, ngx_core_module, ngx_cycle, ngx_cycle_t, ngx_del_timer, ngx_exiting,
    ngx_log_t, ngx_quit, NGX_LOG_ERR, NGX_LOG_NOTICE,
};
use ngx::http::HttpModuleMainConf;
use ngx::ngx_log_error;

use super::Worker;
use crate::Module;

/// In the master: the number of the configuration it committed last. A worker forks with
/// its own configuration's, since the master commits the next one only after it forked.
/// (Read from the zone in the worker instead, a reload right after the fork could be taken
/// for the worker's own.)
static COMMITTED: AtomicU64 = AtomicU64::new(0);

/// What a worker made of being told to shut down.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Seen {
    /// Not told yet.
    Running,
    /// A reload: keeps holding until the resume.
    Reload,
    /// The old generation of a binary upgrade: keeps holding until the resume.
    Upgrade,
    /// A real stop: lets everything go.
    Stop,
}

/// Per-worker: what the worker needs to tell a stop from a reload or an upgrade.
pub struct Shutdown {
    /// The number of this worker's configuration in the zone.
    conf: u64,
    /// The core module's `oldpid` file of this configuration, NUL excluded.
    oldpid: Vec<u8>,
    seen: Cell<Seen>,
}

impl Shutdown {
    pub fn new(cycle: &ngx_cycle_t) -> Shutdown {
        // SAFETY: the core module's configuration exists in every cycle; its `oldpid` is a
        // NUL-terminated string of `len` bytes (NUL included) in the cycle's pool.
        let oldpid = unsafe {
            let ccf = (*cycle.conf_ctx.add(ngx_core_module.index)).cast::<ngx_core_conf_t>();
            match ccf.as_ref() {
                Some(c) if !c.oldpid.data.is_null() => {
                    let b = core::slice::from_raw_parts(c.oldpid.data, c.oldpid.len);
                    b.split(|&c| c == 0).next().unwrap_or_default().to_vec()
                }
                _ => Vec::new(),
            }
        };
        Shutdown { conf: COMMITTED.load(Relaxed), oldpid, seen: Cell::new(Seen::Running) }
    }
}

/// After the master committed a configuration (nginx's `init_module`, which runs only once
/// the new cycle can no longer fail): it is numbered in the zone, so that the workers of
/// the one before can tell the reload from a stop.
pub fn committed(cycle: &ngx_cycle_t) {
    let Some(mcf) = Module::main_conf(cycle) else { return };
    if let Some(shared) = mcf.shared() {
        COMMITTED.store(shared.commit_config(), Relaxed);
    }
}

/// Whether nginx has told this worker to shut down gracefully.
fn exiting() -> bool {
    // SAFETY: nginx's flags, written by this process's signal handler (`ngx_quit`) and event
    // loop (`ngx_exiting`); read as a word each.
    unsafe {
        ptr::read_volatile(addr_of!(ngx_exiting)) != 0
            || ptr::read_volatile(addr_of!(ngx_quit)) != 0
    }
}

impl Worker {
    /// What this worker makes of being told to shut down; decided once, since the file of
    /// an upgrade is read, then sticky but for a stop that the zone reports later.
    fn shutdown_seen(&self, log: *mut ngx_log_t) -> Seen {
        let d = &self.shutdown;
        let mut seen = d.seen.get();
        if seen == Seen::Running {
            seen = if self.shared.configs() > d.conf {
                Seen::Reload
            } else if upgrading(&d.oldpid) {
                Seen::Upgrade
            } else {
                Seen::Stop
            };
            let held: u32 = self.queues.iter().map(|q| q.len.get()).sum();
            if seen != Seen::Stop && held > 0 {
                ngx_log_error!(
                    NGX_LOG_NOTICE,
                    log,
                    "intermission: worker shutting down for {}: it keeps holding {} \
                     request(s) until the resume",
                    if seen == Seen::Reload { "a reload" } else { "a binary upgrade" },
                    held
                );
            }
        }
        if seen != Seen::Stop && self.shared.is_stopping() {
            seen = Seen::Stop;
        }
        d.seen.set(seen);
        seen
    }

    /// Releases every held request at once: oldest first over the scopes, whatever the
    /// scopes' state and release pace. Returns how many of each scope.
    fn release_all(&self) -> Vec<u32> {
        let mut n = vec![0u32; self.queues.len()];
        loop {
            let next = (0..self.queues.len())
                .filter_map(|i| self.first(i).map(|st| (st.arrival, i)))
                .min();
            let Some((_, i)) = next else { break };
            let Some(st) = self.first(i) else { break };
            self.let_go(st, ": nginx is stopping");
            n[i] += 1;
        }
        for (i, &k) in n.iter().enumerate() {
            if k > 0 {
                self.scope(i).count_released(u64::from(k));
                self.publish_held(i);
            }
        }
        // SAFETY: the event lives in the leaked state. A paced release's timer is not
        // cancelable: it would keep the worker alive for nothing until it fires.
        unsafe {
            if (*self.pace.get()).timer_set() != 0 {
                ngx_del_timer(self.pace.get());
            }
        }
        n
    }
}

/// On the tick (armed while the worker holds anything): once nginx shuts the worker down
/// for a real stop, everything it holds goes to the backend, now and on every later tick
/// (a keepalive or HTTP/2 connection can still bring a request in).
pub(super) fn check(w: &Worker, log: *mut ngx_log_t) {
    if !exiting() || w.shutdown_seen(log) != Seen::Stop {
        return;
    }
    w.shared.set_stopping();
    let n = w.release_all();
    for (i, &k) in n.iter().enumerate() {
        if k == 0 {
            continue;
        }
        let scope = w.scope(i);
        ngx_log_error!(
            NGX_LOG_ERR,
            log,
            "intermission: nginx is stopping: released {} held request(s) of scope \"{}\" {}",
            k,
            scope.name(),
            if scope.is_paused() { "while it is paused" } else { "ahead of its paced release" }
        );
    }
}

impl Worker {
    /// Whether nginx stops this worker for real: nothing it holds again would be released
    /// (its release ran), so a request that fails now gets nginx's answer.
    pub fn stopping(&self) -> bool {
        // SAFETY: the worker's cycle, set by nginx for the process's life.
        exiting() && self.shutdown_seen(unsafe { (*ngx_cycle).log }) == Seen::Stop
    }
}

/// A worker exits: if it is a real stop, the workers that reloads left holding learn it.
pub(super) fn exit(w: &Worker) {
    // SAFETY: the worker's cycle, set by nginx for the process's life.
    let log = unsafe { (*ngx_cycle).log };
    if exiting() && w.shutdown_seen(log) == Seen::Stop {
        w.shared.set_stopping();
    }
}

/// Whether this worker's master is the old one of a binary upgrade: the `oldpid` file
/// exists and names it.
fn upgrading(oldpid: &[u8]) -> bool {
    if oldpid.is_empty() {
        return false;
    }
    let path = Path::new(OsStr::from_bytes(oldpid));
    let mut text = Vec::new();
    let read = std::fs::File::open(path).and_then(|f| f.take(32).read_to_end(&mut text));
    if read.is_err() {
        return false;
    }
    let pid = core::str::from_utf8(&text).ok().and_then(|t| t.trim().parse::<libc::pid_t>().ok());
    // SAFETY: a plain system call.
    pid.is_some_and(|p| p == unsafe { libc::getppid() })
}
