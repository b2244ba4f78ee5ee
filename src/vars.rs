//! Variables: `$intermission_held_ms`, `$intermission_result`, `$intermission_paused`.

use ngx::core::Status;
use ngx::ffi::{
    ngx_conf_t, ngx_http_add_variable, ngx_http_request_t, ngx_http_variable_value_t, ngx_int_t,
    ngx_pnalloc, ngx_str_t, ngx_uint_t, NGX_HTTP_VAR_NOCACHEABLE,
};
use ngx::ngx_string;

use crate::conf;
use crate::runtime as worker;
use crate::runtime::request::{self, Outcome};

type Getter = unsafe extern "C" fn(
    *mut ngx_http_request_t,
    *mut ngx_http_variable_value_t,
    usize,
) -> ngx_int_t;

const VARIABLES: [(ngx_str_t, Getter); 3] = [
    (ngx_string!("intermission_held_ms"), held_ms),
    (ngx_string!("intermission_result"), result),
    (ngx_string!("intermission_paused"), paused),
];

/// Adds the variables (preconfiguration, so that `log_format` and `map` can name them).
pub fn add(cf: &mut ngx_conf_t) -> ngx_int_t {
    for (name, get) in VARIABLES {
        let mut name = name;
        // SAFETY: called while nginx reads the configuration; nginx copies the name.
        let v =
            unsafe { ngx_http_add_variable(cf, &mut name, NGX_HTTP_VAR_NOCACHEABLE as ngx_uint_t) };
        // SAFETY: null or a variable nginx owns for the cycle's life.
        let Some(v) = (unsafe { v.as_mut() }) else {
            return Status::NGX_ERROR.0;
        };
        v.get_handler = Some(get);
    }
    Status::NGX_OK.0
}

/// Sets a variable's value to bytes that outlive the request.
fn set(v: &mut ngx_http_variable_value_t, bytes: &'static [u8]) {
    v.data = bytes.as_ptr().cast_mut();
    v.set_len(bytes.len() as u32);
    v.set_valid(1);
    v.set_no_cacheable(1);
    v.set_not_found(0);
}

/// How long the request was held, in ms; 0 if it was not.
unsafe extern "C" fn held_ms(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes a live request and its variable slot.
    let (r, v) = unsafe { (&mut *r, &mut *v) };
    let ms = request::find(r).map_or(0, |found| found.held_for());
    let text = ms.to_string();
    // SAFETY: a buffer of `text.len()` bytes from the request pool, filled within its size.
    unsafe {
        let p = ngx_pnalloc(r.pool, text.len()).cast::<u8>();
        if p.is_null() {
            return Status::NGX_ERROR.0;
        }
        core::ptr::copy_nonoverlapping(text.as_ptr(), p, text.len());
        v.data = p;
    }
    v.set_len(text.len() as u32);
    v.set_valid(1);
    v.set_no_cacheable(1);
    v.set_not_found(0);
    Status::NGX_OK.0
}

/// `pass`, `bypass`, `released`, `timeout`, `rejected` or `aborted`; not found for a request
/// that did not go through an intermission location.
unsafe extern "C" fn result(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes a live request and its variable slot.
    let (r, v) = unsafe { (&mut *r, &mut *v) };
    match request::find(r) {
        Some(found) => set(v, outcome_bytes(found.outcome())),
        None => v.set_not_found(1),
    }
    Status::NGX_OK.0
}

fn outcome_bytes(o: Outcome) -> &'static [u8] {
    o.as_str().as_bytes()
}

/// `1` while the location's scope is paused, else `0`.
unsafe extern "C" fn paused(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes a live request and its variable slot.
    let (r, v) = unsafe { (&mut *r, &mut *v) };
    let on = match (conf::loc_conf(r).and_then(|l| l.scope()), worker::get()) {
        (Some(i), Some(w)) => w.scope(i).is_paused(),
        _ => false,
    };
    set(v, if on { b"1" } else { b"0" });
    Status::NGX_OK.0
}
