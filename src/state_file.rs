//! `intermission_state_file`: the paused scopes on disk, so that a full restart of nginx (a
//! crash, `systemctl restart`) in the middle of a maintenance comes back paused.
//!
//! The worker that changes the state (pause, resume, auto-resume) writes the whole file
//! under the zone's mutex: a write to a file of its own, then a rename, so that the file is
//! always whole and the last change always wins. That is a small, blocking write in the
//! event loop, on purpose: it happens once per control command, and a state that is not on
//! disk when the command answers could be lost by a crash right after. The master reads it
//! once, when it creates the zone (not on a reload, which keeps the zone and its state).
//!
//! During a binary upgrade two nginx generations run at once, each with its own zone: a
//! resume answered by one must also release what the other holds. The file is their common
//! ground: a worker that holds requests looks at it on its tick (`sync`), and applies a
//! change another generation made to its own zone. It never writes from there, so the two
//! generations cannot echo each other's changes back and forth.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use intermission_core::shared::Shared;
use intermission_core::state_file::{self, Entry};
use ngx::ffi::{ngx_log_t, ngx_pid, NGX_LOG_ERR, NGX_LOG_NOTICE, NGX_LOG_WARN};
use ngx::ngx_log_error;

use crate::conf::MainConf;
use crate::ngx_util::now_unix_ms;

fn path(mcf: &MainConf) -> Option<&Path> {
    let p = mcf.state_file.as_bytes();
    (!p.is_empty()).then(|| Path::new(std::ffi::OsStr::from_bytes(p)))
}

/// Writes the paused scopes of this configuration. Call it under the zone's mutex.
pub fn save(mcf: &MainConf, shared: &Shared, log: *mut ngx_log_t) {
    let Some(path) = path(mcf) else { return };
    let entries: Vec<Entry> = (0..mcf.scope_count())
        .map(|i| shared.scope(usize::from(mcf.shm_index[i])))
        .filter(|s| s.is_paused())
        .map(|s| Entry {
            scope: s.name(),
            paused_since_ms: s.paused_since().unwrap_or(1),
            auto_resume_at_ms: s.auto_resume_at(),
        })
        .collect();
    // SAFETY: set by nginx when the process started.
    let tmp = path.with_extension(format!("tmp.{}", unsafe { ngx_pid }));
    let written = std::fs::write(&tmp, state_file::render(&entries))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        ngx_log_error!(
            NGX_LOG_ERR,
            log,
            "intermission: could not write the state file \"{}\": {}",
            path.display(),
            e
        );
    }
}

/// Identifies a version of the file, to notice a change made by another nginx generation.
/// Every save renames a new file into place, so the inode changes even when two saves fall
/// within the file system's timestamp granularity.
pub type Version = (u64, i64, i64);

pub fn version(mcf: &MainConf) -> Option<Version> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path(mcf)?).ok().map(|m| (m.ino(), m.mtime(), m.mtime_nsec()))
}

/// What another generation changed since `seen`: the scopes (indexes in this configuration)
/// to resume, and those to pause with their pause time and deadline. Empty if the file did
/// not change or cannot be read (a broken file is reported when nginx starts, not here).
pub struct Changes {
    pub resume: Vec<usize>,
    pub pause: Vec<(usize, u64, Option<u64>)>,
}

pub fn changes(mcf: &MainConf, shared: &Shared, seen: &mut Option<Version>) -> Changes {
    let mut out = Changes { resume: Vec::new(), pause: Vec::new() };
    let now = version(mcf);
    if now.is_none() || now == *seen {
        return out;
    }
    *seen = now;
    let Some(entries) =
        path(mcf).and_then(|p| std::fs::read(p).ok()).and_then(|t| state_file::parse(&t).ok())
    else {
        return out;
    };
    for i in 0..mcf.scope_count() {
        let scope = shared.scope(usize::from(mcf.shm_index[i]));
        match (entries.iter().find(|e| e.scope == mcf.scope_name(i)), scope.is_paused()) {
            (None, true) => out.resume.push(i),
            (Some(e), false) => out.pause.push((i, e.paused_since_ms, e.auto_resume_at_ms)),
            _ => {}
        }
    }
    out
}

/// In the master, when the zone is new: pauses the scopes the file says were paused.
pub fn restore(mcf: &MainConf, shared: &Shared, log: *mut ngx_log_t) {
    let Some(path) = path(mcf) else { return };
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            ngx_log_error!(
                NGX_LOG_NOTICE,
                log,
                "intermission: no state file \"{}\" yet: starting unpaused",
                path.display()
            );
            return;
        }
        Err(e) => {
            ngx_log_error!(
                NGX_LOG_WARN,
                log,
                "intermission: cannot read the state file \"{}\" ({}): starting unpaused",
                path.display(),
                e
            );
            return;
        }
    };
    let entries = match state_file::parse(&text) {
        Ok(entries) => entries,
        Err(e) => {
            ngx_log_error!(
                NGX_LOG_WARN,
                log,
                "intermission: the state file \"{}\" is corrupt ({}): starting unpaused",
                path.display(),
                e
            );
            return;
        }
    };
    let now = now_unix_ms();
    for e in entries {
        let Some(i) = mcf.find(&e.scope) else {
            ngx_log_error!(
                NGX_LOG_NOTICE,
                log,
                "intermission: the state file pauses scope \"{}\", which the configuration no \
                 longer has",
                e.scope
            );
            continue;
        };
        if e.auto_resume_at_ms.is_some_and(|at| at <= now) {
            ngx_log_error!(
                NGX_LOG_NOTICE,
                log,
                "intermission: scope \"{}\" was paused, but its auto-resume time passed while \
                 nginx was stopped: starting unpaused",
                e.scope
            );
            continue;
        }
        shared.scope(usize::from(mcf.shm_index[i])).pause(e.paused_since_ms, e.auto_resume_at_ms);
        ngx_log_error!(
            NGX_LOG_NOTICE,
            log,
            "intermission: scope \"{}\" starts paused, as the state file \"{}\" says",
            e.scope,
            path.display()
        );
    }
}
