//! `intermission_state_file`: the paused scopes on disk, so that a full restart of nginx (a
//! crash, `systemctl restart`) in the middle of a maintenance comes back paused, and so that
//! the two generations of a binary upgrade, each with its own zone, follow each other. And
//! the scopes that are down (`intermission_on_failure hold`), which a new zone takes at its
//! start; a running generation does not follow them: each checks the backend itself.
//!
//! The zone is the one source of truth; the file only persists it. Every change of a scope's
//! state and the write of the file happen in one critical section (the zone's mutex), so the
//! file always says what the zone says when the lock is released. The write is small and
//! local, on purpose in the event loop: a new file of its own (mode 0600), fsync, rename,
//! fsync of the directory, so that a crash right after the answer cannot lose the change.
//!
//! Following the file (binary upgrade): a worker looks at it under the same mutex. The file
//! names the generation that wrote it; a generation never applies its own file (which is a
//! copy of its zone), only a version another generation wrote, once (the zone remembers the
//! version it last wrote or applied). So two workers of one nginx cannot undo each other's
//! changes through the file, and two generations cannot echo changes back and forth.
//!
//! The file decides whether a site is paused, so it is trusted only if nobody but the
//! workers' user (or root) can have written it: a file that group or others may write, or
//! that another user owns, is refused and logged.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use intermission_core::shared::Shared;
use intermission_core::state_file::{self, Down, Entry};
use ngx::ffi::{
    ngx_core_conf_t, ngx_core_module, ngx_cycle_t, ngx_log_t, NGX_LOG_ERR, NGX_LOG_NOTICE,
};
use ngx::ngx_log_error;

use crate::conf::MainConf;
use crate::ngx_util::{now_unix_ms, LOG_STATE};

/// The largest state file read: a few lines per scope.
const MAX_FILE: u64 = 64 * 1024;

pub fn path(mcf: &MainConf) -> Option<&Path> {
    let p = mcf.state_file.as_bytes();
    (!p.is_empty()).then(|| Path::new(std::ffi::OsStr::from_bytes(p)))
}

/// The version of a file: its inode and mtime. Every save renames a new file into place, so
/// the inode changes even within the file system's timestamp granularity.
fn version(m: &Metadata) -> (u64, u64, u64) {
    (m.ino(), m.mtime() as u64, m.mtime_nsec() as u64)
}

/// The user the workers run as, and its group, seen from the master of `cycle`: the `user`
/// directive's when the master runs as root, else the master's own.
pub fn workers_user(cycle: *const ngx_cycle_t) -> (u32, u32) {
    // SAFETY: plain system calls.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if euid != 0 {
        return (euid, egid);
    }
    // SAFETY: the core module's configuration exists in every cycle once it is read.
    unsafe {
        let ccf = (*(*cycle).conf_ctx.add(ngx_core_module.index)).cast::<ngx_core_conf_t>();
        match ccf.as_ref() {
            Some(c) if c.user != u32::MAX => (c.user, c.group),
            _ => (euid, egid),
        }
    }
}

/// Refuses a file that someone other than `uid` or root may have written.
fn trusted(m: &Metadata, uid: u32) -> Result<(), String> {
    if !m.is_file() {
        return Err("it is not a regular file".into());
    }
    if m.mode() & 0o022 != 0 {
        return Err(format!(
            "it is writable by group or others (mode {:04o}): make it 0600",
            m.mode() & 0o7777
        ));
    }
    if m.uid() != uid && m.uid() != 0 {
        return Err(format!(
            "it is owned by uid {}, not by the workers' user (uid {uid})",
            m.uid()
        ));
    }
    Ok(())
}

/// At start-up and `nginx -t`: the workers must be able to write the file's directory, or
/// every pause would be lost on the next restart.
pub fn check_dir(mcf: &MainConf, cycle: *const ngx_cycle_t) -> Result<(), String> {
    let Some(path) = path(mcf) else { return Ok(()) };
    let dir = path.parent().unwrap_or(Path::new("/"));
    let (uid, gid) = workers_user(cycle);
    let m = std::fs::metadata(dir)
        .map_err(|e| format!("cannot use the directory \"{}\": {e}", dir.display()))?;
    if !m.is_dir() {
        return Err(format!("\"{}\" is not a directory", dir.display()));
    }
    let mode = m.mode();
    let writable = uid == 0
        || (m.uid() == uid && mode & 0o300 == 0o300)
        || (m.gid() == gid && mode & 0o030 == 0o030)
        || mode & 0o003 == 0o003;
    if !writable {
        return Err(format!(
            "the directory \"{}\" is not writable by the workers' user (uid {uid}): create it \
             for that user, e.g. install -d -o www-data -m 0700 {}",
            dir.display(),
            dir.display()
        ));
    }
    Ok(())
}

/// Writes the paused and the down scopes of the zone. Call it in the critical section that
/// changed them.
pub fn save(mcf: &MainConf, shared: &Shared) -> Result<(), String> {
    let Some(path) = path(mcf) else { return Ok(()) };
    let scopes = || shared.named().map(|i| shared.scope(i));
    let entries: Vec<Entry> = scopes()
        .filter(|s| s.is_paused())
        .map(|s| Entry {
            scope: s.name(),
            paused_since_ms: s.paused_since().unwrap_or(1),
            auto_resume_at_ms: s.auto_resume_at(),
        })
        .collect();
    let down: Vec<Down> = scopes()
        .filter(|s| s.is_down())
        .map(|s| Down {
            scope: s.name(),
            since_ms: s.down_since().max(1),
            status: s.failed_status(),
        })
        .collect();
    let text = state_file::render(shared.generation(), &entries, &down);
    // SAFETY: a plain system call.
    let tmp = path.with_extension(format!("tmp.{}", unsafe { libc::getpid() }));
    let _ = std::fs::remove_file(&tmp);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path))
        .and_then(|()| File::open(path.parent().unwrap_or(Path::new("/")))?.sync_all())
        .and_then(|()| std::fs::metadata(path));
    match written {
        Ok(m) => {
            shared.set_file_seen(version(&m));
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(format!("could not write the state file \"{}\": {e}", path.display()))
        }
    }
}

/// A change of the zone that the file records, and its write, in one critical section:
/// first what another generation wrote since this one last looked (else this write would
/// undo it, and the other generation would follow that), then `change`, then the write if
/// `change` says so (`Some` of its result). Call it under the zone's mutex; hand what it
/// followed to `runtime::followed` after.
pub fn change<T>(
    mcf: &MainConf,
    shared: &Shared,
    change: impl FnOnce() -> (T, bool),
) -> (T, Followed, Option<Result<(), String>>) {
    let followed = follow(mcf, shared);
    let (out, write) = change();
    (out, followed, write.then(|| save(mcf, shared)))
}

/// Reads an open state file that `uid` (the workers' user) or root may have written, and
/// nobody else; the error says why not, naming the file.
fn load(path: &Path, f: &mut File, m: &Metadata, uid: u32) -> Result<state_file::State, String> {
    let name = path.display();
    if !m.is_file() {
        return Err(format!("cannot read the state file \"{name}\" (not a file)"));
    }
    trusted(m, uid).map_err(|e| format!("refusing the state file \"{name}\": {e}"))?;
    let mut text = Vec::new();
    Read::by_ref(f)
        .take(MAX_FILE)
        .read_to_end(&mut text)
        .map_err(|e| format!("cannot read the state file \"{name}\" ({e})"))?;
    state_file::parse(&text).map_err(|e| format!("the state file \"{name}\" is corrupt ({e})"))
}

/// What following the file did to the zone: scopes (zone indexes) paused, resumed or given
/// another deadline, and a problem to log.
#[derive(Default)]
pub struct Followed {
    pub paused: Vec<usize>,
    pub resumed: Vec<usize>,
    /// Paused here already, with another auto-resume deadline now.
    pub deadlines: Vec<usize>,
    pub problem: Option<String>,
}

impl Followed {
    pub fn is_empty(&self) -> bool {
        self.paused.is_empty()
            && self.resumed.is_empty()
            && self.deadlines.is_empty()
            && self.problem.is_none()
    }
}

/// Applies a version of the file that another generation wrote and this one has not seen.
/// Call it under the zone's mutex; log what it returns after.
pub fn follow(mcf: &MainConf, shared: &Shared) -> Followed {
    let mut out = Followed::default();
    let Some(path) = path(mcf) else { return out };
    let Ok(mut f) = File::open(path) else { return out };
    let Ok(m) = f.metadata() else { return out };
    if version(&m) == shared.file_seen() {
        return out;
    }
    shared.set_file_seen(version(&m));
    // SAFETY: a plain system call.
    let state = match load(path, &mut f, &m, unsafe { libc::geteuid() }) {
        Ok(s) => s,
        Err(e) => {
            out.problem = Some(e);
            return out;
        }
    };
    if state.writer == Some(shared.generation()) {
        return out;
    }
    for i in shared.named() {
        let scope = shared.scope(i);
        let name = scope.name();
        match (state.entries.iter().find(|e| e.scope == name), scope.is_paused()) {
            (None, true) if scope.resume() => out.resumed.push(i),
            (Some(e), false) if scope.pause(e.paused_since_ms, e.auto_resume_at_ms) => {
                out.paused.push(i)
            }
            // Paused in both, but the other generation moved (or cleared) the deadline: this
            // one must not resume at the old deadline, nor the other follow it there.
            (Some(e), true) if scope.auto_resume_at() != e.auto_resume_at_ms => {
                scope.set_auto_resume(e.auto_resume_at_ms);
                out.deadlines.push(i);
            }
            _ => {}
        }
    }
    out
}

/// In the master, when the zone is new (a start, or the new binary of an upgrade): pauses
/// the scopes the file says were paused. Runs before any worker exists.
pub fn restore(mcf: &MainConf, shared: &Shared, cycle: *const ngx_cycle_t, log: *mut ngx_log_t) {
    let Some(path) = path(mcf) else { return };
    let fail = |what: String| {
        ngx_log_error!(NGX_LOG_ERR, log, "intermission: {}: starting unpaused", what);
    };
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            ngx_log_error!(
                NGX_LOG_NOTICE,
                log,
                "intermission: no state file \"{}\" yet: starting unpaused",
                path.display()
            );
            return;
        }
        Err(e) => return fail(format!("cannot read the state file \"{}\" ({e})", path.display())),
    };
    let m = match f.metadata() {
        Ok(m) => m,
        Err(e) => return fail(format!("cannot read the state file \"{}\" ({e})", path.display())),
    };
    shared.set_file_seen(version(&m));
    let state = match load(path, &mut f, &m, workers_user(cycle).0) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let now = now_unix_ms();
    for e in state.entries {
        let Some(i) = mcf.find(&e.scope) else {
            ngx_log_error!(
                NGX_LOG_ERR,
                log,
                "intermission: the state file pauses scope \"{}\", which the configuration no \
                 longer has",
                e.scope
            );
            continue;
        };
        if e.auto_resume_at_ms.is_some_and(|at| at <= now) {
            ngx_log_error!(
                LOG_STATE,
                log,
                "intermission: scope \"{}\" was paused, but its auto-resume time passed while \
                 nginx was stopped: starting unpaused",
                e.scope
            );
            continue;
        }
        shared.scope(usize::from(mcf.shm_index[i])).pause(e.paused_since_ms, e.auto_resume_at_ms);
        ngx_log_error!(
            LOG_STATE,
            log,
            "intermission: scope \"{}\" starts paused, as the state file \"{}\" says",
            e.scope,
            path.display()
        );
    }
    for d in state.down {
        // A scope no location holds on a failure would never be checked, so never come up.
        let Some(i) = mcf.find(&d.scope).filter(|&i| crate::failure::holds_scope(mcf, i)) else {
            ngx_log_error!(
                LOG_STATE,
                log,
                "intermission: the state file says scope \"{}\" is down, but no location of \
                 the configuration holds its requests on a failure: starting up",
                d.scope
            );
            continue;
        };
        shared.scope(usize::from(mcf.shm_index[i])).restore_down(d.since_ms, d.status);
        ngx_log_error!(
            LOG_STATE,
            log,
            "intermission: scope \"{}\" starts down (for {} ms), as the state file \"{}\" \
             says: its requests are held until a readiness check finds the backend",
            d.scope,
            now.saturating_sub(d.since_ms),
            path.display()
        );
    }
}
