//! Per-request state of a request that went through an `intermission` location.
//!
//! It lives in a cleanup entry of the request's pool rather than only in `r->ctx`: an
//! internal redirect wipes `ctx`, and the state must survive it (a request counted in flight
//! is counted once, and a held one is unlinked when its pool goes). The cleanup runs when
//! the request is freed, right after its log phase, however it ended (499 included): that
//! is where a request stops being in flight.
//!
//! Most requests are never held, and the access phase runs for every request: a request that
//! passes (or is rejected) costs one bare cleanup entry, its scope and outcome packed in the
//! entry's data word. Only a held request gets a [`ReqState`], with its queue link and timer.
//! That keeps the module's allocations from pushing a proxied request's pool into another
//! block: measured with callgrind, the full state on every request cost ~900 instructions
//! per request, most of them in malloc and free.

use core::ffi::c_void;
use core::mem::{offset_of, size_of, zeroed};
use core::ptr::{self, null_mut};

use ngx::ffi::{
    ngx_del_timer, ngx_event_t, ngx_http_request_t, ngx_palloc, ngx_pool_cleanup_add,
    ngx_pool_cleanup_t, ngx_queue_t,
};
use ngx::http::HttpModule;

use super::inflight::Flight;
use super::{self as worker, Worker};
use crate::ngx_util::now_unix_ms;
use crate::Module;

/// What became of the request; `$intermission_result` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Outcome {
    /// Waiting in a hold queue.
    Held,
    /// Not paused: passed on.
    Pass,
    /// Paused, but `intermission_bypass` let it through.
    Bypass,
    /// Held, then released by a resume.
    Released,
    /// Held until `intermission_max_time`, then passed on.
    Timeout,
    /// Answered 503 by the module (`max_held`, or `max_time` with `on_timeout reject`).
    Rejected,
    /// Its client left while it was held.
    Aborted,
    /// Held because of a failure (`intermission_on_failure hold`), then sent again.
    Retried,
    /// Held because of a failure until `intermission_max_time`, then answered the error.
    GaveUp,
}

impl Outcome {
    const ALL: [Outcome; 9] = [
        Outcome::Held,
        Outcome::Pass,
        Outcome::Bypass,
        Outcome::Released,
        Outcome::Timeout,
        Outcome::Rejected,
        Outcome::Aborted,
        Outcome::Retried,
        Outcome::GaveUp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            // A held request reaches the log phase only when it is finalized while held: its
            // client left, or the worker shut it down; the cleanup that records that runs
            // after the log phase.
            Outcome::Held | Outcome::Aborted => "aborted",
            Outcome::Pass => "pass",
            Outcome::Bypass => "bypass",
            Outcome::Released => "released",
            Outcome::Timeout => "timeout",
            Outcome::Rejected => "rejected",
            Outcome::Retried => "retried",
            Outcome::GaveUp => "gave_up",
        }
    }
}

/// Where a `check=` readiness check made from a held request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    None,
    Running,
    Done,
}

#[repr(C)]
pub struct ReqState {
    /// First field: a queue link is also a pointer to its state.
    pub link: ngx_queue_t,
    pub r: *mut ngx_http_request_t,
    /// Global arrival number of a held request (over all workers), for the debug log.
    pub arrival: u64,
    /// The scope's epoch when the request was held: released once the epoch moves on.
    pub epoch: u64,
    /// Unix ms at which the request was held.
    pub since_ms: u64,
    /// How long it was held, once it no longer is.
    pub held_ms: u64,
    /// Index of the scope in this configuration.
    pub scope: usize,
    pub outcome: Outcome,
    /// In flight once released (or timed out) and passed on.
    pub flight: Flight,
    /// Held because of a failure: the status nginx would have answered (502, 504); 0 for a
    /// request held by a pause.
    pub failed: u32,
    /// Sent as the scope's readiness check.
    pub check: bool,
    /// The readiness check of `check=` runs as a subrequest of this request.
    pub probe: Probe,
    /// Its answer's status, once it is `Probe::Done`.
    pub probe_status: u32,
    /// Upstream attempts it had made when it was last released.
    pub attempts: usize,
    /// `intermission_max_time` while held.
    pub timer: ngx_event_t,
}

impl ReqState {
    /// How long the request has been (or was) held, in ms.
    pub fn held_for(&self) -> u64 {
        if self.outcome == Outcome::Held {
            now_unix_ms().saturating_sub(self.since_ms)
        } else {
            self.held_ms
        }
    }

    /// The state that owns a `max_time` timer event.
    ///
    /// # Safety
    /// `ev` is the `timer` field of a live `ReqState`.
    pub unsafe fn from_timer(ev: *mut ngx_event_t) -> *mut ReqState {
        // SAFETY: the caller's promise.
        unsafe { ev.cast::<u8>().sub(offset_of!(ReqState, timer)).cast() }
    }
}

/// The cleanup handler, as stored in and compared against pool cleanup entries: one static
/// value, so that the comparison does not depend on where the compiler put the function.
static CLEANUP: unsafe extern "C" fn(*mut c_void) = cleanup;

/// A cleanup entry's data word (and the `ctx` slot's): a `*mut ReqState` for a held request,
/// a `*mut Flight` tagged with `FLIGHT` for a request passed on without being held, or, odd
/// so that it can be no pointer, `scope << 8 | outcome << 1 | 1` for the others (rejected).
/// Pool memory is aligned to 8 bytes, which leaves a pointer's low 3 bits for the tag.
#[derive(Clone, Copy)]
struct Word(usize);

const TAG: usize = 7;
const FLIGHT: usize = 2;

impl Word {
    fn packed(scope: usize, outcome: Outcome) -> Word {
        Word(scope << 8 | (outcome as usize) << 1 | 1)
    }

    fn passed(f: *mut Flight) -> Word {
        Word(f as usize | FLIGHT)
    }

    fn full(self) -> Option<&'static mut ReqState> {
        if self.0 == 0 || self.0 & TAG != 0 {
            return None;
        }
        // SAFETY: an untagged word is a `ReqState` in the request's pool (see `held`).
        unsafe { (self.0 as *mut ReqState).as_mut() }
    }

    /// The flight of a request passed on without being held.
    fn flight_only(self) -> Option<&'static mut Flight> {
        if self.0 & TAG != FLIGHT {
            return None;
        }
        // SAFETY: a word tagged `FLIGHT` is a `Flight` in the request's pool (see `record`).
        unsafe { ((self.0 & !TAG) as *mut Flight).as_mut() }
    }

    /// The request's flight, whether it was held or not.
    fn flight(self) -> Option<&'static mut Flight> {
        match self.full() {
            Some(st) => Some(&mut st.flight),
            None => self.flight_only(),
        }
    }

    fn outcome(self) -> Outcome {
        if let Some(st) = self.full() {
            return st.outcome;
        }
        if let Some(f) = self.flight_only() {
            return f.outcome;
        }
        Outcome::ALL.get((self.0 >> 1) & 0x7f).copied().unwrap_or(Outcome::Pass)
    }

    fn scope(self) -> usize {
        match (self.full(), self.flight_only()) {
            (Some(st), _) => st.scope,
            (None, Some(f)) => f.scope,
            (None, None) => self.0 >> 8,
        }
    }

    fn as_ptr(self) -> *mut c_void {
        self.0 as *mut c_void
    }
}

/// What the module knows of a request that went through an intermission location: its pool
/// cleanup entry, whose data word says the rest.
pub struct Found(*mut ngx_pool_cleanup_t);

impl Found {
    fn word(&self) -> Word {
        // SAFETY: a cleanup entry of the request's pool, valid until the pool is destroyed.
        Word(unsafe { (*self.0).data } as usize)
    }

    pub fn outcome(&self) -> Outcome {
        self.word().outcome()
    }

    /// The index of the scope (in this configuration) the request belongs to now.
    pub fn scope(&self) -> usize {
        self.word().scope()
    }

    /// The request's in-flight state, whether it was held or not.
    pub fn flight(&self) -> Option<&'static mut Flight> {
        self.word().flight()
    }

    /// The state of a request that was held.
    pub fn held(&self) -> Option<&'static mut ReqState> {
        self.word().full()
    }

    /// How long the request has been (or was) held, in ms; 0 if it never was.
    pub fn held_for(&self) -> u64 {
        self.held().map_or(0, |st| st.held_for())
    }

    /// The request leaves its scope for a location of another scope (`error_page`,
    /// `try_files`, a named location): it is no longer in flight in the old one. The entry
    /// is then recorded again for the new scope (`record`, `held`).
    pub fn leave(&self, w: &Worker) {
        let word = self.word();
        if let Some(f) = word.flight() {
            w.flight_end(f);
        }
        // Until it is recorded again, it counts nowhere.
        if let Some(f) = word.flight_only() {
            f.outcome = Outcome::Rejected;
        }
    }
}

fn ctx_slot(r: &ngx_http_request_t) -> *mut *mut c_void {
    // SAFETY: `ctx` has a slot for every HTTP module, this one's at its `ctx_index`.
    unsafe { r.ctx.add(Module::module().ctx_index) }
}

/// The request's state, if it went through an intermission location, also after an
/// internal redirect (which wiped `ctx`: the pool cleanups still have it).
pub fn find(r: &ngx_http_request_t) -> Option<Found> {
    let slot = ctx_slot(r);
    // SAFETY: the slot is null or a cleanup entry this module put there; the pool's cleanup
    // list is nginx's, each entry valid until the pool is destroyed.
    unsafe {
        if !(*slot).is_null() {
            return Some(Found((*slot).cast()));
        }
        let mut c = (*r.pool).cleanup;
        while let Some(cln) = c.as_mut() {
            if cln.handler.map(|h| h as usize) == Some(CLEANUP as usize) {
                *slot = ptr::from_mut(cln).cast();
                return Some(Found(cln));
            }
            c = cln.next;
        }
    }
    None
}

/// The request's cleanup entry: the one `found` names, or a new one of `size` data bytes.
fn entry(
    r: &mut ngx_http_request_t,
    found: Option<&Found>,
    size: usize,
) -> Option<&'static mut ngx_pool_cleanup_t> {
    // SAFETY: a cleanup entry of the request's pool, valid until the pool is destroyed.
    unsafe {
        let cln = match found {
            Some(f) => f.0,
            None => ngx_pool_cleanup_add(r.pool, size),
        };
        let cln = cln.as_mut()?;
        cln.handler = Some(CLEANUP);
        *ctx_slot(r) = ptr::from_mut(cln).cast();
        Some(cln)
    }
}

/// Records a request that is not held (rejected), or that is passed on (passed, bypassed),
/// then in flight: in a cleanup entry with a flight, or the one it had in another scope.
/// Returns the flight to start, if it is passed on; `None` if the pool has no memory.
pub fn record(
    r: &mut ngx_http_request_t,
    found: Option<&Found>,
    scope: usize,
    outcome: Outcome,
) -> Option<Option<&'static mut Flight>> {
    let rp = ptr::from_mut(r);
    // A request recorded again left its old scope first (`Found::leave`): its flight is
    // not linked, and may be written over.
    if let Some(st) = found.and_then(Found::held) {
        st.scope = scope;
        st.outcome = outcome;
        if !st.flight.is_linked() {
            st.flight = Flight::idle(rp, scope, outcome);
        }
        return Some((outcome != Outcome::Rejected).then_some(&mut st.flight));
    }
    if let Some(f) = found.and_then(|f| f.word().flight_only()) {
        if !f.is_linked() {
            *f = Flight::idle(rp, scope, outcome);
        }
        return Some((outcome != Outcome::Rejected).then_some(f));
    }
    if outcome == Outcome::Rejected {
        entry(r, found, 0)?.data = Word::packed(scope, outcome).as_ptr();
        return Some(None);
    }
    let (cln, f): (_, *mut Flight) = match found {
        Some(_) => {
            // SAFETY: pool memory, aligned to 8 bytes, freed with the pool after the cleanups.
            let f = unsafe { ngx_palloc(r.pool, size_of::<Flight>()) }.cast();
            (entry(r, found, 0)?, f)
        }
        None => {
            let cln = entry(r, None, size_of::<Flight>())?;
            let f = cln.data.cast();
            (cln, f)
        }
    };
    if f.is_null() {
        return None;
    }
    // SAFETY: `f` is this request's flight memory, not linked anywhere, valid until the
    // pool goes (after the cleanup that ends the flight).
    unsafe { f.write(Flight::idle(rp, scope, outcome)) };
    cln.data = Word::passed(f).as_ptr();
    // SAFETY: as above.
    Some(unsafe { f.as_mut() })
}

/// Creates the state of a request about to be held (or reuses the one a request held
/// before in another scope has); `None` if the pool has no memory.
pub fn held(
    r: &mut ngx_http_request_t,
    found: Option<&Found>,
    scope: usize,
) -> Option<&'static mut ReqState> {
    let rp = ptr::from_mut(r);
    // SAFETY: all-zero links and events are nginx's idle ones.
    let fresh = || ReqState {
        link: unsafe { zeroed() },
        r: rp,
        arrival: 0,
        epoch: 0,
        since_ms: 0,
        held_ms: 0,
        scope,
        outcome: Outcome::Held,
        flight: Flight::idle(rp, scope, Outcome::Held),
        failed: 0,
        check: false,
        probe: Probe::None,
        probe_status: 0,
        attempts: 0,
        timer: unsafe { zeroed() },
    };
    let st: *mut ReqState = match found {
        Some(f) => match f.held() {
            Some(st) => st,
            None => {
                // SAFETY: pool memory, aligned for any type (so even), freed with the pool
                // after the cleanups ran.
                let p = unsafe { ngx_palloc(r.pool, size_of::<ReqState>()) }.cast::<ReqState>();
                if p.is_null() {
                    return None;
                }
                entry(r, found, 0)?.data = p.cast();
                p
            }
        },
        None => entry(r, None, size_of::<ReqState>())?.data.cast(),
    };
    // SAFETY: `st` is this request's state memory, not linked in a queue (a request that is
    // held again was released first) and with no timer set.
    unsafe {
        st.write(fresh());
        st.as_mut()
    }
}

/// The pool cleanup: a request freed while held is unlinked and counted as aborted, never
/// forwarded; one that was in flight is in flight no more.
unsafe extern "C" fn cleanup(data: *mut c_void) {
    let word = Word(data as usize);
    let Some(st) = word.full() else {
        if let (Some(f), Some(w)) = (word.flight_only(), worker::get()) {
            w.flight_end(f);
        }
        return;
    };
    if st.timer.timer_set() != 0 {
        // SAFETY: the timer is in nginx's tree; it must leave before its memory does.
        unsafe { ngx_del_timer(&mut st.timer) };
    }
    let Some(w) = worker::get() else { return };
    if st.outcome == Outcome::Held {
        w.abort(st);
    }
    if st.probe == Probe::Running {
        // Its client left (or the worker stops) during the check: the lease goes.
        w.scope(st.scope).end_check();
    }
    w.flight_end(&mut st.flight);
    st.r = null_mut();
}
