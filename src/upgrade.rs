//! The header filter that notices a connection switching protocols (101, a WebSocket that
//! `proxy_pass` upgrades): from then on a drain does not wait for it, nor a release window,
//! which does not wait for a stream whose answer has started either. It also notices the
//! backend's answer to a request that was held in a scope that holds requests because of a
//! failure: the backend is back (`runtime::answered`).

use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use ngx::ffi::{
    ngx_http_output_header_filter_pt, ngx_http_request_t, ngx_http_top_header_filter, ngx_int_t,
    NGX_HTTP_SWITCHING_PROTOCOLS,
};

use crate::runtime::{self as worker, request};

/// The next header filter of the chain (nginx's `ngx_http_next_header_filter`), as an address:
/// set in each configuration's `postconfiguration`, read by the one worker thread.
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Puts the filter at the top of the header filter chain.
pub fn install() {
    // SAFETY: nginx builds the filter chain in postconfiguration, single-threaded, each module
    // taking the top and putting itself there.
    unsafe {
        NEXT.store(ngx_http_top_header_filter.map_or(0, |f| f as usize), Relaxed);
        ngx_http_top_header_filter = Some(filter);
    }
}

unsafe extern "C" fn filter(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls header filters with a live request.
    let rr = unsafe { &*r };
    if ptr::eq(rr.main, r) {
        if let Some(w) = worker::get() {
            let upgraded = rr.headers_out.status == NGX_HTTP_SWITCHING_PROTOCOLS as usize;
            if upgraded || w.has_turns() {
                if let Some(f) = request::find(rr).and_then(|f| f.flight()) {
                    if upgraded {
                        w.flight_upgraded(f);
                    } else {
                        w.answer_started(f);
                    }
                }
            }
        }
        // SAFETY: a live request's connection, with its log.
        crate::runtime::answered(rr, unsafe { (*rr.connection).log });
    }
    let next = NEXT.load(Relaxed);
    if next == 0 {
        return 0;
    }
    // SAFETY: `next` is the filter that was at the top of the chain when this one was put
    // there: a function of that type.
    let next: ngx_http_output_header_filter_pt =
        unsafe { core::mem::transmute::<usize, ngx_http_output_header_filter_pt>(next) };
    match next {
        // SAFETY: the next filter of the chain, with the request it was given.
        Some(f) => unsafe { f(r) },
        None => 0,
    }
}
