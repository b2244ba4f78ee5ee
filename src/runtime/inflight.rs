//! Requests in flight (passed on by an `intermission` location, not yet finished) and the
//! drain waiters that wait for them to end. Both are this worker's figures, published to its
//! slot in the shared zone, where they count only while this process lives.
//!
//! A drain waits only for some of them ([`Kind::Waited`]): a connection that switched
//! protocols (WebSocket) lasts until the backend's restart ends it, and a stream of an
//! `intermission_drain off` location (server-sent events, a long download) as long as its
//! client listens; waiting for either would be waiting for ever. They are counted apart,
//! and with `intermission_close_on_pause` closed when their scope is paused.
//!
//! Each request in flight is a [`Flight`] linked in its worker's list for its scope and
//! kind, in the order the requests were passed on: the head of a scope's waited-for list is
//! its oldest, what `status` and a timed-out drain name as blocking the drain.

use core::ptr;

use intermission_core::shared::{Blocker, BlockerEntry, Kind, BLOCKERS_PER_SLOT, TABLE_SCOPES};
use ngx::ffi::{
    ngx_add_timer, ngx_event_t, ngx_http_request_t, ngx_post_event, ngx_posted_events,
    ngx_queue_insert_before, ngx_queue_remove, ngx_queue_t, NGX_LOG_INFO,
};
use ngx::ngx_log_error;

use super::request::Outcome;
use super::{get, wake, Worker};
use crate::conf::LocConf;
use crate::ngx_util::{now_unix_ms, process_alive};
use crate::shm;

/// How long a request must have been in flight to be published as a blocker. A worker
/// publishes when its next request reaches that age, and at least this often while it has
/// requests in flight.
pub const BLOCKER_AGE_MS: u64 = 1000;

/// Blockers a control answer shows per scope.
pub const BLOCKERS_SHOWN: usize = 10;

/// A request in flight, in pool memory: in a cleanup entry of its own, or in the state of a
/// request that was held.
#[repr(C)]
pub struct Flight {
    /// First field: a list link is also a pointer to its flight.
    link: ngx_queue_t,
    r: *mut ngx_http_request_t,
    /// Unix ms at which it was passed on.
    since_ms: u64,
    /// Index of the scope in this configuration.
    pub scope: usize,
    /// For a request that was never held: passed or bypassed (or, once it left for another
    /// scope, rejected until it is recorded again).
    pub outcome: Outcome,
    kind: Kind,
    /// `intermission_close_on_pause` of its location.
    close_on_pause: bool,
    /// Linked in its worker's list, and counted.
    linked: bool,
    /// Closed by a pause already.
    closed: bool,
    /// Holds a turn of its scope's release window until its response ends (`end_turn`).
    pub(super) turn: bool,
}

impl Flight {
    /// A flight that is not in flight (yet).
    pub fn idle(r: *mut ngx_http_request_t, scope: usize, outcome: Outcome) -> Flight {
        Flight {
            // SAFETY: an all-zero link is an unlinked one.
            link: unsafe { core::mem::zeroed() },
            r,
            since_ms: 0,
            scope,
            outcome,
            kind: Kind::Waited,
            close_on_pause: false,
            linked: false,
            closed: false,
            turn: false,
        }
    }

    pub fn is_linked(&self) -> bool {
        self.linked
    }
}

/// A kind as the index of the per-scope lists and counts.
fn index(kind: Kind) -> usize {
    kind as usize
}

impl Worker {
    /// A request of scope `f.scope` is passed on: it is in flight until its pool cleanup
    /// (`flight_end`). Its location (`lcf`, the request's) says whether a drain waits for it.
    pub fn flight_start(&self, f: &mut Flight, lcf: Option<&LocConf>) {
        if f.linked {
            return;
        }
        f.kind = if lcf.is_some_and(|l| l.drain == 0) { Kind::Stream } else { Kind::Waited };
        f.close_on_pause = lcf.is_some_and(|l| l.close_on_pause == 1);
        f.since_ms = now_unix_ms();
        f.closed = false;
        self.link(f);
        if f.kind == Kind::Waited {
            self.arm_blockers();
        }
    }

    /// An in-flight request finished (or left for another scope). The last one a drain
    /// waits for wakes the drain waiters.
    pub fn flight_end(&self, f: &mut Flight) {
        self.end_turn(f);
        if !f.linked {
            return;
        }
        self.unlink(f);
        if f.kind == Kind::Waited
            && self.published.get()
            && f.since_ms <= self.published_newest.get()
        {
            // It may be in the slot's list: a drain answer must not show a request that ended.
            self.publish_blockers();
        }
        if f.kind != Kind::Waited || self.count(f.scope, Kind::Waited) != 0 {
            return;
        }
        let shm = self.shm(f.scope);
        if self.waiting[shm].get() > 0 {
            // Not from inside another request's cleanup: after the current handler.
            // SAFETY: the event lives in the leaked state.
            unsafe { ngx_post_event(self.check.get(), ptr::addr_of_mut!(ngx_posted_events)) };
        }
        if self.shared.others_wait(shm, self.slot) {
            // A waiter's process may have died with it: its figures go, and only a live
            // one is woken.
            if self.shared.waiting_pids(shm, self.slot).any(|pid| !process_alive(pid)) {
                shm::locked(self.mcf, || self.shared.reap(process_alive));
            }
            if self.shared.others_wait(shm, self.slot) {
                wake::notify();
            }
        }
    }

    /// The request switched protocols (101): a drain no longer waits for it.
    pub fn flight_upgraded(&self, f: &mut Flight) {
        // A WebSocket lasts as long as its client: its backend has answered.
        self.end_turn(f);
        if !f.linked || f.kind == Kind::Upgraded {
            return;
        }
        self.flight_end(f);
        f.kind = Kind::Upgraded;
        self.link(f);
    }

    /// The backend's answer to a request in flight starts: a stream (`intermission_drain
    /// off`), which lasts as long as its client listens, gives its turn back now.
    pub fn answer_started(&self, f: &mut Flight) {
        if f.kind == Kind::Stream {
            self.end_turn(f);
        }
    }

    fn link(&self, f: &mut Flight) {
        let k = index(f.kind);
        // SAFETY: the flight lives until its pool cleanup unlinks it; the heads are
        // initialized and do not move.
        unsafe { ngx_queue_insert_before(self.flights[f.scope][k].get(), &mut f.link) };
        f.linked = true;
        self.add(f.scope, f.kind, 1);
    }

    fn unlink(&self, f: &mut Flight) {
        // SAFETY: a linked flight is in this worker's list.
        unsafe { ngx_queue_remove(&mut f.link) };
        f.linked = false;
        self.add(f.scope, f.kind, -1);
    }

    fn add(&self, i: usize, kind: Kind, d: i32) {
        let n = &self.counts[i][index(kind)];
        n.set(n.get().saturating_add_signed(d));
        self.shared.set_inflight(self.slot, self.shm(i), kind, n.get());
    }

    fn count(&self, i: usize, kind: Kind) -> u32 {
        self.counts[i][index(kind)].get()
    }

    /// The flights of one scope and kind, oldest first.
    fn flights(&self, i: usize, kind: Kind) -> impl Iterator<Item = &'static mut Flight> {
        let head: *mut ngx_queue_t = self.flights[i][index(kind)].get();
        // SAFETY: the head is initialized.
        let mut q = unsafe { (*head).next };
        core::iter::from_fn(move || {
            if q == head {
                return None;
            }
            // SAFETY: every link in the list is the first field of a live `Flight`; the
            // next one is taken before the caller may unlink this one.
            unsafe {
                let f = &mut *q.cast::<Flight>();
                q = (*q).next;
                Some(f)
            }
        })
    }

    /// In-flight requests a drain waits for, of a scope of the shared table, over all live
    /// workers.
    pub fn inflight_of(&self, shm: usize) -> u64 {
        self.shared.inflight(shm, process_alive)
    }

    /// A drain waiter of this worker starts (`true`) or stops waiting for a scope of the
    /// shared table.
    pub fn count_waiter(&self, shm: usize, starts: bool) {
        let c = &self.waiting[shm.min(TABLE_SCOPES - 1)];
        c.set(if starts { c.get() + 1 } else { c.get().saturating_sub(1) });
        self.shared.set_waiters(self.slot, shm, c.get());
    }

    /// The drain waiters' list head.
    pub fn waiters(&self) -> *mut ngx_queue_t {
        self.waiters.get()
    }

    /// Looks again in `BLOCKER_AGE_MS` at the latest (a new request reaches the age no
    /// sooner), unless a look is due already.
    fn arm_blockers(&self) {
        // SAFETY: the event lives in the leaked state.
        unsafe {
            if (*self.blockers.get()).timer_set() == 0 {
                ngx_add_timer(self.blockers.get(), BLOCKER_AGE_MS as _);
            }
        }
    }

    /// Publishes this worker's oldest waited-for requests in flight for over
    /// `BLOCKER_AGE_MS` to its slot; the list it had is replaced. Returns when to look
    /// again, in ms: when the next request reaches the age (or `BLOCKER_AGE_MS` if all
    /// have), and `None` when no waited-for request is in flight.
    pub fn publish_blockers(&self) -> Option<u64> {
        let now = now_unix_ms();
        let mut old: Vec<&Flight> = Vec::new();
        let mut next: Option<u64> = None;
        for i in 0..self.mcf.scope_count() {
            if self.count(i, Kind::Waited) == 0 {
                continue;
            }
            next.get_or_insert(BLOCKER_AGE_MS);
            let mut young = None;
            old.extend(
                self.flights(i, Kind::Waited)
                    .take_while(|f| {
                        let age = now.saturating_sub(f.since_ms);
                        if age < BLOCKER_AGE_MS {
                            young = Some(BLOCKER_AGE_MS - age);
                        }
                        age >= BLOCKER_AGE_MS
                    })
                    .take(BLOCKERS_PER_SLOT)
                    .map(|f| &*f),
            );
            if let (Some(y), Some(n)) = (young, next.as_mut()) {
                *n = (*n).min(y).max(1);
            }
        }
        if old.is_empty() && !self.published.get() {
            return next;
        }
        old.sort_by_key(|f| f.since_ms);
        old.truncate(BLOCKERS_PER_SLOT);
        let entries: Vec<BlockerEntry<'_>> = old
            .iter()
            .map(|f| {
                // SAFETY: a linked flight's request is alive, its strings in its pool.
                let r = unsafe { &*f.r };
                let uri = r.unparsed_uri.as_bytes();
                let end = uri.iter().position(|&b| b == b'?').unwrap_or(uri.len());
                BlockerEntry {
                    scope: self.shm(f.scope),
                    since_ms: f.since_ms,
                    method: r.method_name.as_bytes(),
                    path: &uri[..end],
                }
            })
            .collect();
        shm::locked(self.mcf, || self.shared.set_blockers(self.slot, &entries));
        self.published.set(!entries.is_empty());
        self.published_newest.set(old.last().map_or(0, |f| f.since_ms));
        next
    }

    /// The blockers of scopes of the shared table, this worker's own as they are now.
    pub fn blockers(&self, scopes: &[usize]) -> Vec<Vec<Blocker>> {
        self.publish_blockers();
        shm::locked(self.mcf, || {
            scopes.iter().map(|&i| self.shared.blockers(i, BLOCKERS_SHOWN, process_alive)).collect()
        })
    }

    /// Closes the upgraded connections and streams of `intermission_close_on_pause`
    /// locations in the scopes that were paused since this worker last looked, so that their
    /// clients connect again, into the hold, and reach the new backend after the resume.
    /// Bypassed ones stay open.
    pub fn close_on_pause(&self) {
        for i in 0..self.mcf.scope_count() {
            let since = self.scope(i).paused_since().unwrap_or(0);
            if since == 0 || self.closed_for[i].get() == since {
                continue;
            }
            self.closed_for[i].set(since);
            for kind in [Kind::Stream, Kind::Upgraded] {
                for f in self.flights(i, kind) {
                    if f.close_on_pause && !f.closed && f.outcome != Outcome::Bypass {
                        close(f);
                    }
                }
            }
        }
    }
}

/// Ends a long-lived connection the way a client that hangs up does: nginx's own handlers
/// (`proxy`'s upgraded and broken-connection checks) notice the shut socket and finalize the
/// request, closing the upstream connection too. An HTTP/2 stream shares its socket with
/// the connection's other streams and is left alone.
fn close(f: &mut Flight) {
    // SAFETY: a linked flight's request and connection are alive.
    let (r, c) = unsafe { (&*f.r, &*(*f.r).connection) };
    if r.http_version >= 2000 || c.fd < 0 {
        return;
    }
    f.closed = true;
    ngx_log_error!(
        NGX_LOG_INFO,
        c.log,
        "intermission: closing a{} connection, its scope is paused",
        if f.kind == Kind::Upgraded { "n upgraded" } else { " streaming" }
    );
    // SAFETY: the connection's own socket; shutting it down makes epoll report it hung up,
    // and the posted read event has nginx look at once.
    unsafe {
        libc::shutdown(c.fd, libc::SHUT_RDWR);
        let rev = c.read;
        (*rev).set_ready(1);
        (*rev).set_pending_eof(1);
        ngx_post_event(rev, ptr::addr_of_mut!(ngx_posted_events));
    }
}

/// When this worker's next waited-for request reaches `BLOCKER_AGE_MS`, and every
/// `BLOCKER_AGE_MS` while it has any in flight.
pub(super) unsafe extern "C" fn on_blockers(ev: *mut ngx_event_t) {
    let Some(w) = get() else { return };
    if let Some(ms) = w.publish_blockers() {
        ngx_add_timer(ev, ms as _);
    }
}
