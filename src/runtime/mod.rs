//! Per-worker state: a first-in-first-out queue of held requests per scope, in-flight
//! counts, drain waiters, and the events that release requests and resume scopes.
//!
//! - `queues`:   holding a request and letting it go (released, timed out, aborted);
//! - `release`:  a release in batches, and its instance-wide pace;
//! - `inflight`: requests in flight (waited for by a drain, or long-lived), and the drain
//!   waiters that wait for them to end;
//! - `timers`:   the worker's own events: tick, follow the state file, auto-resume;
//! - `shutdown`: a real stop (not a reload or an upgrade) lets the held requests go;
//! - `request`:  per-request state, kept across internal redirects;
//! - `drain`:    control requests that wait until nothing is in flight;
//! - `checks`:   the readiness check of a scope that holds requests because of a failure;
//! - `wake`:     the eventfd that wakes every worker when a scope resumes.
//!
//! A held request costs nothing while it waits: it sits in its queue with only its
//! `max_time` timer. The worker that answers a resume releases its own queue at once and
//! wakes the others through an eventfd (`wake`). One timer per worker, armed only while the
//! worker holds something or has drain waiters, looks at the shared state as a fallback (a
//! worker of another nginx binary during an upgrade shares no eventfd; a worker killed with
//! SIGKILL wakes nobody). That timer is not cancelable on purpose: a worker that shuts down
//! gracefully (reload) stays alive while it holds requests, and releases them on resume; on
//! a real stop, which no resume can follow, it lets them go at once (`shutdown`).
//!
//! The state is only ever reached through shared references (`get`), its mutable parts in
//! cells: nginx re-enters the module from inside the calls the module makes (finalizing a
//! request runs its log phase and pool cleanups, which count it out of flight), and two live
//! `&mut` to one value would be undefined behaviour. It is made once per worker process and
//! never freed: the events it owns may sit in nginx's timer tree until the process exits.

pub mod checks;
pub use checks::answered;
pub mod drain;
pub mod inflight;
mod queues;
mod release;
pub mod request;
pub mod shutdown;
mod timers;
pub use timers::followed;
pub mod wake;

use core::cell::{Cell, UnsafeCell};
use core::mem::zeroed;
use core::ptr::{self, null_mut};
use core::sync::atomic::{AtomicPtr, Ordering::Relaxed};

use intermission_core::shared::{Scope, Shared, TABLE_SCOPES};
use ngx::ffi::{
    ngx_add_timer, ngx_connection_t, ngx_core_conf_t, ngx_core_module, ngx_cycle_t, ngx_del_timer,
    ngx_event_t, ngx_msec_t, ngx_pid, ngx_process_slot, ngx_queue_empty, ngx_queue_init,
    ngx_queue_t,
};
use ngx::http::HttpModuleMainConf;

use crate::conf::MainConf;
use crate::ngx_util::{now_unix_ms, process_alive};
use crate::{shm, Module};
use timers::{on_auto, on_check, on_follow, on_more, on_tick, TICK_MS, TICK_MS_UNWOKEN};

struct Queue {
    head: UnsafeCell<ngx_queue_t>,
    len: Cell<u32>,
    /// The epoch of the newest held requests, and how many are held from it (the tail).
    newest_epoch: Cell<u64>,
    newest: Cell<u32>,
    /// A paced or windowed release: milliseconds until this queue may release again (0:
    /// now; `WOKEN`: when a turn of the window frees up, or another worker releases).
    pace_wait: Cell<u64>,
    /// Turns of the scope's release window this worker's released requests hold.
    turns: Cell<u32>,
    /// Since when (monotonic ms) an older request of another worker holds up this queue's
    /// paced or windowed release; 0 if none does.
    order_wait_since: Cell<u64>,
}

/// `Queue::pace_wait` of a queue that waits to be woken, not for a time.
const WOKEN: u64 = u64::MAX;

pub struct Worker {
    pub mcf: &'static MainConf,
    pub shared: &'static Shared,
    slot: usize,
    queues: Box<[Queue]>,
    /// In-flight requests of each configured scope, by `Kind`: counts,
    /// and lists in the order they were passed on.
    counts: Box<[[Cell<u32>; 3]]>,
    flights: Box<[[UnsafeCell<ngx_queue_t>; 3]]>,
    /// The pause (its start, unix ms) whose long-lived connections this worker closed, per
    /// configured scope (`intermission_close_on_pause`).
    closed_for: Box<[Cell<u64>]>,
    /// This worker's slot lists blockers (`inflight::publish_blockers`).
    published: Cell<bool>,
    /// The newest start (unix ms) among the published blockers.
    published_newest: Cell<u64>,
    /// Publishes the oldest requests in flight while there are any.
    blockers: UnsafeCell<ngx_event_t>,
    /// Drain waiters of this worker for each scope of the shared table.
    waiting: Box<[Cell<u32>]>,
    /// The connections this worker may spend on held requests and their release
    /// (`hold_budget`): `worker_connections` less its listening sockets, its channel to the
    /// master and the module's eventfd, less a sixteenth for everything else.
    room: u64,
    pub workers: u64,
    /// The turns of every window this worker's released requests hold (the filters' test).
    turns_total: Cell<u64>,
    /// Whether this worker has said that a cap turned a request away: (its own
    /// connections, `intermission_max_held`).
    said_capped: (Cell<bool>, Cell<bool>),
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
    /// The next readiness check this worker may send (`checks`).
    ready_check: UnsafeCell<ngx_event_t>,
    /// nginx's event code reads an event's `data` as a connection (its fd names the event in
    /// the debug log): the module's own events get a connection that is not one.
    no_conn: UnsafeCell<ngx_connection_t>,
    /// With a state file: follows it every `TICK_MS`, held requests or not, so that a pause
    /// answered by another nginx generation (binary upgrade) reaches idle workers too.
    follow: UnsafeCell<ngx_event_t>,
    shutdown: shutdown::Shutdown,
}

/// This worker's state, made once in `start` and never freed.
static WORKER: AtomicPtr<Worker> = AtomicPtr::new(null_mut());

/// This worker's state; `None` in a process where the module is not in use (the master, the
/// cache manager and loader, a configuration without the module).
pub fn get() -> Option<&'static Worker> {
    // SAFETY: null, or the state leaked in `start` for the process's life; every
    // handler of this module runs on the worker's one event-loop thread.
    unsafe { WORKER.load(Relaxed).as_ref() }
}

/// A worker starts: its state, its slot in the shared zone, its events.
pub fn start(cycle: &ngx_cycle_t) {
    let Some(mcf) = Module::main_conf(cycle) else { return };
    let Some(shared) = mcf.shared() else { return };
    // SAFETY: set by nginx before the worker's modules are initialized.
    let (slot, pid) = unsafe { (ngx_process_slot as usize, i64::from(ngx_pid)) };
    let n = mcf.scope_count();
    let uses: Vec<usize> = (0..n).map(|i| usize::from(mcf.shm_index[i])).collect();
    shm::locked(mcf, || {
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
                    turns: Cell::new(0),
                    order_wait_since: Cell::new(0),
                })
                .collect(),
            counts: (0..n).map(|_| Default::default()).collect(),
            flights: (0..n).map(|_| [zeroed(), zeroed(), zeroed()]).collect(),
            closed_for: (0..n).map(|_| Cell::new(0)).collect(),
            published: Cell::new(false),
            published_newest: Cell::new(0),
            blockers: zeroed(),
            waiting: (0..TABLE_SCOPES).map(|_| Cell::new(0)).collect(),
            room: {
                let free =
                    (cycle.connection_n as u64).saturating_sub(cycle.listening.nelts as u64 + 2);
                free - free / 16
            },
            workers,
            turns_total: Cell::new(0),
            said_capped: (Cell::new(false), Cell::new(false)),
            waiters: zeroed(),
            tick: zeroed(),
            tick_ms,
            more: zeroed(),
            pace: zeroed(),
            check: zeroed(),
            auto: zeroed(),
            ready_check: zeroed(),
            no_conn: zeroed(),
            follow: zeroed(),
            shutdown: shutdown::Shutdown::new(cycle),
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
        for heads in w.flights.iter() {
            for h in heads {
                ngx_queue_init(h.get());
            }
        }
        let no_conn = w.no_conn.get().cast();
        for (ev, handler) in [
            (&w.tick, on_tick as unsafe extern "C" fn(*mut ngx_event_t)),
            (&w.more, on_more),
            (&w.pace, on_more),
            (&w.check, on_check),
            (&w.auto, on_auto),
            (&w.follow, on_follow),
            (&w.blockers, inflight::on_blockers),
            (&w.ready_check, checks::on_ready_check),
        ] {
            let ev = &mut *ev.get();
            ev.handler = Some(handler);
            ev.log = cycle.log;
            ev.data = no_conn;
        }
        // None of these may keep a gracefully exiting worker alive: the workers of the new
        // configuration have their own.
        (*w.auto.get()).set_cancelable(1);
        (*w.follow.get()).set_cancelable(1);
        (*w.blockers.get()).set_cancelable(1);
        (*w.ready_check.get()).set_cancelable(1);
    }
    WORKER.store(ptr::from_ref(w).cast_mut(), Relaxed);
    w.schedule_auto_resume();
    if !mcf.state_file.is_empty() {
        // SAFETY: the event lives in the leaked state.
        unsafe { ngx_add_timer(w.follow.get(), TICK_MS) };
    }
}

/// A worker exits cleanly: it gives its slot back.
pub fn stop() {
    if let Some(w) = get() {
        // SAFETY: set by nginx when the process started.
        let pid = i64::from(unsafe { ngx_pid });
        shutdown::exit(w);
        shm::locked(w.mcf, || w.shared.leave_slot(w.slot, pid));
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
}
