//! Hold on an unplanned failure (`intermission_on_failure hold`): a request whose upstream
//! attempt failed with nothing of it sent (connection refused, connect timeout, no live
//! upstream) is held in its scope instead of answered 502/504, and sent again once a
//! readiness check finds the backend back.
//!
//! nginx's stock way to run a request again after a failure is `error_page` to a named
//! location; this module wires one per location at configuration time: an `error_page 502
//! 504 =` to a named location that shares the location's own configuration, so that the
//! request re-enters the same location at its rewrite phase, method and body intact (nginx
//! changes the method to GET only for an error page that is a URI). Its access phase is this
//! module's handler again, which holds it. Failures after the request may have reached the
//! backend (`request_sent`, bytes sent in any attempt) are answered as nginx would.
//!
//! The first failure does not hold the whole scope: the request waits for a readiness
//! check, a trial send of the oldest request held because of a failure (one at a time over
//! the whole instance, a lease in the zone, every `interval` with jitter). A failed check
//! puts the scope down: new requests are held without trying the backend. A check that gets
//! an answer brings it up: the epoch moves on and the held requests go, in arrival order and
//! at the scope's release pace, unless a pause still holds them.

use core::mem::size_of;
use core::ptr::{self, null_mut};

use core::ffi::c_void;

use ngx::ffi::{
    ngx_array_create, ngx_array_push, ngx_conf_t, ngx_http_conf_ctx_t, ngx_http_core_loc_conf_t,
    ngx_http_core_module, ngx_http_core_srv_conf_t, ngx_http_err_page_t, ngx_http_max_module,
    ngx_http_request_t, ngx_http_upstream_state_t, ngx_palloc, ngx_pcalloc, ngx_pnalloc, ngx_str_t,
    NGX_HTTP_LOCK, NGX_HTTP_PATCH, NGX_HTTP_POST,
};
use ngx::http::{HttpModule, HttpModuleMainConf};

use crate::conf::{LocConf, MainConf};
use crate::Module;

/// A location with `intermission_on_failure hold`, and its server.
#[repr(C)]
struct Site {
    cscf: *mut ngx_http_core_srv_conf_t,
    clcf: *mut ngx_http_core_loc_conf_t,
}

impl Site {
    /// The location's configuration of this module, merged once the `http` block is read.
    fn lcf(&self) -> Option<&'static LocConf> {
        // SAFETY: the location's configuration array has this module's slot, of this cycle.
        unsafe {
            (*(*self.clcf).loc_conf.add(Module::module().ctx_index)).cast::<LocConf>().as_ref()
        }
    }
}

/// The locations `remember` kept.
fn sites(mcf: &MainConf) -> &[Site] {
    // SAFETY: an array of `Site`s made in `remember`, or null.
    match unsafe { mcf.failure_sites.as_ref() } {
        Some(a) => unsafe { core::slice::from_raw_parts(a.elts.cast(), a.nelts) },
        None => &[],
    }
}

/// Whether some location of scope `i` (configuration index) holds on a failure: only there
/// is a down scope ever checked, and so brought up again.
pub fn holds_scope(mcf: &MainConf, i: usize) -> bool {
    sites(mcf).iter().any(|s| s.lcf().and_then(LocConf::scope) == Some(i))
}

/// The statuses whose error pages are wired: those nginx answers for a failed upstream
/// attempt, and (`http_503`) a backend's 503.
const STATUSES: [u32; 3] = [502, 504, 503];

/// At the directive: remembers the location it is in, wired in `wire`.
pub fn remember(cf: &mut ngx_conf_t) -> Result<(), String> {
    // SAFETY: nginx sets the core module's index before any configuration is read.
    let i = unsafe { ngx_http_core_module.ctx_index };
    // SAFETY: in a location block, `cf.ctx` is the location's HTTP context, whose arrays
    // have a slot for every HTTP module (the server's `srv_conf` shared with it).
    let site = unsafe {
        let ctx = &*cf.ctx.cast::<ngx_http_conf_ctx_t>();
        Site { cscf: (*ctx.srv_conf.add(i)).cast(), clcf: (*ctx.loc_conf.add(i)).cast() }
    };
    let pool = cf.pool;
    let mcf = Module::main_conf_mut(cf).ok_or("has no http configuration")?;
    // SAFETY: arrays of the configuration's pool, of `Site`s.
    unsafe {
        if mcf.failure_sites.is_null() {
            mcf.failure_sites = ngx_array_create(pool, 4, size_of::<Site>());
        }
        let p = mcf.failure_sites.as_mut().map(|a| ngx_array_push(a).cast::<Site>());
        match p {
            Some(p) if !p.is_null() => p.write(site),
            _ => return Err("has no memory".into()),
        }
    }
    Ok(())
}

/// After the `http` block (its locations are final): each remembered location gets its
/// named twin and the error pages that lead there. A location's own `error_page` for 502 or
/// 504 comes first.
pub fn wire(cf: &mut ngx_conf_t, mcf: &MainConf) -> Result<(), String> {
    for (n, site) in sites(mcf).iter().enumerate() {
        let Some(lcf) = site.lcf().filter(|l| l.scope().is_some()) else {
            // SAFETY: a location's name is set when its block is read.
            let loc = unsafe { (*site.clcf).name };
            return Err(format!(
                "hold needs a scope: location \"{}\" has intermission off",
                String::from_utf8_lossy(loc.as_bytes())
            ));
        };
        let statuses = if lcf.fail_503 { &STATUSES[..] } else { &STATUSES[..2] };
        let mut pages = Vec::new();
        for &status in statuses {
            let name = pool_str(cf, format!("@intermission_on_failure_{n}_{status}").as_bytes())?;
            // SAFETY: configuration memory of this cycle; the location's and server's core
            // configurations are complete once the `http` block is parsed and merged.
            unsafe {
                let twin = ngx_pcalloc(cf.pool, size_of::<ngx_http_core_loc_conf_t>())
                    .cast::<ngx_http_core_loc_conf_t>();
                let twin = twin.as_mut().ok_or("has no memory")?;
                twin.name = name;
                twin.set_named(1);
                // What `ngx_http_named_location` takes from it: the location's configuration,
                // but for this module's, which says the twin's status.
                twin.loc_conf = twin_conf(cf, (*site.clcf).loc_conf, lcf, status)?;
                add_named(cf, &mut *site.cscf, twin)?;
            }
            pages.push((status, name));
        }
        // SAFETY: as above.
        unsafe { add_error_pages(cf, &mut *site.clcf, &pages)? };
    }
    Ok(())
}

/// A copy of a location's configuration array whose slot for this module is a copy of
/// `lcf` with `twin_status` set: in the twin, the module knows the request came back from
/// an error page, and for which status.
///
/// # Safety
/// `loc_conf` is a location's array of `ngx_http_max_module` configurations.
unsafe fn twin_conf(
    cf: &ngx_conf_t,
    loc_conf: *mut *mut c_void,
    lcf: &LocConf,
    status: u32,
) -> Result<*mut *mut c_void, String> {
    // SAFETY: the caller's promise; pool memory of this cycle, written before use.
    unsafe {
        let n = ngx_http_max_module;
        let copy = ngx_palloc(cf.pool, n * size_of::<*mut c_void>()).cast::<*mut c_void>();
        let mine = ngx_palloc(cf.pool, size_of::<LocConf>()).cast::<LocConf>();
        if copy.is_null() || mine.is_null() {
            return Err("has no memory".into());
        }
        ptr::copy_nonoverlapping(loc_conf, copy, n);
        // A bitwise copy: its pointers are to this cycle's configuration, as the original's.
        ptr::copy_nonoverlapping(lcf, mine, 1);
        (*mine).twin_status = status;
        *copy.add(Module::module().ctx_index) = mine.cast();
        Ok(copy)
    }
}

fn pool_str(cf: &ngx_conf_t, s: &[u8]) -> Result<ngx_str_t, String> {
    // SAFETY: pool memory of `s.len()` bytes, written once.
    unsafe {
        let p = ngx_pnalloc(cf.pool, s.len()).cast::<u8>();
        if p.is_null() {
            return Err("has no memory".into());
        }
        ptr::copy_nonoverlapping(s.as_ptr(), p, s.len());
        Ok(ngx_str_t { len: s.len(), data: p })
    }
}

/// Appends a named location to the server's null-terminated list, which nginx searches
/// in order.
///
/// # Safety
/// `cscf.named_locations` is null or nginx's null-terminated array.
unsafe fn add_named(
    cf: &ngx_conf_t,
    cscf: &mut ngx_http_core_srv_conf_t,
    twin: *mut ngx_http_core_loc_conf_t,
) -> Result<(), String> {
    let old = cscf.named_locations;
    let mut n = 0;
    // SAFETY: the caller's promise.
    unsafe {
        while !old.is_null() && !(*old.add(n)).is_null() {
            n += 1;
        }
        let new = ngx_palloc(cf.pool, (n + 2) * size_of::<*mut ngx_http_core_loc_conf_t>())
            .cast::<*mut ngx_http_core_loc_conf_t>();
        if new.is_null() {
            return Err("has no memory".into());
        }
        if n > 0 {
            ptr::copy_nonoverlapping(old, new, n);
        }
        *new.add(n) = twin;
        *new.add(n + 1) = null_mut();
        cscf.named_locations = new;
    }
    Ok(())
}

/// Gives the location error pages of its own: what it had (perhaps inherited, an array it
/// shares with its parent), then each status to its twin with `=`, the answer of the retry.
///
/// # Safety
/// `clcf.error_pages` is null or nginx's array of `ngx_http_err_page_t`.
unsafe fn add_error_pages(
    cf: &ngx_conf_t,
    clcf: &mut ngx_http_core_loc_conf_t,
    pages: &[(u32, ngx_str_t)],
) -> Result<(), String> {
    // SAFETY: the caller's promise; a zeroed complex value with no lengths is the constant
    // `value`.
    unsafe {
        let new = ngx_array_create(cf.pool, 4, size_of::<ngx_http_err_page_t>());
        let new = new.as_mut().ok_or("has no memory")?;
        if let Some(old) = clcf.error_pages.as_ref() {
            let pages: &[ngx_http_err_page_t] =
                core::slice::from_raw_parts(old.elts.cast(), old.nelts);
            for p in pages {
                let slot = ngx_array_push(new).cast::<ngx_http_err_page_t>();
                slot.as_mut().ok_or("has no memory")?;
                slot.write(*p);
            }
        }
        for &(status, name) in pages {
            let slot = ngx_array_push(new).cast::<ngx_http_err_page_t>();
            let slot = slot.as_mut().ok_or("has no memory")?;
            *slot = core::mem::zeroed();
            slot.status = status as _;
            slot.overwrite = 0;
            slot.value.value = name;
        }
        clcf.error_pages = new;
    }
    Ok(())
}

/// The status nginx would answer if the request came back from an upstream attempt that
/// failed in a way the location holds; `None` otherwise. Always: nothing of the request
/// reached the backend in any attempt (a 502 or 504 with nothing sent: connection refused,
/// connect timeout, no live upstream). With `idempotent`: a 502 or 504 after sending, for a
/// method nginx would retry. With `http_503`: the backend answered 503 (nginx answers it
/// through the error page only with `proxy_intercept_errors on`). Never once something of
/// the response reached the client. `seen` attempts were made before the current one (a
/// request re-enters its location after its release too, with no new attempt).
pub fn failed_status(r: &ngx_http_request_t, seen: usize, lcf: &LocConf) -> Option<u32> {
    let all = states(r);
    if r.upstream.is_null() || all.len() <= seen || r.header_sent() != 0 {
        return None;
    }
    match all.last()?.status {
        s @ (502 | 504) if nothing_sent(r) || (lcf.fail_idempotent && idempotent(r)) => {
            Some(s as u32)
        }
        503 if lcf.fail_503 => Some(503),
        _ => None,
    }
}

/// Whether the failure happened before anything of the request reached the backend: the
/// backend is not there (rather than one request's trouble).
pub fn nothing_sent(r: &ngx_http_request_t) -> bool {
    // SAFETY: a live request's upstream, null before any attempt.
    let sent = unsafe { r.upstream.as_ref().is_some_and(|u| u.request_sent() != 0) };
    !sent && states(r).iter().all(|s| s.bytes_sent == 0)
}

/// The request's upstream attempts, nginx's `upstream_states` (none before the first).
fn states(r: &ngx_http_request_t) -> &[ngx_http_upstream_state_t] {
    // SAFETY: nginx's array of attempts of a live request, or null.
    unsafe {
        match r.upstream_states.as_ref() {
            Some(a) if a.nelts > 0 => core::slice::from_raw_parts(a.elts.cast(), a.nelts),
            _ => &[],
        }
    }
}

/// The methods nginx's `proxy_next_upstream` sends again without `non_idempotent`.
fn idempotent(r: &ngx_http_request_t) -> bool {
    r.method & (NGX_HTTP_POST | NGX_HTTP_LOCK | NGX_HTTP_PATCH) as usize == 0
}

/// How many upstream attempts the request has made.
pub fn attempts(r: &ngx_http_request_t) -> usize {
    states(r).len()
}

/// Unix ms at which the request arrived.
pub fn arrived_ms(r: &ngx_http_request_t) -> u64 {
    (r.start_sec as u64).saturating_mul(1000) + r.start_msec as u64
}
