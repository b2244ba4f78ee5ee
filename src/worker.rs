//! Per-worker state: a first-in-first-out queue of held requests per scope, and the timer
//! that watches the shared state for a resume made by another worker.
//!
//! A held request costs nothing while it waits: it sits in its queue with no timer and no
//! event of its own. The worker that answers a resume releases its own queue at once and
//! wakes the others through an eventfd (`wake`). One timer per worker, armed only while the
//! worker holds something, looks at the scopes' epochs as a fallback (a worker of another
//! nginx binary during an upgrade shares no eventfd; `poll`/`select` cannot use it). The
//! timer is not cancelable on purpose: a worker that shuts down gracefully (reload) stays
//! alive while it holds requests, and releases them on resume.
//!
//! A release goes out in batches, one per event-loop turn: the released requests' upstream
//! connections are opened by one batch and their requests sent by epoll before the next
//! batch starts, so the first released request reaches the backend within a millisecond or
//! two, however many are held.

use core::cell::UnsafeCell;
use core::mem::zeroed;
use core::ptr::addr_of_mut;

use intermission_core::shared::{Scope, Shared};
use ngx::core::Status;
use ngx::ffi::{
    ngx_add_timer, ngx_connection_t, ngx_cycle_t, ngx_event_t, ngx_http_request_t, ngx_int_t,
    ngx_msec_t, ngx_pid, ngx_post_event, ngx_posted_events, ngx_posted_next_events,
    ngx_process_slot, ngx_queue_empty, ngx_queue_init, ngx_queue_insert_before, ngx_queue_remove,
    ngx_queue_t,
};
use ngx::http::HttpModuleMainConf;
use ngx::ngx_log_debug;

use crate::conf::MainConf;
use crate::{wake, Module};

/// How often a holding worker looks for a resume when the eventfd wakes it...
const TICK_MS: ngx_msec_t = 100;
/// ...and when it cannot (another event method than epoll).
const TICK_MS_UNWOKEN: ngx_msec_t = 5;
/// Requests released per event-loop turn.
const RELEASE_BATCH: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Held,
    Released,
}

/// A held request: lives in the request's pool (with the cleanup that unlinks it).
#[repr(C)]
pub struct Held {
    /// First field: a queue link is also a pointer to its `Held`.
    link: ngx_queue_t,
    pub r: *mut ngx_http_request_t,
    /// Global arrival number (over all workers), for the debug log and for order checks.
    pub arrival: u64,
    /// The scope's epoch when the request was held: released once the epoch moves on.
    epoch: u64,
    /// Unix ms at which the request was held.
    pub since_ms: u64,
    /// Index of the scope in this configuration.
    pub scope: usize,
    pub state: State,
}

impl Held {
    pub fn new(
        r: *mut ngx_http_request_t,
        arrival: u64,
        epoch: u64,
        since_ms: u64,
        scope: usize,
    ) -> Held {
        // SAFETY: an all-zero queue link is the unlinked state; it is set when queued.
        let link = unsafe { zeroed() };
        Held { link, r, arrival, epoch, since_ms, scope, state: State::Held }
    }
}

struct Queue {
    head: ngx_queue_t,
    len: u32,
}

pub struct Worker {
    mcf: &'static MainConf,
    pub shared: &'static Shared,
    slot: usize,
    queues: Box<[Queue]>,
    tick: ngx_event_t,
    tick_ms: ngx_msec_t,
    /// Posted to the next event-loop turn while a release has more batches to send.
    more: ngx_event_t,
    /// nginx's event code reads an event's `data` as a connection (its fd names the event in
    /// the debug log): the module's own events get a connection that is not one.
    no_conn: ngx_connection_t,
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

    let queues = (0..mcf.scope_count())
        // SAFETY: initialized in place below, once the queues no longer move.
        .map(|_| Queue { head: unsafe { zeroed() }, len: 0 })
        .collect::<Box<[Queue]>>();
    let tick_ms = if wake::watch(cycle, Some(on_tick)) { TICK_MS } else { TICK_MS_UNWOKEN };
    // SAFETY: all-zero events and connection are nginx's idle ones; the fields they need
    // are set below; `fd` -1 marks the connection as no socket.
    let (tick, more, mut no_conn) = unsafe { (zeroed(), zeroed(), zeroed::<ngx_connection_t>()) };
    no_conn.fd = -1;
    let mut w = Box::new(Worker { mcf, shared, slot, queues, tick, tick_ms, more, no_conn });
    for q in w.queues.iter_mut() {
        // SAFETY: the queue heads live in a boxed slice and never move again.
        unsafe { ngx_queue_init(&mut q.head) };
    }
    let no_conn = addr_of_mut!(w.no_conn).cast();
    for (ev, handler) in [(&mut w.tick, on_tick as _), (&mut w.more, on_more as _)] {
        ev.handler = Some(handler);
        ev.log = cycle.log;
        ev.data = no_conn;
    }
    // SAFETY: see `get`.
    unsafe { *WORKER.0.get() = Some(w) };
    Status::NGX_OK.into()
}

pub unsafe extern "C" fn exit_process(_cycle: *mut ngx_cycle_t) {
    if let Some(w) = get() {
        // SAFETY: as in `init_process`.
        w.shared.leave_slot(w.slot, i64::from(unsafe { ngx_pid }));
    }
}

impl Worker {
    /// The shared state of this configuration's scope `i`.
    pub fn scope(&self, i: usize) -> &'static Scope {
        self.shared.scope(usize::from(self.mcf.shm_index[i]))
    }

    /// Queues a request that must wait; it is released in arrival order.
    ///
    /// # Safety
    /// `held` stays valid until it is released or unlinked (the request pool's cleanup).
    pub unsafe fn hold(&mut self, held: *mut Held) {
        // SAFETY: the caller's promise; the queue heads are initialized and do not move.
        let scope = unsafe {
            let scope = (*held).scope;
            ngx_queue_insert_before(&mut self.queues[scope].head, addr_of_mut!((*held).link));
            scope
        };
        self.queues[scope].len += 1;
        self.scope(scope).count_held();
        self.publish(scope);
        self.arm();
    }

    /// Takes out a request whose client left: counted as aborted, never forwarded.
    ///
    /// # Safety
    /// `held` is a request this worker holds (state `Held`).
    pub unsafe fn abort(&mut self, held: *mut Held) {
        // SAFETY: the caller's promise: `held` is linked in one of this worker's queues.
        let scope = unsafe {
            ngx_queue_remove(addr_of_mut!((*held).link));
            (*held).state = State::Released;
            (*held).scope
        };
        self.queues[scope].len -= 1;
        self.scope(scope).count_aborted();
        self.publish(scope);
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
        let mut n = 0u64;
        let head: *mut ngx_queue_t = &mut self.queues[i].head;
        // SAFETY: every link in the queue is the first field of a live `Held` (the pool
        // cleanup unlinks it before its request is freed); a posted write event runs after
        // the current handler returns.
        unsafe {
            while n < max && !ngx_queue_empty(head) {
                let held = (*head).next.cast::<Held>();
                if (*held).epoch >= epoch {
                    break;
                }
                ngx_queue_remove(addr_of_mut!((*held).link));
                (*held).state = State::Released;
                let c = (*(*held).r).connection;
                ngx_log_debug!((*c).log, "intermission: releasing request #{}", (*held).arrival);
                ngx_post_event((*c).write, addr_of_mut!(ngx_posted_events));
                n += 1;
            }
        }
        if n > 0 {
            self.queues[i].len -= n as u32;
            self.scope(i).count_released(n);
            self.publish(i);
        }
        n
    }

    /// Whether scope `i` has a request whose pause has ended.
    fn has_ready(&self, i: usize) -> bool {
        let q = &self.queues[i];
        // SAFETY: a non-empty queue's first link is a live `Held`.
        q.len > 0 && unsafe { (*q.head.next.cast::<Held>()).epoch } < self.scope(i).epoch()
    }

    /// Schedules the next batch for the next event-loop turn, if any request is ready.
    fn continue_release(&mut self) {
        if self.more.posted() == 0 && (0..self.queues.len()).any(|i| self.has_ready(i)) {
            // SAFETY: the event lives in the boxed worker state for the process's life; the
            // next-turn queue is moved to the posted queue after the next epoll wait.
            unsafe { ngx_post_event(&mut self.more, addr_of_mut!(ngx_posted_next_events)) };
        }
    }

    /// Writes this worker's gauges for scope `i` where every worker can read them.
    fn publish(&self, i: usize) {
        let q = &self.queues[i];
        let oldest = if q.len == 0 {
            0
        } else {
            // SAFETY: a non-empty queue's first link is a live `Held`.
            unsafe { (*q.head.next.cast::<Held>()).since_ms.max(1) }
        };
        self.shared.set_held(self.slot, usize::from(self.mcf.shm_index[i]), q.len, oldest);
    }

    /// Arms the tick while anything is held.
    fn arm(&mut self) {
        if self.tick.timer_set() == 0 && self.queues.iter().any(|q| q.len > 0) {
            // SAFETY: the tick event lives in the boxed worker state for the process's life.
            unsafe { ngx_add_timer(&mut self.tick, self.tick_ms) };
        }
    }
}

/// The tick, and the eventfd's read event: start releasing what a resume has freed.
extern "C" fn on_tick(_ev: *mut ngx_event_t) {
    let Some(w) = get() else { return };
    on_more(&mut w.more);
    w.arm();
}

/// One batch of a release, shared between the ready scopes in order.
extern "C" fn on_more(_ev: *mut ngx_event_t) {
    let Some(w) = get() else { return };
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
