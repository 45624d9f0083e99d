//! What every layer of the host uses and none owns: the coarse monotonic clock,
//! rate-limited logging, an IP address's text, civil dates.

pub mod civil;
pub mod clock;
pub mod ip_text;
pub mod repeat_log;
