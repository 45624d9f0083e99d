//! Write Sluice proxy plugins in Rust.
//!
//! A plugin is a `cdylib` crate built for `wasm32-wasip2`. It implements [`Plugin`] and
//! names its type in [`export_plugin!`]; the SDK does the WIT plumbing.
//!
//! ```no_run
//! use sluice_sdk::prelude::*;
//!
//! #[config]
//! #[derive(Default)]
//! struct Config { header: String }
//!
//! struct AddHeader { cfg: Config }
//!
//! #[plugin]
//! impl Plugin for AddHeader {
//!     type Config = Config;
//!     fn new(cfg: Config) -> Result<Self, String> { Ok(Self { cfg }) }
//!     fn on_request(&self, _: &mut (), _c: &Client, req: &mut Request) -> Action {
//!         req.set_header(&self.cfg.header, "1");
//!         Action::Continue
//!     }
//! }
//!
//! sluice_sdk::export_plugin!(AddHeader);
//! ```
//!
//! See the crate's README for the build steps, the lifecycle and the limits.

#![warn(missing_docs)]

// Lets `#[config]` (which names `::sluice_sdk`) work inside this crate's own tests.
extern crate self as sluice_sdk;

/// Generated WIT bindings; not part of the API (their shape follows wit-bindgen).
#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "plugin",
        // export_plugin! expands in the plugin crate and names these by absolute path.
        pub_export_macro: true,
        export_macro_name: "__export_world",
        default_bindings_module: "sluice_sdk::bindings",
    });
}

mod body;
pub mod cache;
pub mod crypto;
mod headers;
pub mod log;
pub mod metrics;
pub mod outbound;
mod plugin;
mod request;
mod response;
pub mod state;
pub mod time;

pub use body::Body;
pub use headers::{Headers, IntoBytes};
#[doc(hidden)]
pub use plugin::__private;
pub use plugin::{Action, BodyLimits, Hooks, NoConfig, Oversize, Plugin, ResponseAction};
pub use request::{form_decode, parse_query, Client, ClientCert, Request};
pub use response::{Reply, Response};
pub use time::{monotonic_ns, now_ms};

/// Derives `Deserialize` for a config type through the SDK's own serde, so the plugin
/// crate needs no serde dependency. Put it above the other attributes (a plain
/// `#[derive(Deserialize)]` without it fails: serde's derive wants a `serde` crate):
///
/// ```no_run
/// # use sluice_sdk::prelude::*;
/// #[config]
/// #[derive(Debug)]
/// #[serde(deny_unknown_fields)]
/// struct Config {
///     #[serde(default)]
///     strip: bool,
/// }
/// ```
pub use sluice_sdk_macros::config;

/// Put on the `impl Plugin for T` block: declares the hooks the block defines
/// ([`Plugin::HOOKS`]) and supplies `type Context = ();` when the block has none.
///
/// ```no_run
/// # use sluice_sdk::prelude::*;
/// struct Stamp;
///
/// #[plugin]
/// impl Plugin for Stamp {
///     type Config = NoConfig;
///     type Context = u64; // start time, from on_request to on_response
///     fn new(_: NoConfig) -> Result<Self, String> { Ok(Self) }
///     fn on_request(&self, start: &mut u64, _: &Client, _: &mut Request) -> Action {
///         *start = sluice_sdk::monotonic_ns();
///         Action::Continue
///     }
///     fn on_response(&self, start: &mut u64, resp: &mut Response) -> ResponseAction {
///         let us = (sluice_sdk::monotonic_ns() - *start) / 1000;
///         resp.set_header("x-took-us", us.to_string());
///         ResponseAction::Continue
///     }
/// }
/// ```
pub use sluice_sdk_macros::plugin;

/// serde, for `#[serde(..)]` attributes and hand-written impls.
pub use serde;
/// serde_json, e.g. `serde_json::json!` for [`Reply::json`].
pub use serde_json;

/// Everything a plugin usually needs: `use sluice_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::log;
    // For `#[config] #[derive(Deserialize, ..)]`; a bare derive needs `#[config]` too.
    pub use crate::serde::Deserialize;
    pub use crate::serde_json::json;
    pub use crate::{
        config, plugin, Action, Body, BodyLimits, Client, Headers, Hooks, NoConfig, Oversize,
        Plugin, Reply, Request, Response, ResponseAction,
    };
}

#[cfg(test)]
mod tests {
    use crate::__private::{run_request, run_response, ClientInfo, RequestAction, RequestHead};
    use crate::__private::{ResponseHead, WitResponseAction};
    use crate::prelude::*;

    #[config]
    #[derive(Debug, Default)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        #[serde(default)]
        header: String,
        #[serde(default)]
        deny: bool,
    }

    struct P {
        cfg: Cfg,
    }

    #[plugin]
    impl Plugin for P {
        type Config = Cfg;
        /// Counts calls within one request.
        type Context = u32;
        fn new(cfg: Cfg) -> Result<Self, String> {
            if cfg.header == "bad" {
                return Err("header must not be bad".into());
            }
            Ok(Self { cfg })
        }
        fn on_request(&self, calls: &mut u32, client: &Client, req: &mut Request) -> Action {
            *calls += 1;
            if self.cfg.deny {
                return Reply::text(403, "no").into();
            }
            req.set_header(&self.cfg.header, client.ip());
            req.set_upstream("other");
            Action::Continue
        }
        fn on_response(&self, calls: &mut u32, resp: &mut Response) -> ResponseAction {
            *calls += 1;
            resp.set_status(resp.status() + *calls as u16);
            ResponseAction::Continue
        }
    }

    struct RequestOnly;

    #[plugin]
    impl Plugin for RequestOnly {
        type Config = NoConfig;
        fn new(_: NoConfig) -> Result<Self, String> {
            Ok(Self)
        }
        fn on_request(&self, _: &mut (), _: &Client, _: &mut Request) -> Action {
            Action::Continue
        }
    }

    #[test]
    fn plugin_attribute_declares_the_hooks_written() {
        assert_eq!(
            P::HOOKS,
            Hooks {
                on_request: true,
                on_response: true,
                ..Hooks::default()
            }
        );
        assert_eq!(
            RequestOnly::HOOKS,
            Hooks {
                on_request: true,
                ..Hooks::default()
            }
        );
    }

    fn head() -> RequestHead {
        RequestHead {
            method: "GET".into(),
            path: "/".into(),
            query: String::new(),
            headers: vec![("host".into(), b"h".to_vec())],
        }
    }

    fn client() -> ClientInfo {
        ClientInfo {
            ip: "10.0.0.1".into(),
            scheme: "http".into(),
            route: "r".into(),
            sni: None,
            alpn: None,
            client_cert: None,
        }
    }

    #[test]
    fn config_errors_are_prefixed() {
        let e = P::from_json(r#"{"nope": 1}"#).err().unwrap_or_default();
        assert!(e.starts_with("invalid config: unknown field `nope`"), "{e}");
        let e = P::from_json(r#"{"header": 5}"#).err().unwrap_or_default();
        assert!(e.starts_with("invalid config: "), "{e}");
        let e = P::from_json(r#"{"header": "bad"}"#)
            .err()
            .unwrap_or_default();
        assert_eq!(e, "header must not be bad");
        assert!(P::from_json("").is_ok());
    }

    #[test]
    fn continue_carries_changes_and_upstream() {
        let p = P::from_json(r#"{"header": "X-IP"}"#).expect("config");
        let mut calls = 0;
        match run_request(&p, &mut calls, client(), head()) {
            RequestAction::Continue(f) => {
                assert_eq!(f.upstream.as_deref(), Some("other"));
                assert!(f
                    .request
                    .headers
                    .contains(&("x-ip".into(), b"10.0.0.1".to_vec())));
            }
            RequestAction::Respond(_) => panic!("expected continue"),
        }
        let resp = ResponseHead {
            status: 200,
            headers: vec![],
        };
        // The context carries the request's count into on_response: 200 + 2.
        match run_response(&p, &mut calls, resp) {
            WitResponseAction::Continue(h) => assert_eq!(h.status, 202),
            WitResponseAction::Replace(_) => panic!("expected continue"),
        }
    }

    #[test]
    fn respond() {
        let p = P::from_json(r#"{"deny": true}"#).expect("config");
        match run_request(&p, &mut 0, client(), head()) {
            RequestAction::Respond(r) => {
                assert_eq!((r.status, r.body.as_slice()), (403, &b"no"[..]))
            }
            RequestAction::Continue(_) => panic!("expected respond"),
        }
    }

    /// Explicit derive, doc comments and a serde attribute before `#[derive]`.
    #[config]
    /// Docs first.
    #[serde(default)]
    #[derive(Debug, Deserialize, Default, PartialEq)]
    struct Explicit {
        a: u8,
    }

    #[config]
    #[derive(Debug, PartialEq)]
    #[serde(rename_all = "snake_case", deny_unknown_fields)]
    enum Mode {
        Fast,
        Careful { level: u8 },
    }

    #[test]
    fn config_attribute_forms() {
        let e: Explicit = serde_json::from_str("{}").expect("explicit");
        assert_eq!(e, Explicit { a: 0 });
        let m: Mode = serde_json::from_str(r#""fast""#).expect("unit variant");
        assert_eq!(m, Mode::Fast);
        let m: Mode = serde_json::from_str(r#"{"careful": {"level": 2}}"#).expect("struct variant");
        assert_eq!(m, Mode::Careful { level: 2 });
    }

    #[test]
    fn no_config_rejects_keys() {
        let ok: Result<NoConfig, _> = serde_json::from_str("{}");
        assert!(ok.is_ok());
        let bad: Result<NoConfig, _> = serde_json::from_str(r#"{"a":1}"#);
        assert!(bad.is_err());
    }

    /// Reads bodies only: two later hooks and no `on_request` of its own.
    struct Bodies;

    #[plugin]
    impl Plugin for Bodies {
        type Config = NoConfig;
        type Context = usize;
        fn new(_: NoConfig) -> Result<Self, String> {
            Ok(Self)
        }
        fn body_limits(&self) -> BodyLimits {
            BodyLimits {
                request_max: 10,
                response_oversize: Oversize::Fail,
                ..BodyLimits::default()
            }
        }
        fn on_request_body(&self, seen: &mut usize, _: &Request, body: &mut Body) -> Action {
            *seen = body.len();
            match body.text() {
                Some("deny") => Reply::text(422, "no").into(),
                Some("swap") => {
                    body.set("swapped");
                    Action::Continue
                }
                _ => Action::Continue,
            }
        }
        fn on_response_body(
            &self,
            seen: &mut usize,
            _: &Response,
            body: &mut Body,
        ) -> ResponseAction {
            body.set(format!("{seen}"));
            ResponseAction::Continue
        }
    }

    #[test]
    fn body_hooks_replace_refuse_and_declare_their_limits() {
        use crate::__private::{
            declaration, run_request_body, run_response_body, RequestBodyAction,
            ResponseBodyAction, WitHooks, WitOversize,
        };
        let p = Bodies::from_json("{}").expect("config");
        let declared = declaration(&p);
        assert_eq!(declared.request_body_max, 10);
        assert!(matches!(declared.response_oversize, WitOversize::Fail));
        // Two later hooks: a default on-request is declared so the context starts fresh.
        assert!(declared.hooks.contains(WitHooks::ON_REQUEST));
        assert!(declared.hooks.contains(WitHooks::ON_REQUEST_BODY));
        assert!(declared.hooks.contains(WitHooks::ON_RESPONSE_BODY));
        assert!(!declared.hooks.contains(WitHooks::ON_RESPONSE));
        let mut seen = 0;
        match run_request_body(&p, &mut seen, head(), b"swap".to_vec()) {
            RequestBodyAction::Replace(new) => assert_eq!(new, b"swapped"),
            _ => panic!("expected a replaced body"),
        }
        assert!(matches!(
            run_request_body(&p, &mut seen, head(), b"keep".to_vec()),
            RequestBodyAction::Continue
        ));
        match run_request_body(&p, &mut seen, head(), b"deny".to_vec()) {
            RequestBodyAction::Respond(r) => assert_eq!(r.status, 422),
            _ => panic!("expected an answer"),
        }
        let resp = ResponseHead {
            status: 200,
            headers: vec![],
        };
        match run_response_body(&p, &mut seen, resp, b"x".to_vec()) {
            ResponseBodyAction::Replace(new) => assert_eq!(new, b"4", "the context carried"),
            _ => panic!("expected a replaced body"),
        }
    }
}
