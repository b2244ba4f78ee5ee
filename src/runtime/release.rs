//! A release: in batches, one per event-loop turn, in arrival order. The released requests'
//! upstream connections are opened by one batch and their requests sent by epoll before the
//! next batch starts, so the first released request reaches the backend within a millisecond
//! or two, however many are held. A paced release (`intermission_release_rate`) takes its
//! tokens from one bucket per scope in the shared zone, under the zone's mutex as
//! `limit_req` does, and gives them to the oldest held requests over all workers first.
//!
//! A windowed release (`intermission_release_window N`) lets at most N released requests of
//! a scope be in flight over the instance: each takes a turn, published in its worker's
//! slot, and gives it back when its response ends (the last buffer of its answer, or its
//! end, whichever comes first); the turn goes to the oldest ready request over all workers,
//! so the backend gets them in arrival order, as fast as it answers them. The turns of a
//! process that died are not counted (its slot is not live).

use core::ptr;

use intermission_core::time::RATE_PERIOD_S;
use ngx::ffi::{ngx_add_timer, ngx_msec_t, ngx_post_event, ngx_posted_next_events};

use super::inflight::Flight;
use super::request::ReqState;
use super::{wake, Worker, WOKEN};
use crate::conf;
use crate::ngx_util::{monotonic_ms, process_alive};
use crate::shm;

/// Requests released per event-loop turn.
pub const RELEASE_BATCH: u64 = 64;

/// How long a paced or windowed release, or a readiness check, waits for another worker to
/// send its older requests first (ms): a worker that is busy or stopped does not hold up the
/// others for longer; the tick (`TICK_MS`) tries again.
pub(super) const ORDER_GRACE_MS: u64 = 100;

/// A scope's release pace: the instance's rate and burst.
pub(super) struct Pace {
    per_ms: f64,
    burst: f64,
}

impl Worker {
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
    pub(super) fn release_batch(&self, i: usize, max: u64) -> u64 {
        // A resume while the backend is down sends nothing into the failure; the scope's
        // coming up releases them.
        if !self.scope(i).may_release() {
            return 0;
        }
        let epoch = self.scope(i).epoch();
        let (pace, window) = self.limits_of(i);
        let max = if pace.is_some() || window > 0 {
            self.take_turns(i, epoch, max, pace.as_ref(), window)
        } else {
            max
        };
        let mut n = 0u64;
        while n < max {
            let Some(st) = self.first(i) else { break };
            if st.epoch >= epoch {
                break;
            }
            self.let_go(st, "");
            st.flight.turn = window > 0;
            n += 1;
        }
        if window > 0 && n < max {
            // Claimed for requests that are not there: never, as the claim counted them.
            self.add_turns(i, -((max - n) as i64));
        }
        if n > 0 {
            self.scope(i).count_released(n);
            self.publish_held(i);
        }
        n
    }

    /// What scope `i`'s release may send now, for up to `max` of this worker's ready
    /// requests, in one critical section: only those older than every other worker's
    /// oldest ready request (the oldest go first over all workers), as many as the window
    /// has turns free over the instance (which this claims), and as many as the pace has
    /// tokens. Sets how the queue waits for its next try.
    fn take_turns(&self, i: usize, epoch: u64, max: u64, pace: Option<&Pace>, window: u64) -> u64 {
        let now = monotonic_ms();
        let shm = self.shm(i);
        let q = &self.queues[i];
        // A worker that does not take its turn (busy, stopped) holds up the others for at
        // most `ORDER_GRACE_MS`: then this one sends its own requests anyway.
        let since = q.order_wait_since.get();
        let in_order = since == 0 || now.saturating_sub(since) < ORDER_GRACE_MS;
        let (took, ready, wait, others, free, could) = shm::locked(self.mcf, || {
            let others = match in_order {
                true => self.shared.others_oldest(shm, self.slot, process_alive),
                false => u64::MAX,
            };
            let ready = self.ready_before(i, epoch, others, max);
            let free = match window {
                0 => u64::MAX,
                w => self
                    .scope(i)
                    .window_now(w)
                    .saturating_sub(self.shared.turns(shm, process_alive)),
            };
            let want = ready.min(free);
            let (took, wait) = match pace {
                Some(p) => self.scope(i).take_tokens(now, p.per_ms, p.burst, want),
                None => (want, 0),
            };
            // Whether one more could go now, but for the others' older requests: a turn
            // free and a token left.
            let could = free > took
                && pace.map_or(true, |p| self.scope(i).has_token(now, p.per_ms, p.burst));
            if window > 0 {
                self.add_turns(i, took as i64);
            }
            (took, ready, wait, others, free.saturating_sub(took), could)
        });
        // Held up by an older request of another worker while one more could go (this one
        // has more ready): waiting for a turn or a token is no worker's delay.
        let held_up = took == ready && ready < max && others != u64::MAX && could;
        q.order_wait_since.set(match (held_up, since) {
            (true, 0) => now.max(1),
            (true, t) => t,
            (false, _) => 0,
        });
        q.pace_wait.set(if took == max {
            0
        } else if took < ready.min(free + took) {
            // The pace's next token.
            wait.max(1)
        } else {
            match pace {
                // The others' requests are older: they take the next tokens.
                Some(p) if window == 0 => (1.0 / p.per_ms).ceil().max(1.0) as u64,
                // A turn that frees up, or the other workers' release, wakes it.
                _ => WOKEN,
            }
        });
        if window > 0 && free > 0 && others != u64::MAX {
            // Turns are left, and another worker holds the oldest ready requests.
            wake::notify();
        }
        took
    }

    /// This worker's turns of scope `i`'s window change by `d`; published at once.
    fn add_turns(&self, i: usize, d: i64) {
        let q = &self.queues[i];
        let old = q.turns.get();
        q.turns.set((i64::from(old) + d).clamp(0, i64::from(u32::MAX)) as u32);
        let t = &self.turns_total;
        t.set(t.get() - u64::from(old) + u64::from(q.turns.get()));
        self.shared.set_turns(self.slot, self.shm(i), q.turns.get());
    }

    /// A released request's response ended (or it left the scope, switched protocols, or
    /// started a stream): its turn of the window goes to the next oldest held request, in
    /// this worker or, woken, in another.
    pub fn end_turn(&self, f: &mut Flight) {
        if !f.turn {
            return;
        }
        f.turn = false;
        let i = f.scope;
        self.add_turns(i, -1);
        self.scope(i).turn_ended();
        let q = &self.queues[i];
        if q.pace_wait.get() == WOKEN {
            q.pace_wait.set(0);
        }
        self.continue_release();
        if self.shared.others_oldest(self.shm(i), self.slot, process_alive) != u64::MAX {
            wake::notify();
        }
    }

    /// Whether this worker holds turns of any window: the body filter's one test.
    pub fn has_turns(&self) -> bool {
        self.turns_total.get() != 0
    }

    /// How many of the first `max` requests of queue `i` are ready (held under an epoch
    /// before `epoch`) and arrived before `before`.
    pub(super) fn ready_before(&self, i: usize, epoch: u64, before: u64, max: u64) -> u64 {
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

    /// The pace and window of scope `i`'s release, from the location of its first held
    /// request; no pace and window 0 if it has none.
    pub(super) fn limits_of(&self, i: usize) -> (Option<Pace>, u64) {
        // SAFETY: a held request is alive.
        let Some(lcf) = self.first(i).and_then(|st| conf::loc_conf(unsafe { &*st.r })) else {
            return (None, 0);
        };
        let pace = (lcf.release_rate > 0).then(|| Pace {
            per_ms: lcf.release_rate as f64 / (RATE_PERIOD_S * 1000) as f64,
            burst: lcf.release_burst.max(1) as f64,
        });
        (pace, lcf.release_window)
    }

    /// Whether scope `i` has a request whose pause has ended.
    pub(super) fn has_ready(&self, i: usize) -> bool {
        let scope = self.scope(i);
        scope.may_release() && self.first(i).is_some_and(|st| st.epoch < scope.epoch())
    }

    /// Schedules the next batch: for the next event-loop turn if a ready scope may release
    /// now, or for when the first paced one may.
    pub(super) fn continue_release(&self) {
        let wait = (0..self.queues.len())
            .filter(|&i| self.has_ready(i))
            .map(|i| match self.limits_of(i) {
                (None, 0) => 0,
                _ => self.queues[i].pace_wait.get(),
            })
            .filter(|&ms| ms != WOKEN)
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

    /// After a scope of the shared table resumed: releases what this worker holds of it,
    /// and wakes the other workers. Returns how many this worker holds for it.
    pub fn resumed(&self, shm: usize) -> u32 {
        let here = self.mcf.local(shm).map_or(0, |i| self.release_ready(i));
        wake::notify();
        here
    }
}

pub(super) fn release_some(w: &Worker) {
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
