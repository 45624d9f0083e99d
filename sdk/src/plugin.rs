use serde::de::DeserializeOwned;

use crate::{Client, Reply, Request, Response};

/// A Sluice plugin.
///
/// Lifecycle: [`new`](Plugin::new) runs **once** per route config, when the proxy loads
/// the plugin; the host snapshots the result, and every request runs in a fresh copy of
/// it. `self` is therefore read-only config-derived state (parsed config, compiled
/// regexes). Data a request carries from [`on_request`](Plugin::on_request) to
/// [`on_response`](Plugin::on_response) goes in the per-request
/// [`Context`](Plugin::Context), which starts as `Context::default()` for every request.
///
/// Put `#[sluice_sdk::plugin]` on the `impl Plugin for ..` block: it tells the host which
/// hooks you wrote (the host calls only those) and supplies `type Context = ();` when you
/// need none.
pub trait Plugin: Sized + 'static {
    /// The route's `config` table, deserialized from JSON. Absent config arrives as `{}`.
    /// Use [`NoConfig`] for a plugin that takes none.
    type Config: DeserializeOwned;

    /// Per-request data carried from `on_request` to `on_response`; a fresh
    /// `Default::default()` for every request. `()` (what `#[plugin]` supplies) for none.
    type Context: Default + 'static;

    /// The hooks this plugin implements. Written by `#[sluice_sdk::plugin]` from the
    /// methods in the impl block; the host never calls a hook that is not listed.
    const HOOKS: Hooks;

    /// The hooks this plugin runs with its config: [`HOOKS`](Plugin::HOOKS) unless
    /// overridden. Leave out `on_response` when a config has nothing for it to do, so
    /// the host frees the instance before the request goes upstream. Hooks missing from
    /// `HOOKS` are never added.
    fn hooks(&self) -> Hooks {
        Self::HOOKS
    }

    /// Checks the config and builds the plugin, once per route config. An `Err` fails the
    /// plugin's load with that message (the proxy refuses the config). Wall-clock time
    /// read here is the load's time, not a request's.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// Inspects or rewrites the request, or answers it directly. The default passes it on.
    fn on_request(&self, ctx: &mut Self::Context, client: &Client, req: &mut Request) -> Action {
        let _ = (ctx, client, req);
        Action::Continue
    }

    /// Inspects or rewrites the upstream's status and headers. Runs only if this plugin's
    /// `on_request` returned [`Action::Continue`] (or it has no `on_request`), with the
    /// same `ctx`. The default passes the response on.
    fn on_response(&self, ctx: &mut Self::Context, resp: &mut Response) -> ResponseAction {
        let _ = (ctx, resp);
        ResponseAction::Continue
    }

    /// Parses `json` as [`Config`](Plugin::Config) and calls [`new`](Plugin::new), exactly
    /// as the host's `init` does. Handy in unit tests.
    fn from_json(json: &str) -> Result<Self, String> {
        // The host sends "{}" for no config; treat a blank string the same.
        let json = if json.trim().is_empty() { "{}" } else { json };
        let config = serde_json::from_str(json).map_err(|e| format!("invalid config: {e}"))?;
        Self::new(config)
    }
}

/// Which hooks a plugin implements (see [`Plugin::HOOKS`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hooks {
    /// The plugin has `on_request`.
    pub on_request: bool,
    /// The plugin has `on_response`.
    pub on_response: bool,
}

/// What [`Plugin::on_request`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Pass the (possibly changed) request on to the next plugin, then the upstream.
    Continue,
    /// Answer the client now; later plugins and the upstream are skipped.
    Respond(Reply),
}

impl From<Reply> for Action {
    fn from(r: Reply) -> Self {
        Action::Respond(r)
    }
}

/// What [`Plugin::on_response`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseAction {
    /// Send the (possibly changed) status and headers with the upstream body.
    Continue,
    /// Send this response instead, discarding the upstream body.
    Replace(Reply),
}

impl From<Reply> for ResponseAction {
    fn from(r: Reply) -> Self {
        ResponseAction::Replace(r)
    }
}

/// Config type for plugins that take no config: accepts `{}` only, so a stray key is
/// reported instead of ignored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

/// Glue used by [`export_plugin!`](crate::export_plugin); not part of the API.
#[doc(hidden)]
pub mod __private {
    use std::cell::RefCell;
    use std::thread::LocalKey;

    pub use crate::bindings::sluice::plugin::types::{
        ClientInfo, Forward, Hooks as WitHooks, RequestAction, RequestHead,
        ResponseAction as WitResponseAction, ResponseHead,
    };
    pub use crate::bindings::Guest;
    pub use std::string::String;

    use super::{Action, Plugin, ResponseAction};
    use crate::{Client, Request, Response};

    /// What one instance keeps between export calls: the plugin built by `init`, and the
    /// context of the request in progress (between `on-request` and `on-response`).
    pub struct State<P: Plugin> {
        plugin: Option<P>,
        context: Option<P::Context>,
    }

    impl<P: Plugin> State<P> {
        pub const fn new() -> Self {
            Self {
                plugin: None,
                context: None,
            }
        }
    }

    /// Where the state lives between the export calls of one instance.
    pub type Slot<P> = RefCell<State<P>>;

    pub fn hooks<P: Plugin>(plugin: &P) -> WitHooks {
        let wanted = plugin.hooks();
        let mut hooks = WitHooks::empty();
        if P::HOOKS.on_request && wanted.on_request {
            hooks |= WitHooks::ON_REQUEST;
        }
        if P::HOOKS.on_response && wanted.on_response {
            hooks |= WitHooks::ON_RESPONSE;
        }
        hooks
    }

    pub fn init<P: Plugin>(
        slot: &'static LocalKey<Slot<P>>,
        config: String,
    ) -> Result<WitHooks, String> {
        let plugin = P::from_json(&config)?;
        let hooks = hooks(&plugin);
        slot.with(|s| {
            let mut s = s.borrow_mut();
            s.plugin = Some(plugin);
            s.context = None;
        });
        Ok(hooks)
    }

    pub fn on_request<P: Plugin>(
        slot: &'static LocalKey<Slot<P>>,
        client: ClientInfo,
        head: RequestHead,
    ) -> RequestAction {
        slot.with(|s| {
            let mut s = s.borrow_mut();
            let state = &mut *s;
            // The host always runs init first (before its snapshot); without it there is
            // nothing sane to do, so trap and let the host's on_error policy decide.
            let Some(plugin) = state.plugin.as_ref() else {
                panic!("sluice-sdk: on-request called before init")
            };
            let mut ctx = P::Context::default();
            let action = run_request(plugin, &mut ctx, client, head);
            // Kept only for this request's on-response, never for a later request.
            state.context = match (&action, plugin.hooks().on_response) {
                (RequestAction::Continue(_), true) => Some(ctx),
                _ => None,
            };
            action
        })
    }

    pub fn on_response<P: Plugin>(
        slot: &'static LocalKey<Slot<P>>,
        head: ResponseHead,
    ) -> WitResponseAction {
        slot.with(|s| {
            let mut s = s.borrow_mut();
            let state = &mut *s;
            let Some(plugin) = state.plugin.as_ref() else {
                panic!("sluice-sdk: on-response called before init")
            };
            let mut ctx = state.context.take().unwrap_or_default();
            run_response(plugin, &mut ctx, head)
        })
    }

    pub fn run_request<P: Plugin>(
        plugin: &P,
        ctx: &mut P::Context,
        client: ClientInfo,
        head: RequestHead,
    ) -> RequestAction {
        let client = Client::from(client);
        let mut req = Request::from(head);
        match plugin.on_request(ctx, &client, &mut req) {
            Action::Continue => {
                let (request, upstream, hash_key) = req.into_parts();
                RequestAction::Continue(Forward {
                    request,
                    upstream,
                    hash_key,
                })
            }
            Action::Respond(reply) => RequestAction::Respond(reply.into_wit()),
        }
    }

    pub fn run_response<P: Plugin>(
        plugin: &P,
        ctx: &mut P::Context,
        head: ResponseHead,
    ) -> WitResponseAction {
        let mut resp = Response::from(head);
        match plugin.on_response(ctx, &mut resp) {
            ResponseAction::Continue => WitResponseAction::Continue(resp.into_head()),
            ResponseAction::Replace(reply) => WitResponseAction::Replace(reply.into_wit()),
        }
    }
}

/// Exports a [`Plugin`] type as the component's `sluice:plugin/plugin` world.
/// Use it exactly once, at the crate root of a `cdylib` crate.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            ::std::thread_local! {
                static __SLUICE_PLUGIN: $crate::__private::Slot<$plugin> =
                    const { ::core::cell::RefCell::new($crate::__private::State::new()) };
            }

            struct __SluiceGuest;

            impl $crate::__private::Guest for __SluiceGuest {
                fn init(
                    config: $crate::__private::String,
                ) -> ::core::result::Result<$crate::__private::WitHooks, $crate::__private::String>
                {
                    $crate::__private::init::<$plugin>(&__SLUICE_PLUGIN, config)
                }

                fn on_request(
                    client: $crate::__private::ClientInfo,
                    request: $crate::__private::RequestHead,
                ) -> $crate::__private::RequestAction {
                    $crate::__private::on_request::<$plugin>(&__SLUICE_PLUGIN, client, request)
                }

                fn on_response(
                    response: $crate::__private::ResponseHead,
                ) -> $crate::__private::WitResponseAction {
                    $crate::__private::on_response::<$plugin>(&__SLUICE_PLUGIN, response)
                }
            }

    $crate::bindings::__export_world!(__SluiceGuest with_types_in $crate::bindings);
        };
    };
}
