//! Drain waiters: control requests (`drain`, `enable?wait=drained`) that answer once nothing
//! is in flight in their scopes, or with 503 at their timeout.
//!
//! A waiter is suspended like a request reading its body (`count++`, `NGX_DONE`) and kept in
//! its worker's list. It is looked at when an in-flight count drops to zero in any worker
//! (that worker wakes every worker through the eventfd when somebody waits), and on the
//! worker's tick, so that a worker killed with its requests in flight cannot leave it
//! waiting: the dead worker's counts no longer count.

use core::ffi::c_void;
use core::mem::{offset_of, size_of, zeroed};
use core::ptr::{self, addr_of_mut};

use intermission_core::json::{self, Change, Drain, DrainScope};
use ngx::core::Status;
use ngx::ffi::{
    ngx_add_timer, ngx_del_timer, ngx_event_t, ngx_http_discarded_request_body_handler,
    ngx_http_finalize_request, ngx_http_request_t, ngx_http_run_posted_requests,
    ngx_http_test_reading, ngx_int_t, ngx_msec_t, ngx_pool_cleanup_add, ngx_post_event,
    ngx_posted_events, ngx_queue_insert_before, ngx_queue_remove, ngx_queue_t,
};

use intermission_core::shared::TABLE_SCOPES;

use super::Worker;
use crate::ngx_util::{now_unix_ms, process_alive, send_json};

/// What a waiter answers with once its wait ends.
pub enum Answer {
    Drain,
    /// `enable?wait=drained`: the pause document; bit `i` of `changed` is set where the
    /// pause changed scope `i` of the shared table; `persisted` as the pause wrote it.
    Pause {
        changed: [u64; 2],
        persisted: Option<bool>,
        error: Option<String>,
    },
}

impl Answer {
    /// The answer's status: 503 if the wait timed out, 500 if the pause was not persisted.
    fn status(&self, drained: bool) -> u16 {
        match self {
            _ if !drained => 503,
            Answer::Pause { persisted: Some(false), .. } => 500,
            _ => 200,
        }
    }
}

#[repr(C)]
pub struct Waiter {
    /// First field: a queue link is also a pointer to its waiter.
    link: ngx_queue_t,
    r: *mut ngx_http_request_t,
    /// Bit `i` set: waits for scope `i` of the shared table. Two words, not a `u128`: pool
    /// memory is aligned to 8 bytes only.
    targets: [u64; 2],
    started_ms: u64,
    answer: Answer,
    done: bool,
    timer: ngx_event_t,
    /// Posted when the wait starts: runs once nginx has suspended the request.
    suspended: ngx_event_t,
}

/// A set of scopes of the shared table.
pub type Mask = u128;

/// A mask as two words, for pool memory.
pub fn words(m: Mask) -> [u64; 2] {
    [m as u64, (m >> 64) as u64]
}

fn mask_of(w: [u64; 2]) -> Mask {
    u128::from(w[0]) | u128::from(w[1]) << 64
}

/// The scopes of a bit set, in order.
fn scopes(targets: Mask) -> impl Iterator<Item = usize> {
    (0..TABLE_SCOPES).filter(move |&i| targets & (1 << i) != 0)
}

/// Whether nothing a drain waits for is in flight in the targeted scopes.
fn drained(w: &Worker, targets: Mask) -> bool {
    scopes(targets).all(|i| w.inflight_of(i) == 0)
}

/// What is in flight in each targeted scope, for an answer.
fn left(w: &Worker, targets: Mask) -> Vec<DrainScope> {
    let list: Vec<usize> = scopes(targets).collect();
    let blockers = w.blockers(&list);
    list.iter()
        .zip(blockers)
        .map(|(&i, blockers)| {
            let st = w.shared.status(i, process_alive);
            DrainScope {
                name: st.name,
                inflight: st.inflight,
                upgraded: st.upgraded,
                streams: st.streams,
                blockers,
            }
        })
        .collect()
}

/// Answers now if the scopes are drained; otherwise suspends the request until they are or
/// `timeout_ms` passes. Returns what the content handler returns.
pub fn wait(
    r: &mut ngx_http_request_t,
    w: &Worker,
    targets: Mask,
    timeout_ms: u64,
    answer: Answer,
) -> ngx_int_t {
    let now = now_unix_ms();
    if drained(w, targets) {
        let d = Drain { drained: true, waited_ms: 0, scopes: left(w, targets), now_ms: now };
        let doc = render(w, targets, &answer, d, now);
        return send_json(r, answer.status(true), &doc, None);
    }
    // SAFETY: the cleanup entry's data is a `Waiter` in the request's pool, valid until the
    // pool is destroyed, after the cleanup unlinked it.
    let waiter = unsafe {
        let Some(cln) = ngx_pool_cleanup_add(r.pool, size_of::<Waiter>()).as_mut() else {
            return Status::NGX_ERROR.0;
        };
        let wt = cln.data.cast::<Waiter>();
        wt.write(Waiter {
            link: zeroed(),
            r,
            targets: words(targets),
            started_ms: now,
            answer,
            done: false,
            timer: zeroed(),
            suspended: zeroed(),
        });
        cln.handler = Some(cleanup);
        &mut *wt
    };
    waiter.timer.handler = Some(on_timeout);
    waiter.timer.data = r.connection.cast();
    // SAFETY: the request's connection and log are alive; the list head is initialized; the
    // timer and the link are removed before the waiter's memory goes (`finish`, `cleanup`).
    unsafe {
        waiter.timer.log = (*r.connection).log;
        ngx_add_timer(&mut waiter.timer, timeout_ms as ngx_msec_t);
        ngx_queue_insert_before(w.waiters(), &mut waiter.link);
        (*r.main).set_count((*r.main).count() + 1);
    }
    for i in scopes(targets) {
        w.count_waiter(i, true);
    }
    // A client that leaves is noticed; its request's cleanup takes the waiter out.
    r.read_event_handler = Some(read_while_waiting);
    // When the content handler returns NGX_DONE while nginx still discards the body, nginx
    // puts its own discarding read handler back and arms `lingering_timeout`, a limit meant
    // for after the answer: once the request is suspended, take the read side over again.
    waiter.suspended.handler = Some(on_suspended);
    waiter.suspended.data = r.connection.cast();
    // SAFETY: as above; the event is taken off the posted queue before its memory goes.
    unsafe {
        waiter.suspended.log = (*r.connection).log;
        ngx_post_event(&mut waiter.suspended, addr_of_mut!(ngx_posted_events));
    }
    w.arm();
    Status::NGX_DONE.0
}

/// Answers every waiter whose scopes have drained.
pub fn check_all(w: &Worker) {
    let head: *mut ngx_queue_t = w.waiters();
    // SAFETY: every link in the list is the first field of a live `Waiter`; `finish` unlinks
    // the current one, so the next one is taken first.
    unsafe {
        let mut q = (*head).next;
        while q != head {
            let next = (*q).next;
            let waiter = &mut *q.cast::<Waiter>();
            if drained(w, mask_of(waiter.targets)) {
                finish(w, waiter, true);
            }
            q = next;
        }
    }
}

/// Ends a wait: unlinks the waiter, answers, finalizes the suspended request.
fn finish(w: &Worker, waiter: &mut Waiter, drained: bool) {
    unlink(w, waiter);
    let now = now_unix_ms();
    let d = Drain {
        drained,
        waited_ms: now.saturating_sub(waiter.started_ms),
        scopes: left(w, mask_of(waiter.targets)),
        now_ms: now,
    };
    let doc = render(w, mask_of(waiter.targets), &waiter.answer, d, now);
    // SAFETY: the suspended request is alive until this finalization (its cleanup would
    // have unlinked the waiter otherwise); the connection outlives the call.
    unsafe {
        let r = &mut *waiter.r;
        let c = r.connection;
        let rc = send_json(r, waiter.answer.status(drained), &doc, None);
        ngx_http_finalize_request(r, rc);
        ngx_http_run_posted_requests(c);
    }
}

fn unlink(w: &Worker, waiter: &mut Waiter) {
    if waiter.done {
        return;
    }
    waiter.done = true;
    if waiter.suspended.posted() != 0 {
        // SAFETY: a posted event is linked in nginx's posted queue (ngx_delete_posted_event).
        unsafe { ngx_queue_remove(&mut waiter.suspended.queue) };
        waiter.suspended.set_posted(0);
    }
    // SAFETY: a waiter not done is linked in its worker's list; its timer is in the tree.
    unsafe {
        ngx_queue_remove(&mut waiter.link);
        if waiter.timer.timer_set() != 0 {
            ngx_del_timer(&mut waiter.timer);
        }
    }
    for i in scopes(mask_of(waiter.targets)) {
        w.count_waiter(i, false);
    }
}

fn render(w: &Worker, targets: Mask, answer: &Answer, d: Drain, now: u64) -> String {
    match answer {
        Answer::Drain => json::drain(&d),
        Answer::Pause { changed, persisted, error } => {
            let changes: Vec<Change> = scopes(targets)
                .map(|i| {
                    let scope = w.shared.scope(i);
                    Change {
                        name: scope.name(),
                        paused: scope.is_paused(),
                        changed: mask_of(*changed) & (1 << i) != 0,
                        held: w.shared.held_now(i),
                        auto_resume_at_ms: scope.auto_resume_at(),
                        down: scope.is_down(),
                    }
                })
                .collect();
            let persist = persisted.map(|ok| match ok {
                true => Ok(()),
                false => Err(error.clone().unwrap_or_default()),
            });
            json::change("pause", &changes, now, Some(&d), persist.as_ref())
        }
    }
}

/// The wait's timeout: answers 503 with what is still in flight.
unsafe extern "C" fn on_timeout(ev: *mut ngx_event_t) {
    // SAFETY: this handler is only set on the `timer` of a live `Waiter`.
    let waiter = unsafe { &mut *ev.cast::<u8>().sub(offset_of!(Waiter, timer)).cast::<Waiter>() };
    if let Some(w) = super::get() {
        finish(w, waiter, false);
    }
}

/// The request is suspended: the waiter's read handler again, and no lingering timer.
unsafe extern "C" fn on_suspended(ev: *mut ngx_event_t) {
    // SAFETY: this handler is only set on the `suspended` event of a live `Waiter`, taken off
    // the posted queue when the waiter ends.
    let waiter =
        unsafe { &mut *ev.cast::<u8>().sub(offset_of!(Waiter, suspended)).cast::<Waiter>() };
    // SAFETY: a waiting request is alive, with its connection.
    unsafe {
        (*waiter.r).read_event_handler = Some(read_while_waiting);
        let rev = (*(*waiter.r).connection).read;
        if (*rev).timer_set() != 0 {
            ngx_del_timer(rev);
        }
    }
}

/// The read handler of a waiting control request: notices a client that leaves, and goes on
/// discarding a body that nginx had not finished discarding when the wait began, without
/// `lingering_timeout` (nginx's `lingering_time` still bounds a body that never ends).
unsafe extern "C" fn read_while_waiting(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls request handlers with a live request and its connection.
    unsafe {
        let rev = (*(*r).connection).read;
        (*rev).set_timedout(0);
        if (*r).discard_body() != 0 {
            ngx_http_discarded_request_body_handler(r);
            if (*r).discard_body() != 0 || (*rev).timer_set() == 0 {
                return;
            }
        }
        if (*rev).timer_set() != 0 {
            ngx_del_timer(rev);
        }
        ngx_http_test_reading(r);
    }
}

/// The waiter's request is freed (its client left, or it was answered).
unsafe extern "C" fn cleanup(data: *mut c_void) {
    // SAFETY: `data` is the waiter written in `wait`.
    let waiter = unsafe { &mut *data.cast::<Waiter>() };
    // Pool memory is freed, not dropped: the answer's error text goes now, the waiter's last
    // moment (an answer was rendered before its request was finalized).
    // SAFETY: the answer is valid and never used after this.
    unsafe { ptr::drop_in_place(&mut waiter.answer) };
    // An answered waiter is finalized from `finish`, whose caller holds the worker state:
    // return before taking it again.
    if waiter.done {
        return;
    }
    if let Some(w) = super::get() {
        unlink(w, waiter);
    }
}
