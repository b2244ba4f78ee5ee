//! Pure logic of `ngx_http_intermission_module`: nothing here calls nginx, so `cargo test`
//! reaches all of it. The module's FFI glue (the crate at the repository root) places
//! [`shared::Shared`] in an nginx shared zone and feeds control requests to [`control`].

pub mod control;
pub mod cross_site;
pub mod json;
pub mod metrics;
pub mod scope_name;
pub mod sha256;
pub mod shared;
pub mod state_file;
pub mod text;
pub mod time;
pub mod ui;
