//! The HTTP layer: the wire rules both engines share (`protocol`), the client-facing
//! servers (`server`: Sluice's own HTTP/1.x engine and hyper's HTTP/2) and TLS
//! acceptance (`tls`). It knows nothing of routes, plugins or pools: the pipeline it
//! serves is a [`server::Handler`].

pub mod counters;
pub mod protocol;
pub mod server;
pub mod tls;
