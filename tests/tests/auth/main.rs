//! The first-party auth plugins end to end, as attackers and users meet them: one test
//! binary (each links the whole proxy), a module per plugin.

#[path = "../common/mod.rs"]
mod common;

mod basic_auth;
mod forward_auth;
mod jwt;
mod totp_gate;
mod waf;
