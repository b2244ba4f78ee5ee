//! Per-worker state: a first-in-first-out queue of held requests per scope, in-flight
//! counts, drain waiters, and the events that release requests and resume scopes.
//!
//! A held request costs nothing while it waits: it sits in its queue with only its
//! `max_time` timer. The worker that answers a resume releases its own queue at once and
//! wakes the others through an eventfd (`wake`). One timer per worker, armed only while the
//! worker holds something or has drain waiters, looks at the shared state as a fallback (a
//! worker of another nginx binary during an upgrade shares no eventfd; a worker killed with
//! SIGKILL wakes nobody). That timer is not cancelable on purpose: a worker that shuts down
//! gracefully (reload) stays alive while it holds requests, and releases them on resume.
//!
//! A release goes out in batches, one per event-loop turn: the released requests' upstream
//! connections are opened by one batch and their requests sent by epoll before the next
//! batch starts, so the first released request reaches the backend within a millisecond or
//! two, however many are held.

use core::cell::UnsafeCell;
use core::mem::zeroed;
use core::ptr::addr_of_mut;

use intermission_core::shared::{Scope, Shared};
use intermission_core::time::RATE_PERIOD_S;
use ngx::core::Status;
use ngx::ffi::{
    ngx_add_timer, ngx_connection_t, ngx_core_conf_t, ngx_core_module, ngx_current_msec,
    ngx_cycle_t, ngx_del_timer, ngx_event_t, ngx_int_t, ngx_msec_t, ngx_pid, ngx_post_event,
    ngx_posted_events, ngx_posted_next_events, ngx_process_slot, ngx_queue_empty, ngx_queue_init,
    ngx_queue_insert_before, ngx_queue_remove, ngx_queue_t, NGX_LOG_NOTICE,
};
use ngx::http::HttpModuleMainConf;
use ngx::{ngx_log_debug, ngx_log_error};

use crate::conf::MainConf;
use crate::ngx_util::{now_unix_ms, process_alive};
use crate::request::{Outcome, ReqState};
use crate::{drain, state_file, wake, zone, Module};

/// How often a worker looks at the shared state while it holds or waits, when the eventfd
/// wakes it for every resume...
const TICK_MS: ngx_msec_t = 100;
/// ...and when it cannot (another event method than epoll).
const TICK_MS_UNWOKEN: ngx_msec_t = 5;
/// Requests released per event-loop turn.
const RELEASE_BATCH: u64 = 64;

struct Queue {
    head: ngx_queue_t,
    len: u32,
    /// `intermission_release_rate`: tokens of this worker's share of the rate; a release
    /// starts with a full bucket (the burst).
    tokens: f64,
    refilled: ngx_msec_t,
    pacing: bool,
    /// The epoch of the newest held requests, and how many are held from it (the tail).
    newest_epoch: u64,
    newest: u32,
}

/// A scope's release pace in this worker: its share of the instance's rate and burst.
struct Pace {
    per_ms: f64,
    burst: f64,
}

pub struct Worker {
    pub mcf: &'static MainConf,
    pub shared: &'static Shared,
    slot: usize,
    queues: Box<[Queue]>,
    inflight: Box<[u32]>,
    /// `intermission_max_held` where a location sets none: half the connections of all
    /// workers (a held request needs its client connection, and an upstream one on release).
    pub default_max_held: u64,
    /// Drain waiters of this worker (`drain::Waiter`s).
    pub waiters: ngx_queue_t,
    tick: ngx_event_t,
    tick_ms: ngx_msec_t,
    /// Posted to the next event-loop turn while a release has more batches to send.
    more: ngx_event_t,
    /// Armed while a paced release waits for its next token.
    pace: ngx_event_t,
    /// `worker_processes`: each worker paces its own queues at its share of the rate.
    workers: u64,
    /// Posted when an in-flight count drops to zero: looks at the drain waiters.
    check: ngx_event_t,
    /// The earliest auto-resume deadline of this configuration's scopes.
    auto: ngx_event_t,
    /// nginx's event code reads an event's `data` as a connection (its fd names the event in
    /// the debug log): the module's own events get a connection that is not one.
    no_conn: ngx_connection_t,
    /// The version of the state file this worker last looked at.
    state_seen: Option<state_file::Version>,
    /// With a state file: follows it every `TICK_MS`, held requests or not, so that a pause
    /// answered by another nginx generation (binary upgrade) reaches idle workers too.
    follow: ngx_event_t,
}

struct Cell(UnsafeCell<Option<Box<Worker>>>);

// SAFETY: an nginx worker runs its event loop, and with it every handler of this module, on
// one thread; nothing here is touched from nginx's thread pools.
unsafe impl Sync for Cell {}

static WORKER: Cell = Cell(UnsafeCell::new(None));

/// This worker's state; `None` in a process where the module is not in use.
///
/// Callers are nginx handlers on the event-loop thread, and none of them keeps the reference
/// across a call back into nginx that could re-enter this module.
pub fn get() -> Option<&'static mut Worker> {
    // SAFETY: see above: one thread, no overlapping borrows.
    unsafe { (*WORKER.0.get()).as_deref_mut() }
}

/// In the master, for every configuration: what the workers must inherit.
pub unsafe extern "C" fn init_module(_cycle: *mut ngx_cycle_t) -> ngx_int_t {
    wake::create();
    Status::NGX_OK.into()
}

pub unsafe extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: nginx passes the worker's cycle.
    let cycle = unsafe { &*cycle };
    let Some(mcf) = Module::main_conf(cycle) else {
        return Status::NGX_OK.into();
    };
    let Some(shared) = mcf.shared() else {
        return Status::NGX_OK.into();
    };
    // SAFETY: set by nginx before the worker's modules are initialized.
    let (slot, pid) = unsafe { (ngx_process_slot as usize, i64::from(ngx_pid)) };
    shared.claim_slot(slot, pid);

    // SAFETY: the core module's configuration exists in every cycle.
    let workers = unsafe {
        let ccf = (*cycle.conf_ctx.add(ngx_core_module.index)).cast::<ngx_core_conf_t>();
        ccf.as_ref().map_or(1, |c| c.worker_processes.max(1) as u64)
    };
    let n = mcf.scope_count();
    // SAFETY: queue heads are initialized in place below, once they no longer move.
    let queues = (0..n)
        .map(|_| Queue {
            head: unsafe { zeroed() },
            len: 0,
            tokens: 0.0,
            refilled: 0,
            pacing: false,
            newest_epoch: 0,
            newest: 0,
        })
        .collect();
    let tick_ms = if wake::watch(cycle, Some(on_tick)) { TICK_MS } else { TICK_MS_UNWOKEN };
    // SAFETY: all-zero events, queue heads and connections are nginx's idle ones; what they
    // need is set below; `fd` -1 marks the connection as no socket.
    let mut w = Box::new(unsafe {
        Worker {
            mcf,
            shared,
            slot,
            queues,
            inflight: vec![0; n].into_boxed_slice(),
            default_max_held: (cycle.connection_n as u64 / 2).max(1) * workers,
            waiters: zeroed(),
            tick: zeroed(),
            tick_ms,
            more: zeroed(),
            pace: zeroed(),
            workers,
            check: zeroed(),
            auto: zeroed(),
            no_conn: zeroed(),
            state_seen: state_file::version(mcf),
            follow: zeroed(),
        }
    });
    w.no_conn.fd = -1;
    // SAFETY: the heads live in the boxed worker state and never move again.
    unsafe {
        ngx_queue_init(&mut w.waiters);
        for q in w.queues.iter_mut() {
            ngx_queue_init(&mut q.head);
        }
    }
    let no_conn = addr_of_mut!(w.no_conn).cast();
    for (ev, handler) in [
        (&mut w.tick, on_tick as unsafe extern "C" fn(*mut ngx_event_t)),
        (&mut w.more, on_more),
        (&mut w.pace, on_more),
        (&mut w.check, on_check),
        (&mut w.auto, on_auto),
        (&mut w.follow, on_follow),
    ] {
        ev.handler = Some(handler);
        ev.log = cycle.log;
        ev.data = no_conn;
    }
    // The auto-resume timer must not keep a gracefully exiting worker alive: the workers of
    // the new configuration have their own.
    w.auto.set_cancelable(1);
    w.schedule_auto_resume();
    if !mcf.state_file.is_empty() {
        // Cancelable: it must not keep a gracefully exiting worker alive.
        w.follow.set_cancelable(1);
        // SAFETY: the event lives in the boxed worker state for the process's life.
        unsafe { ngx_add_timer(&mut w.follow, TICK_MS) };
    }
    // SAFETY: see `get`.
    unsafe { *WORKER.0.get() = Some(w) };
    Status::NGX_OK.into()
}

pub unsafe extern "C" fn exit_process(_cycle: *mut ngx_cycle_t) {
    // SAFETY: see `get`; nothing of this module runs after `exit_process`.
    if let Some(w) = unsafe { (*WORKER.0.get()).take() } {
        // SAFETY: as in `init_process`.
        w.shared.leave_slot(w.slot, i64::from(unsafe { ngx_pid }));
    }
}

impl Worker {
    /// Index of this configuration's scope `i` in the shared state.
    pub fn shm(&self, i: usize) -> usize {
        usize::from(self.mcf.shm_index[i])
    }

    /// The shared state of this configuration's scope `i`.
    pub fn scope(&self, i: usize) -> &'static Scope {
        self.shared.scope(self.shm(i))
    }

    /// Queues a request that must wait; it is released in arrival order.
    pub fn hold(&mut self, st: &mut ReqState) {
        let i = st.scope;
        // SAFETY: the state lives until its pool cleanup unlinks it; the queue heads are
        // initialized and do not move.
        unsafe { ngx_queue_insert_before(&mut self.queues[i].head, &mut st.link) };
        let q = &mut self.queues[i];
        q.len += 1;
        if q.newest > 0 && q.newest_epoch == st.epoch {
            q.newest += 1;
        } else {
            (q.newest_epoch, q.newest) = (st.epoch, 1);
        }
        self.scope(i).count_held();
        self.publish_held(i);
        self.arm();
    }

    /// Takes a held request out of its queue; it is no longer counted as held.
    fn unhold(&mut self, st: &mut ReqState, outcome: Outcome) {
        // SAFETY: a state whose outcome is `Held` is linked in this worker's queue.
        unsafe { ngx_queue_remove(&mut st.link) };
        if st.timer.timer_set() != 0 {
            // SAFETY: the timer is in nginx's tree.
            unsafe { ngx_del_timer(&mut st.timer) };
        }
        st.outcome = outcome;
        st.held_ms = now_unix_ms().saturating_sub(st.since_ms);
        let i = st.scope;
        let q = &mut self.queues[i];
        q.len -= 1;
        if st.epoch == q.newest_epoch {
            q.newest = q.newest.saturating_sub(1);
        }
        self.scope(i).observe_hold(st.held_ms);
        if matches!(outcome, Outcome::Released | Outcome::Timeout) {
            st.inflight = true;
            self.inflight_start(i);
        }
    }

    /// A request whose client left while held: counted as aborted, never forwarded.
    pub fn abort(&mut self, st: &mut ReqState) {
        self.unhold(st, Outcome::Aborted);
        self.scope(st.scope).count_aborted();
        self.publish_held(st.scope);
    }

    /// A request held for `intermission_max_time`: passed on (`Timeout`) or answered 503
    /// (`Rejected`); `hold::resume` does either when its write event runs.
    pub fn time_out(&mut self, st: &mut ReqState, outcome: Outcome) {
        self.unhold(st, outcome);
        let scope = self.scope(st.scope);
        scope.count_timed_out();
        if outcome == Outcome::Rejected {
            scope.count_rejected();
        }
        self.publish_held(st.scope);
        // SAFETY: a held request's connection is alive; its write event runs after this one.
        unsafe { ngx_post_event((*(*st.r).connection).write, addr_of_mut!(ngx_posted_events)) };
    }

    /// A request of scope `i` passed on: it is in flight until its pool cleanup.
    pub fn inflight_start(&mut self, i: usize) {
        self.inflight[i] += 1;
        self.shared.set_inflight(self.slot, self.shm(i), self.inflight[i]);
    }

    /// An in-flight request of scope `i` finished. The last one wakes the drain waiters.
    pub fn inflight_end(&mut self, i: usize) {
        self.inflight[i] = self.inflight[i].saturating_sub(1);
        self.shared.set_inflight(self.slot, self.shm(i), self.inflight[i]);
        if self.inflight[i] == 0 && self.scope(i).has_waiters() {
            wake::notify();
            // Not from inside another request's cleanup: after the current handler.
            // SAFETY: the event lives in the boxed worker state for the process's life.
            unsafe { ngx_post_event(&mut self.check, addr_of_mut!(ngx_posted_events)) };
        }
    }

    /// In-flight requests of scope `i` over all live workers.
    pub fn inflight_total(&self, i: usize) -> u64 {
        self.shared.inflight(self.shm(i), process_alive)
    }

    /// Starts releasing, in arrival order, the requests of scope `i` whose pause has ended:
    /// the first batch now, the rest one batch per event-loop turn. Returns how many this
    /// worker holds for the scope.
    pub fn release_ready(&mut self, i: usize) -> u32 {
        let queued = self.queues[i].len;
        self.release_batch(i, RELEASE_BATCH);
        self.continue_release();
        queued
    }

    /// Releases up to `max` requests of scope `i` whose pause has ended: their write events
    /// are posted, and nginx runs their phases on from where they stopped.
    fn release_batch(&mut self, i: usize, max: u64) -> u64 {
        let epoch = self.scope(i).epoch();
        let paced = self.pace_of(i);
        let max = match &paced {
            Some(p) => max.min(self.take_tokens(i, p)),
            None => max,
        };
        let mut n = 0u64;
        let head: *mut ngx_queue_t = &mut self.queues[i].head;
        // SAFETY: every link in the queue is the first field of a live `ReqState` (its pool
        // cleanup unlinks it before the request is freed); a posted write event runs after
        // the current handler returns.
        unsafe {
            while n < max && !ngx_queue_empty(head) {
                let st = &mut *(*head).next.cast::<ReqState>();
                if st.epoch >= epoch {
                    break;
                }
                self.unhold(st, Outcome::Released);
                let c = (*st.r).connection;
                ngx_log_debug!((*c).log, "intermission: releasing request #{}", st.arrival);
                ngx_post_event((*c).write, addr_of_mut!(ngx_posted_events));
                n += 1;
            }
        }
        if n > 0 {
            self.scope(i).count_released(n);
            self.publish_held(i);
        }
        let q = &mut self.queues[i];
        if paced.is_some() {
            q.tokens -= n as f64;
        }
        if !self.has_ready(i) {
            // The next release starts with a full burst again.
            self.queues[i].pacing = false;
        }
        n
    }

    /// The pace of scope `i`'s release, from the location of its first held request; `None`
    /// if it is not paced.
    fn pace_of(&self, i: usize) -> Option<Pace> {
        let q = &self.queues[i];
        if q.len == 0 {
            return None;
        }
        // SAFETY: a non-empty queue's first link is a live `ReqState` of a live request.
        let r = unsafe { &*(*q.head.next.cast::<ReqState>()).r };
        let lcf = crate::conf::loc_conf(r)?;
        (lcf.release_rate > 0).then(|| Pace {
            per_ms: lcf.release_rate as f64 / (RATE_PERIOD_S * 1000) as f64 / self.workers as f64,
            burst: (lcf.release_burst as f64 / self.workers as f64).max(1.0),
        })
    }

    /// Refills scope `i`'s bucket and says how many requests it allows now.
    fn take_tokens(&mut self, i: usize, p: &Pace) -> u64 {
        // SAFETY: nginx's cached monotonic clock, read on the event-loop thread.
        let now = unsafe { ngx_current_msec };
        let q = &mut self.queues[i];
        if !q.pacing {
            q.pacing = true;
            q.tokens = p.burst;
        } else {
            let elapsed = now.wrapping_sub(q.refilled) as f64;
            q.tokens = (q.tokens + elapsed * p.per_ms).min(p.burst);
        }
        q.refilled = now;
        q.tokens.max(0.0) as u64
    }

    /// Milliseconds until scope `i` may release its next request: 0 if now.
    fn wait_ms(&mut self, i: usize) -> u64 {
        let Some(p) = self.pace_of(i) else { return 0 };
        if self.take_tokens(i, &p) >= 1 {
            return 0;
        }
        ((1.0 - self.queues[i].tokens) / p.per_ms).ceil().max(1.0) as u64
    }

    /// Whether scope `i` has a request whose pause has ended.
    fn has_ready(&self, i: usize) -> bool {
        let q = &self.queues[i];
        // SAFETY: a non-empty queue's first link is a live `ReqState`.
        q.len > 0 && unsafe { (*q.head.next.cast::<ReqState>()).epoch } < self.scope(i).epoch()
    }

    /// Schedules the next batch: for the next event-loop turn if a ready scope may release
    /// now, or for when the first paced one may.
    fn continue_release(&mut self) {
        let ready: Vec<usize> = (0..self.queues.len()).filter(|&i| self.has_ready(i)).collect();
        let wait = ready.into_iter().map(|i| self.wait_ms(i)).min();
        // SAFETY: the events live in the boxed worker state for the process's life; the
        // next-turn queue is moved to the posted queue after the next epoll wait.
        unsafe {
            match wait {
                None => {}
                Some(0) if self.more.posted() == 0 => {
                    ngx_post_event(&mut self.more, addr_of_mut!(ngx_posted_next_events));
                }
                Some(0) => {}
                Some(ms) if self.pace.timer_set() == 0 => {
                    ngx_add_timer(&mut self.pace, ms.min(60_000) as ngx_msec_t);
                }
                Some(_) => {}
            }
        }
    }

    /// Writes this worker's held gauges for scope `i` where every worker can read them.
    fn publish_held(&self, i: usize) {
        let q = &self.queues[i];
        let oldest = if q.len == 0 {
            0
        } else {
            // SAFETY: a non-empty queue's first link is a live `ReqState`.
            unsafe { (*q.head.next.cast::<ReqState>()).since_ms.max(1) }
        };
        self.shared.set_held(self.slot, self.shm(i), q.len, oldest);
        self.shared.set_newest(self.slot, self.shm(i), q.newest_epoch, q.newest);
    }

    /// Arms the tick while anything is held or waited for.
    pub fn arm(&mut self) {
        // SAFETY: the waiters' head is initialized.
        let waiting = unsafe { !ngx_queue_empty(&self.waiters) };
        if self.tick.timer_set() == 0 && (waiting || self.queues.iter().any(|q| q.len > 0)) {
            // SAFETY: the tick event lives in the boxed worker state for the process's life.
            unsafe { ngx_add_timer(&mut self.tick, self.tick_ms) };
        }
    }

    /// Arms the auto-resume timer for the earliest deadline of this configuration's scopes.
    pub fn schedule_auto_resume(&mut self) {
        let next = (0..self.mcf.scope_count()).filter_map(|i| self.scope(i).auto_resume_at()).min();
        // SAFETY: the event lives in the boxed worker state for the process's life.
        unsafe {
            if self.auto.timer_set() != 0 {
                ngx_del_timer(&mut self.auto);
            }
            if let Some(at) = next {
                let ms = at.saturating_sub(now_unix_ms());
                ngx_add_timer(&mut self.auto, ms.min(ngx_msec_t::MAX as u64) as ngx_msec_t);
            }
        }
    }
}

/// The tick, and the eventfd's read event: release what a resume has freed, answer the
/// drain waiters whose scopes have drained, follow auto-resume deadlines set elsewhere.
unsafe extern "C" fn on_tick(ev: *mut ngx_event_t) {
    let Some(w) = get() else { return };
    // SAFETY: nginx passes our own event (the tick or the eventfd's), whose log is set.
    follow_state_file(w, unsafe { (*ev).log });
    release_some(w);
    drain::check_all(w);
    w.schedule_auto_resume();
    w.arm();
}

/// Applies a pause or resume that another nginx generation (binary upgrade) wrote to the
/// state file: a resume there releases what this generation holds.
fn follow_state_file(w: &mut Worker, log: *mut ngx::ffi::ngx_log_t) {
    let mut seen = w.state_seen;
    let changes = state_file::changes(w.mcf, w.shared, &mut seen);
    w.state_seen = seen;
    for i in changes.resume {
        let scope = w.scope(i);
        if zone::locked(w.mcf, || scope.resume()) {
            ngx_log_error!(
                NGX_LOG_NOTICE,
                log,
                "intermission: scope \"{}\" resumed by the state file (another nginx generation)",
                w.mcf.scope_name(i)
            );
            w.release_ready(i);
            wake::notify();
        }
    }
    for (i, since, auto) in changes.pause {
        let scope = w.scope(i);
        if zone::locked(w.mcf, || scope.pause(since, auto)) {
            ngx_log_error!(
                NGX_LOG_NOTICE,
                log,
                "intermission: scope \"{}\" paused by the state file (another nginx generation)",
                w.mcf.scope_name(i)
            );
            wake::notify();
        }
    }
}

/// With a state file: follows it, and looks again in `TICK_MS`.
unsafe extern "C" fn on_follow(ev: *mut ngx_event_t) {
    let Some(w) = get() else { return };
    // SAFETY: nginx passes our own event, whose log is set.
    follow_state_file(w, unsafe { (*ev).log });
    // SAFETY: as above; the event lives in the boxed worker state.
    unsafe { ngx_add_timer(&mut w.follow, TICK_MS) };
}

/// One batch of a release, shared between the ready scopes in order.
unsafe extern "C" fn on_more(_ev: *mut ngx_event_t) {
    if let Some(w) = get() {
        release_some(w);
    }
}

fn release_some(w: &mut Worker) {
    let mut budget = RELEASE_BATCH;
    for i in 0..w.queues.len() {
        if budget == 0 {
            break;
        }
        if w.queues[i].len > 0 {
            budget -= w.release_batch(i, budget);
        }
    }
    w.continue_release();
}

unsafe extern "C" fn on_check(_ev: *mut ngx_event_t) {
    if let Some(w) = get() {
        drain::check_all(w);
    }
}

/// A scope's auto-resume deadline passed: the first worker to get here resumes it.
unsafe extern "C" fn on_auto(ev: *mut ngx_event_t) {
    let Some(w) = get() else { return };
    let now = now_unix_ms();
    for i in 0..w.mcf.scope_count() {
        let scope = w.scope(i);
        if zone::locked(w.mcf, || scope.resume_if_due(now)) {
            // SAFETY: nginx passes our own event, whose log is the cycle's.
            ngx_log_error!(
                NGX_LOG_NOTICE,
                unsafe { (*ev).log },
                "intermission: scope \"{}\" auto-resumed, releasing {} held",
                w.mcf.scope_name(i),
                w.shared.held_now(w.shm(i))
            );
            w.release_ready(i);
            wake::notify();
            // SAFETY: as above.
            zone::locked(w.mcf, || state_file::save(w.mcf, w.shared, unsafe { (*ev).log }));
        }
    }
    w.schedule_auto_resume();
}
