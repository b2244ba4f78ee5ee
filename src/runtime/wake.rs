//! Waking every worker at once when a scope resumes, from whichever worker took the command.
//!
//! The master makes one eventfd before it forks, once for its whole life, so the workers of
//! every configuration generation (old ones still holding requests after a reload, too)
//! share it. Each worker watches it edge-triggered and nobody ever reads it: every write
//! then wakes every worker's epoll once. Reading it would race: a worker that resets the
//! counter can make another worker's pending wake-up vanish. The counter grows by one per
//! resume and cannot overflow in practice (2^64).
//!
//! Edge-triggered events are required (epoll; an unread eventfd would make `poll` or
//! `select` spin); with other event methods the workers fall back to a short timer.

use core::sync::atomic::{AtomicI32, Ordering::Relaxed};

use ngx::ffi::{
    ngx_connection_t, ngx_cycle_t, ngx_event_flags, ngx_event_handler_pt, ngx_get_connection,
    ngx_handle_read_event, NGX_USE_CLEAR_EVENT,
};

static FD: AtomicI32 = AtomicI32::new(-1);

/// In the master, before the workers fork (nginx's `init_module`): makes the eventfd once.
pub fn create() {
    if FD.load(Relaxed) >= 0 {
        return;
    }
    // SAFETY: a plain system call; close-on-exec keeps it out of a new binary (upgrade),
    // which makes its own.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    FD.store(fd, Relaxed);
}

/// In a worker: watches the eventfd. False if this worker cannot be woken this way.
pub fn watch(cycle: &ngx_cycle_t, handler: ngx_event_handler_pt) -> bool {
    let fd = FD.load(Relaxed);
    // SAFETY: set by the event module before any module's `init_process` that runs after it.
    if fd < 0 || unsafe { ngx_event_flags } & NGX_USE_CLEAR_EVENT as usize == 0 {
        return false;
    }
    // SAFETY: the connection is nginx's, for this worker's life; marking it a channel keeps
    // a gracefully exiting worker from reporting it as a socket left open.
    unsafe {
        let c: *mut ngx_connection_t = ngx_get_connection(fd, cycle.log);
        let Some(c) = c.as_mut() else { return false };
        let rev = &mut *c.read;
        rev.handler = handler;
        rev.log = cycle.log;
        rev.set_channel(1);
        ngx_handle_read_event(rev, 0) == 0
    }
}

/// Wakes every worker: one write to the eventfd.
pub fn notify() {
    let fd = FD.load(Relaxed);
    if fd >= 0 {
        // SAFETY: a plain system call on our own descriptor; it fails only at the counter's
        // maximum, where the workers' timers still notice the resume.
        unsafe { libc::eventfd_write(fd, 1) };
    }
}
