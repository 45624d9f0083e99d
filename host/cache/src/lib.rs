//! The response cache (RFC 9111) the proxy consults for routes that opt in.
//!
//! `policy` decides what may be stored and for how long, from the request and the
//! response alone; `entry` is a stored response and its age; `zone` holds entries in
//! memory within a byte budget and lets one fill run per key (`coalesce`); `serve`
//! answers a request from an entry (conditionals, ranges, `Age`, `Cache-Status`);
//! `fill` collects a response body into an entry as it streams to the client.

pub mod control;
pub mod disk;
pub mod entry;
pub mod fill;
pub mod key;
pub mod metrics;
pub mod policy;
pub mod serve;
pub mod zone;

pub use entry::Entry;
pub use fill::Fill;
pub use metrics::CacheCounters;
pub use zone::{Lookup, Zone, Zones};
