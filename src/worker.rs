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
//! two, however many are held. A paced release (`intermission_release_rate`) takes its
//! tokens from one bucket per scope in the shared zone, and gives them to the oldest held
//! requests over all workers first.
//!
//! The state is only ever reached through shared references (`get`), its mutable parts in
//! cells: nginx re-enters the module from inside the calls the module makes (finalizing a
//! request runs its log phase and pool cleanups, which count it out of flight), and two live
//! `&mut` to one value would be undefined behaviour. It is made once per worker process and
//! never freed: the events it owns may sit in nginx's timer tree until the process exits.

use core::cell::{Cell, UnsafeCell};
use core::mem::zeroed;
use core::ptr::{self, null_mut};
use core::sync::atomic::{AtomicPtr, Ordering::Relaxed};

use intermission_core::shared::{Scope, Shared, TABLE_SCOPES};
use intermission_core::time::RATE_PERIOD_S;
use ngx::core::Status;
use ngx::ffi::{
    ngx_add_timer, ngx_connection_t, ngx_core_conf_t, ngx_core_module, ngx_current_msec,
    ngx_cycle_t, ngx_del_timer, ngx_event_t, ngx_int_t, ngx_log_t, ngx_msec_t, ngx_pid,
    ngx_post_event, ngx_posted_events, ngx_posted_next_events, ngx_process, ngx_process_slot,
    ngx_queue_empty, ngx_queue_init, ngx_queue_insert_before, ngx_queue_remove, ngx_queue_t,
    NGX_LOG_ERR, NGX_LOG_NOTICE, NGX_PROCESS_SINGLE, NGX_PROCESS_WORKER,
};
use ngx::http::HttpModuleMainConf;
use ngx::{ngx_log_debug, ngx_log_error};

use crate::conf::{self, MainConf};
use crate::ngx_util::{now_unix_ms, process_alive};
use crate::request::{Outcome, ReqState};
use crate::{drain, persist, wake, zone, Module};

/// How often a worker looks at the shared state while it holds or waits, when the eventfd
/// wakes it for every resume...
const TICK_MS: ngx_msec_t = 100;
/// ...and when it cannot (another event method than epoll).
const TICK_MS_UNWOKEN: ngx_msec_t = 5;
/// Requests released per event-loop turn.
const RELEASE_BATCH: u64 = 64;

struct Queue {
    head: UnsafeCell<ngx_queue_t>,
    len: Cell<u32>,
    /// The epoch of the newest held requests, and how many are held from it (the tail).
    newest_epoch: Cell<u64>,
    newest: Cell<u32>,
    /// A paced release: milliseconds until this queue may release again (0: now).
    pace_wait: Cell<u64>,
}

/// A scope's release pace: the instance's rate and burst.
struct Pace {
    per_ms: f64,
    burst: f64,
}

pub struct Worker {
    pub mcf: &'static MainConf,
    pub shared: &'static Shared,
    slot: usize,
    queues: Box<[Queue]>,
    /// In-flight requests of each configured scope.
    inflight: Box<[Cell<u32>]>,
    /// Drain waiters of this worker for each scope of the shared table.
    waiting: Box<[Cell<u32>]>,
    /// `intermission_max_held` where a location sets none: half the connections of all
    /// workers (a held request needs its client connection, and an upstream one on release).
    pub default_max_held: u64,
    /// Drain waiters of this worker (`drain::Waiter`s).
    waiters: UnsafeCell<ngx_queue_t>,
    tick: UnsafeCell<ngx_event_t>,
    tick_ms: ngx_msec_t,
    /// Posted to the next event-loop turn while a release has more batches to send.
    more: UnsafeCell<ngx_event_t>,
    /// Armed while a paced release waits for its next token.
    pace: UnsafeCell<ngx_event_t>,
    /// Posted when an in-flight count drops to zero: looks at the drain waiters.
    check: UnsafeCell<ngx_event_t>,
    /// The earliest auto-resume deadline of the scopes.
    auto: UnsafeCell<ngx_event_t>,
    /// nginx's event code reads an event's `data` as a connection (its fd names the event in
    /// the debug log): the module's own events get a connection that is not one.
    no_conn: UnsafeCell<ngx_connection_t>,
    /// With a state file: follows it every `TICK_MS`, held requests or not, so that a pause
    /// answered by another nginx generation (binary upgrade) reaches idle workers too.
    follow: UnsafeCell<ngx_event_t>,
}

/// This worker's state, made once in `init_process` and never freed.
static WORKER: AtomicPtr<Worker> = AtomicPtr::new(null_mut());

/// This worker's state; `None` in a process where the module is not in use (the master, the
/// cache manager and loader, a configuration without the module).
pub fn get() -> Option<&'static Worker> {
    // SAFETY: null, or the state leaked in `init_process` for the process's life; every
    // handler of this module runs on the worker's one event-loop thread.
    unsafe { WORKER.load(Relaxed).as_ref() }
}

/// In the master, for every configuration: what the workers must inherit.
pub unsafe extern "C" fn init_module(_cycle: *mut ngx_cycle_t) -> ngx_int_t {
    wake::create();
    Status::NGX_OK.into()
}

pub unsafe extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // The cache manager and loader run every module's `init_process` too, and exit without
    // `exit_process`: only workers hold, count and follow (as nginx-acme filters on it).
    // SAFETY: set by nginx before the process's modules are initialized.
    let process = unsafe { ngx_process } as u32;
    if process != NGX_PROCESS_WORKER && process != NGX_PROCESS_SINGLE {
        return Status::NGX_OK.into();
    }
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
    let n = mcf.scope_count();
    let uses: Vec<usize> = (0..n).map(|i| usize::from(mcf.shm_index[i])).collect();
    zone::locked(mcf, || {
        shared.reap(process_alive);
        shared.claim_slot(slot, pid, &uses);
    });

    // SAFETY: the core module's configuration exists in every cycle.
    let workers = unsafe {
        let ccf = (*cycle.conf_ctx.add(ngx_core_module.index)).cast::<ngx_core_conf_t>();
        ccf.as_ref().map_or(1, |c| c.worker_processes.max(1) as u64)
    };
    let tick_ms = if wake::watch(cycle, Some(on_tick)) { TICK_MS } else { TICK_MS_UNWOKEN };
    // SAFETY: all-zero events, queue heads and connections are nginx's idle ones; what they
    // need is set below, once the state is at its final address.
    let w: &'static Worker = Box::leak(Box::new(unsafe {
        Worker {
            mcf,
            shared,
            slot,
            queues: (0..n)
                .map(|_| Queue {
                    head: zeroed(),
                    len: Cell::new(0),
                    newest_epoch: Cell::new(0),
                    newest: Cell::new(0),
                    pace_wait: Cell::new(0),
                })
                .collect(),
            inflight: (0..n).map(|_| Cell::new(0)).collect(),
            waiting: (0..TABLE_SCOPES).map(|_| Cell::new(0)).collect(),
            default_max_held: (cycle.connection_n as u64 / 2).max(1) * workers,
            waiters: zeroed(),
            tick: zeroed(),
            tick_ms,
            more: zeroed(),
            pace: zeroed(),
            check: zeroed(),
            auto: zeroed(),
            no_conn: zeroed(),
            follow: zeroed(),
        }
    }));
    // SAFETY: the state is leaked, so its heads, events and connection never move; `fd` -1
    // marks the connection as no socket.
    unsafe {
        (*w.no_conn.get()).fd = -1;
        ngx_queue_init(w.waiters.get());
        for q in w.queues.iter() {
            ngx_queue_init(q.head.get());
        }
        let no_conn = w.no_conn.get().cast();
        for (ev, handler) in [
            (&w.tick, on_tick as unsafe extern "C" fn(*mut ngx_event_t)),
            (&w.more, on_more),
            (&w.pace, on_more),
            (&w.check, on_check),
            (&w.auto, on_auto),
            (&w.follow, on_follow),
        ] {
            let ev = &mut *ev.get();
            ev.handler = Some(handler);
            ev.log = cycle.log;
            ev.data = no_conn;
        }
        // Neither may keep a gracefully exiting worker alive: the workers of the new
        // configuration have their own.
        (*w.auto.get()).set_cancelable(1);
        (*w.follow.get()).set_cancelable(1);
    }
    WORKER.store(ptr::from_ref(w).cast_mut(), Relaxed);
    w.schedule_auto_resume();
    if !mcf.state_file.is_empty() {
        // SAFETY: the event lives in the leaked state.
        unsafe { ngx_add_timer(w.follow.get(), TICK_MS) };
    }
    Status::NGX_OK.into()
}

pub unsafe extern "C" fn exit_process(_cycle: *mut ngx_cycle_t) {
    if let Some(w) = get() {
        // SAFETY: as in `init_process`.
        let pid = i64::from(unsafe { ngx_pid });
        zone::locked(w.mcf, || w.shared.leave_slot(w.slot, pid));
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

    fn first(&self, i: usize) -> Option<&'static mut ReqState> {
        let q = &self.queues[i];
        if q.len.get() == 0 {
            return None;
        }
        // SAFETY: a non-empty queue's first link is the first field of a live `ReqState`
        // (its pool cleanup unlinks it before the request is freed).
        unsafe { (*q.head.get()).next.cast::<ReqState>().as_mut() }
    }

    /// Queues a request that must wait; it is released in arrival order.
    pub fn hold(&self, st: &mut ReqState) {
        let i = st.scope;
        let q = &self.queues[i];
        // SAFETY: the state lives until its pool cleanup unlinks it; the queue heads are
        // initialized and do not move.
        unsafe { ngx_queue_insert_before(q.head.get(), &mut st.link) };
        q.len.set(q.len.get() + 1);
        if q.newest.get() > 0 && q.newest_epoch.get() == st.epoch {
            q.newest.set(q.newest.get() + 1);
        } else {
            q.newest_epoch.set(st.epoch);
            q.newest.set(1);
        }
        self.scope(i).count_held();
        self.publish_held(i);
        self.arm();
    }

    /// Takes a held request out of its queue; it is no longer counted as held.
    fn unhold(&self, st: &mut ReqState, outcome: Outcome) {
        // SAFETY: a state whose outcome is `Held` is linked in this worker's queue.
        unsafe { ngx_queue_remove(&mut st.link) };
        if st.timer.timer_set() != 0 {
            // SAFETY: the timer is in nginx's tree.
            unsafe { ngx_del_timer(&mut st.timer) };
        }
        st.outcome = outcome;
        st.held_ms = now_unix_ms().saturating_sub(st.since_ms);
        let i = st.scope;
        let q = &self.queues[i];
        q.len.set(q.len.get() - 1);
        if st.epoch == q.newest_epoch.get() {
            q.newest.set(q.newest.get().saturating_sub(1));
        }
        self.scope(i).observe_hold(st.held_ms);
        if matches!(outcome, Outcome::Released | Outcome::Timeout) {
            st.inflight = true;
            self.inflight_start(i);
        }
    }

    /// A request whose client left while held: counted as aborted, never forwarded.
    pub fn abort(&self, st: &mut ReqState) {
        self.unhold(st, Outcome::Aborted);
        self.scope(st.scope).count_aborted();
        self.publish_held(st.scope);
    }

    /// A request held for `intermission_max_time`: passed on (`Timeout`) or answered 503
    /// (`Rejected`); `hold::resume` does either when its write event runs.
    pub fn time_out(&self, st: &mut ReqState, outcome: Outcome) {
        self.unhold(st, outcome);
        let scope = self.scope(st.scope);
        scope.count_timed_out();
        if outcome == Outcome::Rejected {
            scope.count_rejected();
        }
        self.publish_held(st.scope);
        // SAFETY: a held request's connection is alive; its write event runs after this one.
        unsafe {
            ngx_post_event((*(*st.r).connection).write, ptr::addr_of_mut!(ngx_posted_events))
        };
    }

    /// A request of scope `i` passed on: it is in flight until its pool cleanup.
    pub fn inflight_start(&self, i: usize) {
        let n = &self.inflight[i];
        n.set(n.get() + 1);
        self.shared.set_inflight(self.slot, self.shm(i), n.get());
    }

    /// An in-flight request of scope `i` finished. The last one wakes the drain waiters.
    pub fn inflight_end(&self, i: usize) {
        let n = &self.inflight[i];
        n.set(n.get().saturating_sub(1));
        let shm = self.shm(i);
        self.shared.set_inflight(self.slot, shm, n.get());
        if n.get() != 0 {
            return;
        }
        if self.waiting[shm].get() > 0 {
            // Not from inside another request's cleanup: after the current handler.
            // SAFETY: the event lives in the leaked state.
            unsafe { ngx_post_event(self.check.get(), ptr::addr_of_mut!(ngx_posted_events)) };
        }
        if self.shared.others_wait(shm, self.slot) {
            // A waiter's process may have died with it: its figures go, and only a live
            // one is woken.
            if self.shared.waiting_pids(shm, self.slot).any(|pid| !process_alive(pid)) {
                zone::locked(self.mcf, || self.shared.reap(process_alive));
            }
            if self.shared.others_wait(shm, self.slot) {
                wake::notify();
            }
        }
    }

    /// In-flight requests of a scope of the shared table, over all live workers.
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

    /// Held requests of scope `i` over the workers, as `max_held` counts them: a figure at
    /// the limit is checked once more after the slots of dead processes are cleared.
    pub fn held_for_limit(&self, i: usize, max: u64) -> u64 {
        let held = self.shared.held_now(self.shm(i));
        if held < max {
            return held;
        }
        zone::locked(self.mcf, || self.shared.reap(process_alive));
        self.shared.held_now(self.shm(i))
    }

    /// Starts releasing, in arrival order, the requests of scope `i` whose pause has ended:
    /// the first batch now, the rest one batch per event-loop turn. Returns how many this
    /// worker holds for the scope.
    pub fn release_ready(&self, i: usize) -> u32 {
        let queued = self.queues[i].len.get();
        self.release_batch(i, RELEASE_BATCH);
        self.continue_release();
        queued
    }

    /// Releases up to `max` requests of scope `i` whose pause has ended: their write events
    /// are posted, and nginx runs their phases on from where they stopped.
    fn release_batch(&self, i: usize, max: u64) -> u64 {
        let epoch = self.scope(i).epoch();
        let max = match self.pace_of(i) {
            Some(p) => self.take_tokens(i, epoch, max, &p),
            None => max,
        };
        let mut n = 0u64;
        while n < max {
            let Some(st) = self.first(i) else { break };
            if st.epoch >= epoch {
                break;
            }
            self.unhold(st, Outcome::Released);
            // SAFETY: a held request and its connection are alive; a posted write event runs
            // after the current handler returns.
            unsafe {
                let c = (*st.r).connection;
                ngx_log_debug!((*c).log, "intermission: releasing request #{}", st.arrival);
                ngx_post_event((*c).write, ptr::addr_of_mut!(ngx_posted_events));
            }
            n += 1;
        }
        if n > 0 {
            self.scope(i).count_released(n);
            self.publish_held(i);
        }
        n
    }

    /// The tokens of scope `i`'s instance-wide bucket this worker may use now, for up to
    /// `max` of its ready requests: only for those older than every other worker's oldest
    /// ready request, so that the oldest go first over all workers. Sets how long the queue
    /// waits for the next try.
    fn take_tokens(&self, i: usize, epoch: u64, max: u64, p: &Pace) -> u64 {
        // SAFETY: nginx's cached monotonic clock, the same in every process of the machine.
        let now = unsafe { ngx_current_msec } as u64;
        let interval = (1.0 / p.per_ms).ceil().max(1.0) as u64;
        let (took, ready, wait) = zone::locked(self.mcf, || {
            let others = self.shared.others_oldest(self.shm(i), self.slot, process_alive);
            let mine = self.ready_before(i, epoch, others, max);
            let (took, wait) = self.scope(i).take_tokens(now, p.per_ms, p.burst, mine);
            (took, mine, wait)
        });
        let q = &self.queues[i];
        q.pace_wait.set(if took == max {
            0
        } else if took < ready {
            wait.max(1)
        } else {
            // The others' requests are older: they take the next tokens.
            interval
        });
        took
    }

    /// How many of the first `max` requests of queue `i` are ready (held under an epoch
    /// before `epoch`) and arrived before `before`.
    fn ready_before(&self, i: usize, epoch: u64, before: u64, max: u64) -> u64 {
        let head = self.queues[i].head.get();
        let mut n = 0;
        // SAFETY: every link in the queue is the first field of a live `ReqState`.
        unsafe {
            let mut q = (*head).next;
            while n < max && q != head {
                let st = &*q.cast::<ReqState>();
                if st.epoch >= epoch || st.arrival >= before {
                    break;
                }
                n += 1;
                q = (*q).next;
            }
        }
        n
    }

    /// The pace of scope `i`'s release, from the location of its first held request; `None`
    /// if it is not paced.
    fn pace_of(&self, i: usize) -> Option<Pace> {
        // SAFETY: a held request is alive.
        let r = unsafe { &*self.first(i)?.r };
        let lcf = conf::loc_conf(r)?;
        (lcf.release_rate > 0).then(|| Pace {
            per_ms: lcf.release_rate as f64 / (RATE_PERIOD_S * 1000) as f64,
            burst: lcf.release_burst.max(1) as f64,
        })
    }

    /// Whether scope `i` has a request whose pause has ended.
    fn has_ready(&self, i: usize) -> bool {
        self.first(i).is_some_and(|st| st.epoch < self.scope(i).epoch())
    }

    /// Schedules the next batch: for the next event-loop turn if a ready scope may release
    /// now, or for when the first paced one may.
    fn continue_release(&self) {
        let wait = (0..self.queues.len())
            .filter(|&i| self.has_ready(i))
            .map(|i| if self.pace_of(i).is_some() { self.queues[i].pace_wait.get() } else { 0 })
            .min();
        // SAFETY: the events live in the leaked state; the next-turn queue is moved to the
        // posted queue after the next epoll wait.
        unsafe {
            match wait {
                None => {}
                Some(0) if (*self.more.get()).posted() == 0 => {
                    ngx_post_event(self.more.get(), ptr::addr_of_mut!(ngx_posted_next_events));
                }
                Some(0) => {}
                Some(ms) if (*self.pace.get()).timer_set() == 0 => {
                    ngx_add_timer(self.pace.get(), ms.min(60_000) as ngx_msec_t);
                }
                Some(_) => {}
            }
        }
    }

    /// Writes this worker's held gauges for scope `i` where every worker can read them.
    fn publish_held(&self, i: usize) {
        let q = &self.queues[i];
        let (oldest, head) = match self.first(i) {
            Some(st) => (st.since_ms.max(1), (st.arrival, st.epoch)),
            None => (0, (0, 0)),
        };
        self.shared.set_held(self.slot, self.shm(i), q.len.get(), oldest, head);
        self.shared.set_newest(self.slot, self.shm(i), q.newest_epoch.get(), q.newest.get());
    }

    /// Arms the tick while anything is held or waited for.
    pub fn arm(&self) {
        // SAFETY: the waiters' head is initialized; the tick lives in the leaked state.
        unsafe {
            let waiting = !ngx_queue_empty(self.waiters.get());
            let held = self.queues.iter().any(|q| q.len.get() > 0);
            if (*self.tick.get()).timer_set() == 0 && (waiting || held) {
                ngx_add_timer(self.tick.get(), self.tick_ms);
            }
        }
    }

    /// Arms the auto-resume timer for the earliest deadline of the scopes.
    pub fn schedule_auto_resume(&self) {
        let next = self.shared.named().filter_map(|i| self.shared.scope(i).auto_resume_at()).min();
        // SAFETY: the event lives in the leaked state.
        unsafe {
            let auto = self.auto.get();
            if (*auto).timer_set() != 0 {
                ngx_del_timer(auto);
            }
            if let Some(at) = next {
                let ms = at.saturating_sub(now_unix_ms());
                ngx_add_timer(auto, ms.min(ngx_msec_t::MAX as u64) as ngx_msec_t);
            }
        }
    }

    /// After a scope of the shared table resumed: releases what this worker holds of it,
    /// and wakes the other workers. Returns how many this worker holds for it.
    pub fn resumed(&self, shm: usize) -> u32 {
        let here = self.mcf.local(shm).map_or(0, |i| self.release_ready(i));
        wake::notify();
        here
    }
}

/// The tick, and the eventfd's read event: release what a resume has freed, answer the
/// drain waiters whose scopes have drained, follow auto-resume deadlines set elsewhere.
unsafe extern "C" fn on_tick(ev: *mut ngx_event_t) {
    let Some(w) = get() else { return };
    // SAFETY: nginx passes our own event (the tick or the eventfd's), whose log is set.
    let log = unsafe { (*ev).log };
    zone::locked(w.mcf, || w.shared.reap(process_alive));
    follow_state_file(w, log);
    release_some(w);
    drain::check_all(w);
    w.schedule_auto_resume();
    w.arm();
}

/// Applies a pause or resume that another nginx generation (binary upgrade) wrote to the
/// state file: a resume there releases what this generation holds.
fn follow_state_file(w: &Worker, log: *mut ngx_log_t) {
    if w.mcf.state_file.is_empty() {
        return;
    }
    let f = zone::locked(w.mcf, || persist::follow(w.mcf, w.shared));
    if let Some(p) = f.problem {
        ngx_log_error!(NGX_LOG_ERR, log, "intermission: {}", p);
    }
    for i in f.resumed {
        ngx_log_error!(
            NGX_LOG_NOTICE,
            log,
            "intermission: scope \"{}\" resumed by the state file (another nginx generation)",
            w.shared.scope(i).name()
        );
        w.resumed(i);
    }
    for i in f.paused {
        ngx_log_error!(
            NGX_LOG_NOTICE,
            log,
            "intermission: scope \"{}\" paused by the state file (another nginx generation)",
            w.shared.scope(i).name()
        );
        wake::notify();
    }
    w.schedule_auto_resume();
}

/// With a state file: follows it, and looks again in `TICK_MS`.
unsafe extern "C" fn on_follow(ev: *mut ngx_event_t) {
    let Some(w) = get() else { return };
    // SAFETY: nginx passes our own event, whose log is set.
    follow_state_file(w, unsafe { (*ev).log });
    // SAFETY: the event lives in the leaked state.
    unsafe { ngx_add_timer(w.follow.get(), TICK_MS) };
}

/// One batch of a release, shared between the ready scopes in order.
unsafe extern "C" fn on_more(_ev: *mut ngx_event_t) {
    if let Some(w) = get() {
        release_some(w);
    }
}

fn release_some(w: &Worker) {
    let mut budget = RELEASE_BATCH;
    for i in 0..w.queues.len() {
        if budget == 0 {
            break;
        }
        if w.has_ready(i) {
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
    // SAFETY: nginx passes our own event, whose log is the cycle's.
    let log = unsafe { (*ev).log };
    let now = now_unix_ms();
    let named: Vec<usize> = w.shared.named().collect();
    for i in named {
        let scope = w.shared.scope(i);
        let (resumed, saved) = zone::locked(w.mcf, || {
            if scope.resume_if_due(now) {
                (true, persist::save(w.mcf, w.shared))
            } else {
                (false, Ok(()))
            }
        });
        if !resumed {
            continue;
        }
        ngx_log_error!(
            NGX_LOG_NOTICE,
            log,
            "intermission: scope \"{}\" auto-resumed, releasing {} held",
            scope.name(),
            w.shared.held_now(i)
        );
        if let Err(e) = saved {
            ngx_log_error!(
                NGX_LOG_ERR,
                log,
                "intermission: auto-resume of \"{}\": {}",
                scope.name(),
                e
            );
        }
        w.resumed(i);
    }
    w.schedule_auto_resume();
}
