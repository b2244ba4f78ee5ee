//! Small wrappers over nginx calls that several parts of the module make.

use ngx::core::Status;
use ngx::ffi::{
    ngx_chain_t, ngx_create_temp_buf, ngx_http_output_filter, ngx_http_request_t,
    ngx_http_send_header, ngx_int_t, ngx_timeofday, NGX_HTTP_GET, NGX_HTTP_HEAD, NGX_HTTP_POST,
    NGX_HTTP_PUT,
};
use ngx::http::Request;

use intermission_core::control::Method;

/// The level of the lines that say a scope's state changed (paused, resumed, auto-resumed,
/// restored from or changed by the state file): `error`, the level of Debian's default
/// `error_log`, where an operator sees them without changing it. They are not errors; the
/// text says what happened.
pub const LOG_STATE: u32 = ngx::ffi::NGX_LOG_ERR;

/// Wall-clock Unix milliseconds from nginx's cached time (no system call).
pub fn now_unix_ms() -> u64 {
    let tp = ngx_timeofday();
    (tp.sec as u64).saturating_mul(1000) + tp.msec as u64
}

/// Milliseconds of `CLOCK_MONOTONIC`, read now: the same clock in every process of the
/// machine, and not nginx's cached time, which each process updates only once per turn of
/// its event loop (a shared bucket refilled from several processes' cached times would gain
/// the difference).
pub fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a plain system call writing into `ts` (vDSO, no kernel entry).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1000) + ts.tv_nsec as u64 / 1_000_000
}

/// Whether a worker process still runs; a worker's gauges count only while it does.
pub fn process_alive(pid: i64) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    // SAFETY: signal 0 checks only that the process exists; nothing is delivered.
    if unsafe { libc::kill(pid, 0) } == 0 {
        return true;
    }
    // EPERM: it exists, under another user (a worker whose master changed users).
    std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

pub fn method(r: &ngx_http_request_t) -> Method {
    match r.method as u32 {
        NGX_HTTP_GET => Method::Get,
        NGX_HTTP_HEAD => Method::Head,
        NGX_HTTP_POST => Method::Post,
        NGX_HTTP_PUT => Method::Put,
        _ => Method::Other,
    }
}

/// Sends a whole JSON answer; returns what the content handler returns to nginx.
pub fn send_json(
    r: &mut ngx_http_request_t,
    status: u16,
    body: &str,
    allow: Option<&str>,
) -> ngx_int_t {
    send(r, status, "application/json", body, allow.map(|a| ("Allow", a)).as_slice())
}

/// Sends a whole answer of this content type (a static string: nginx keeps a pointer), with
/// these headers besides (copied).
pub fn send(
    r: &mut ngx_http_request_t,
    status: u16,
    content_type: &'static str,
    body: &str,
    headers: &[(&str, &str)],
) -> ngx_int_t {
    r.headers_out.status = status.into();
    r.headers_out.content_length_n = body.len() as _;
    r.headers_out.content_type =
        ngx::ffi::ngx_str_t { len: content_type.len(), data: content_type.as_ptr().cast_mut() };
    r.headers_out.content_type_len = r.headers_out.content_type.len;
    // SAFETY: `Request` is a transparent view of the same request.
    let req = unsafe { Request::from_ngx_http_request(r) };
    // Answers about live state must not be cached by anything in between, and a browser
    // takes them for what their Content-Type says, never for a page.
    let always = [("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")];
    for (key, value) in always.iter().chain(headers) {
        if req.add_header_out(key, value).is_none() {
            return Status::NGX_ERROR.into();
        }
    }
    // SAFETY: a request in its content phase, headers not sent yet.
    let rc = unsafe { ngx_http_send_header(r) };
    if rc == Status::NGX_ERROR.into() || rc > Status::NGX_OK.into() || r.header_only() != 0 {
        return rc;
    }
    // SAFETY: a buffer from the request pool, filled within its size, chained once.
    unsafe {
        let b = ngx_create_temp_buf(r.pool, body.len());
        let Some(b) = b.as_mut() else {
            return Status::NGX_ERROR.into();
        };
        core::ptr::copy_nonoverlapping(body.as_ptr(), b.last, body.len());
        b.last = b.last.add(body.len());
        b.set_last_buf(u32::from(core::ptr::eq(r.main, r)));
        b.set_last_in_chain(1);
        let mut out = ngx_chain_t { buf: b, next: core::ptr::null_mut() };
        ngx_http_output_filter(r, &mut out)
    }
}
