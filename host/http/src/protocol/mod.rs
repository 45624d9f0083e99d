//! The protocol layer: what is true of HTTP whatever is proxied. `wire` holds the
//! HTTP/1.1 framing rules both sides use (the server reading requests and writing
//! responses, the upstream client writing requests and reading responses). Nothing
//! here knows of routes, plugins or upstream pools.

pub mod body;
pub mod raw_fields;
pub mod upgrade;
pub mod wire;
