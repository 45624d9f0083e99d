//! The proxy's response cache, on routes with a `cache` table (elsewhere these calls
//! change nothing). Call them from `on_request`; a later plugin's call wins.
//!
//! ```no_run
//! // Responses differ by tenant: key them by it (scheme, host and target stay in the key).
//! sluice_sdk::cache::set_key("tenant-42");
//! // Or keep this request out of the cache altogether.
//! sluice_sdk::cache::bypass();
//! ```

/// Keys this request's stored response by `key` instead of the route's `key` items.
/// At most 1024 bytes; a longer key bypasses the cache.
pub fn set_key(key: &str) {
    imp::set_key(key)
}

/// Neither answers this request from the cache nor stores its response.
pub fn bypass() {
    imp::bypass()
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use crate::bindings::sluice::plugin::response_cache as wit;

    pub fn set_key(key: &str) {
        wit::set_key(key)
    }

    pub fn bypass() {
        wit::bypass()
    }
}

// Off wasm (plugin unit tests on the build machine) there is no cache to tell.
#[cfg(not(target_arch = "wasm32"))]
mod imp {
    pub fn set_key(_: &str) {}

    pub fn bypass() {}
}
