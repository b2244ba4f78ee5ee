//! The body filter that notices the end of a released request's response (its last
//! buffer): its turn of the release window (`intermission_release_window`) goes to the next
//! held request then, when the backend is done with it, not when a slow client has read it
//! all.

use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use ngx::ffi::{
    ngx_chain_t, ngx_http_output_body_filter_pt, ngx_http_request_t, ngx_http_top_body_filter,
    ngx_int_t,
};

use crate::runtime::{self as worker, request};

/// The next body filter of the chain (nginx's `ngx_http_next_body_filter`), as an address:
/// set in each configuration's `postconfiguration`, read by the one worker thread.
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Puts the filter at the top of the body filter chain.
pub fn install() {
    // SAFETY: nginx builds the filter chain in postconfiguration, single-threaded, each module
    // taking the top and putting itself there.
    unsafe {
        NEXT.store(ngx_http_top_body_filter.map_or(0, |f| f as usize), Relaxed);
        ngx_http_top_body_filter = Some(filter);
    }
}

/// Whether the chain has the response's last buffer.
///
/// # Safety
/// `chain` is null or a chain of live links and buffers.
unsafe fn has_last(mut chain: *mut ngx_chain_t) -> bool {
    // SAFETY: the caller's promise.
    unsafe {
        while let Some(cl) = chain.as_ref() {
            if cl.buf.as_ref().is_some_and(|b| b.last_buf() != 0) {
                return true;
            }
            chain = cl.next;
        }
    }
    false
}

unsafe extern "C" fn filter(r: *mut ngx_http_request_t, chain: *mut ngx_chain_t) -> ngx_int_t {
    // SAFETY: nginx calls body filters with a live request and its chain.
    let rr = unsafe { &*r };
    if let Some(w) = worker::get().filter(|w| w.has_turns()) {
        // SAFETY: as above.
        if ptr::eq(rr.main, r) && unsafe { has_last(chain) } {
            if let Some(f) = request::find(rr).and_then(|f| f.flight()) {
                w.end_turn(f);
            }
        }
    }
    let next = NEXT.load(Relaxed);
    if next == 0 {
        return 0;
    }
    // SAFETY: `next` is the filter that was at the top of the chain when this one was put
    // there: a function of that type.
    let next: ngx_http_output_body_filter_pt =
        unsafe { core::mem::transmute::<usize, ngx_http_output_body_filter_pt>(next) };
    match next {
        // SAFETY: the next filter of the chain, with the request and chain it was given.
        Some(f) => unsafe { f(r, chain) },
        None => 0,
    }
}
