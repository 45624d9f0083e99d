use serde::de::DeserializeOwned;

use crate::{Body, Client, Reply, Request, Response};

/// A Sluice plugin.
///
/// Lifecycle: [`new`](Plugin::new) runs **once** per route config, when the proxy loads
/// the plugin; the host snapshots the result, and every request runs in a fresh copy of
/// it. `self` is therefore read-only config-derived state (parsed config, compiled
/// regexes). Data a request carries from [`on_request`](Plugin::on_request) to its
/// later hooks goes in the per-request [`Context`](Plugin::Context), which starts as
/// `Context::default()` for every request.
///
/// Hooks run in this order for a request: `on_request` (route order), then
/// `on_request_body` (route order), the upstream, `on_response` (reverse route order),
/// then `on_response_body` (reverse route order).
///
/// Put `#[sluice_sdk::plugin]` on the `impl Plugin for ..` block: it tells the host which
/// hooks you wrote (the host calls only those) and supplies `type Context = ();` when you
/// need none.
pub trait Plugin: Sized + 'static {
    /// The route's `config` table, deserialized from JSON. Absent config arrives as `{}`.
    /// Use [`NoConfig`] for a plugin that takes none.
    type Config: DeserializeOwned;

    /// Per-request data carried from `on_request` to the later hooks; a fresh
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

    /// How much of a body the body hooks read (see [`BodyLimits`]); the host's default
    /// size unless overridden.
    fn body_limits(&self) -> BodyLimits {
        BodyLimits::default()
    }

    /// Reads the whole request body (after every plugin's `on_request`), and may
    /// replace it ([`Body::set`]) or answer instead ([`Action::Respond`]). `req` is the
    /// request as it goes upstream (read-only here). Not called when `on_request`
    /// called [`Request::skip_body`]. A body over the limit never gets here: the
    /// client is answered `413`.
    fn on_request_body(&self, ctx: &mut Self::Context, req: &Request, body: &mut Body) -> Action {
        let _ = (ctx, req, body);
        Action::Continue
    }

    /// Reads the whole response body (after every `on_response`), and may replace it
    /// ([`Body::set`]) or the whole response ([`ResponseAction::Replace`]). Not called
    /// for responses without a body (`HEAD`, `204`, `304`), nor for a body over the
    /// limit (see [`Oversize`]).
    fn on_response_body(
        &self,
        ctx: &mut Self::Context,
        resp: &Response,
        body: &mut Body,
    ) -> ResponseAction {
        let _ = (ctx, resp, body);
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
    /// The plugin has `on_request_body`: the host buffers request bodies for it.
    pub on_request_body: bool,
    /// The plugin has `on_response_body`: the host buffers response bodies for it.
    pub on_response_body: bool,
}

/// How much of a body a plugin's body hooks read. 0 means the host's default
/// (`[plugins] body_max_bytes`, 1 MiB); a route's `body_max_bytes` may lower a limit and
/// `[plugins] body_ceiling_bytes` caps it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BodyLimits {
    /// Largest request body read; a larger one is answered `413`.
    pub request_max: u64,
    /// Largest response body read.
    pub response_max: u64,
    /// What a larger response body does.
    pub response_oversize: Oversize,
}

/// What the host does with a response body over [`BodyLimits::response_max`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Oversize {
    /// Send it on unread: `on_response_body` is not called for it.
    #[default]
    PassUnread,
    /// Answer `502` instead (a filter that must see every body it lets pass).
    Fail,
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
        ClientInfo, Declaration, Forward, Hooks as WitHooks, Oversize as WitOversize,
        RequestAction, RequestBodyAction, RequestHead, ResponseAction as WitResponseAction,
        ResponseBodyAction, ResponseHead,
    };
    pub use crate::bindings::Guest;
    pub use std::string::String;

    use super::{Action, Hooks, Oversize, Plugin, ResponseAction};
    use crate::{Body, Client, Request, Response};

    /// What one instance keeps between export calls: the plugin built by `init`, and the
    /// context of the request in progress (from `on-request` to its last hook).
    pub struct State<P: Plugin> {
        plugin: Option<P>,
        context: Option<P::Context>,
    }

    impl<P: Plugin> State<P> {
        // `const` for the export macro's static; `Default` cannot be const.
        #[allow(clippy::new_without_default)]
        pub const fn new() -> Self {
            Self {
                plugin: None,
                context: None,
            }
        }
    }

    /// Where the state lives between the export calls of one instance.
    pub type Slot<P> = RefCell<State<P>>;

    /// The hooks the plugin runs: written (`HOOKS`) and wanted with its config.
    fn effective<P: Plugin>(plugin: &P) -> Hooks {
        let (written, wanted) = (P::HOOKS, plugin.hooks());
        Hooks {
            on_request: written.on_request && wanted.on_request,
            on_response: written.on_response && wanted.on_response,
            on_request_body: written.on_request_body && wanted.on_request_body,
            on_response_body: written.on_response_body && wanted.on_response_body,
        }
    }

    /// Whether one of the plugin's hooks runs after `hook` (in the order on_request,
    /// on_request_body, on_response, on_response_body): the context is kept for it.
    fn runs_after(hooks: Hooks, hook: usize) -> bool {
        let order = [
            hooks.on_request,
            hooks.on_request_body,
            hooks.on_response,
            hooks.on_response_body,
        ];
        order.iter().skip(hook + 1).any(|&h| h)
    }

    pub fn hooks<P: Plugin>(plugin: &P) -> WitHooks {
        let hooks = effective(plugin);
        let mut wit = WitHooks::empty();
        let later = [
            hooks.on_request_body,
            hooks.on_response,
            hooks.on_response_body,
        ];
        // With two later hooks the context must start fresh for each request: an
        // `on-request` (the default one, which passes) resets it, since a request that
        // ends early would otherwise leave it to the next (reuse mode).
        if hooks.on_request || later.iter().filter(|&&h| h).count() >= 2 {
            wit |= WitHooks::ON_REQUEST;
        }
        if hooks.on_response {
            wit |= WitHooks::ON_RESPONSE;
        }
        if hooks.on_request_body {
            wit |= WitHooks::ON_REQUEST_BODY;
        }
        if hooks.on_response_body {
            wit |= WitHooks::ON_RESPONSE_BODY;
        }
        wit
    }

    /// What `init` declares for the plugin.
    pub fn declaration<P: Plugin>(plugin: &P) -> Declaration {
        let limits = plugin.body_limits();
        Declaration {
            hooks: hooks(plugin),
            request_body_max: limits.request_max,
            response_body_max: limits.response_max,
            response_oversize: match limits.response_oversize {
                Oversize::PassUnread => WitOversize::PassUnread,
                Oversize::Fail => WitOversize::Fail,
            },
        }
    }

    pub fn init<P: Plugin>(
        slot: &'static LocalKey<Slot<P>>,
        config: String,
    ) -> Result<Declaration, String> {
        let plugin = P::from_json(&config)?;
        let declaration = declaration(&plugin);
        slot.with(|s| {
            let mut s = s.borrow_mut();
            s.plugin = Some(plugin);
            s.context = None;
        });
        Ok(declaration)
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
            // Kept only for this request's later hooks, never for a later request.
            state.context = match (&action, runs_after(effective(plugin), 0)) {
                (RequestAction::Continue(_), true) => Some(ctx),
                _ => None,
            };
            action
        })
    }

    /// Runs a later hook (1: request body, 2: response, 3: response body) with the
    /// request's context, kept afterwards only when another hook follows.
    fn with_context<P: Plugin, T>(
        slot: &'static LocalKey<Slot<P>>,
        hook: usize,
        run: impl FnOnce(&P, &mut P::Context) -> T,
    ) -> T {
        slot.with(|s| {
            let mut s = s.borrow_mut();
            let state = &mut *s;
            let Some(plugin) = state.plugin.as_ref() else {
                panic!("sluice-sdk: a hook was called before init")
            };
            let mut ctx = state.context.take().unwrap_or_default();
            let out = run(plugin, &mut ctx);
            if runs_after(effective(plugin), hook) {
                state.context = Some(ctx);
            }
            out
        })
    }

    pub fn on_request_body<P: Plugin>(
        slot: &'static LocalKey<Slot<P>>,
        head: RequestHead,
        body: Vec<u8>,
    ) -> RequestBodyAction {
        with_context(slot, 1, |plugin, ctx| {
            run_request_body(plugin, ctx, head, body)
        })
    }

    pub fn on_response<P: Plugin>(
        slot: &'static LocalKey<Slot<P>>,
        head: ResponseHead,
    ) -> WitResponseAction {
        with_context(slot, 2, |plugin, ctx| run_response(plugin, ctx, head))
    }

    pub fn on_response_body<P: Plugin>(
        slot: &'static LocalKey<Slot<P>>,
        head: ResponseHead,
        body: Vec<u8>,
    ) -> ResponseBodyAction {
        with_context(slot, 3, |plugin, ctx| {
            run_response_body(plugin, ctx, head, body)
        })
    }

    pub fn run_request_body<P: Plugin>(
        plugin: &P,
        ctx: &mut P::Context,
        head: RequestHead,
        body: Vec<u8>,
    ) -> RequestBodyAction {
        let req = Request::from(head);
        let mut body = Body::new(body);
        match plugin.on_request_body(ctx, &req, &mut body) {
            Action::Continue => match body.into_replacement() {
                Some(new) => RequestBodyAction::Replace(new),
                None => RequestBodyAction::Continue,
            },
            Action::Respond(reply) => RequestBodyAction::Respond(reply.into_wit()),
        }
    }

    pub fn run_response_body<P: Plugin>(
        plugin: &P,
        ctx: &mut P::Context,
        head: ResponseHead,
        body: Vec<u8>,
    ) -> ResponseBodyAction {
        let resp = Response::from(head);
        let mut body = Body::new(body);
        match plugin.on_response_body(ctx, &resp, &mut body) {
            ResponseAction::Continue => match body.into_replacement() {
                Some(new) => ResponseBodyAction::Replace(new),
                None => ResponseBodyAction::Continue,
            },
            ResponseAction::Replace(reply) => ResponseBodyAction::ReplaceResponse(reply.into_wit()),
        }
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
                let (request, upstream, hash_key, skip_request_body) = req.into_parts();
                RequestAction::Continue(Forward {
                    request,
                    upstream,
                    hash_key,
                    skip_request_body,
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
                ) -> ::core::result::Result<$crate::__private::Declaration, $crate::__private::String>
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

                fn on_request_body(
                    request: $crate::__private::RequestHead,
                    body: ::std::vec::Vec<u8>,
                ) -> $crate::__private::RequestBodyAction {
                    $crate::__private::on_request_body::<$plugin>(&__SLUICE_PLUGIN, request, body)
                }

                fn on_response_body(
                    response: $crate::__private::ResponseHead,
                    body: ::std::vec::Vec<u8>,
                ) -> $crate::__private::ResponseBodyAction {
                    $crate::__private::on_response_body::<$plugin>(&__SLUICE_PLUGIN, response, body)
                }
            }

    $crate::bindings::__export_world!(__SluiceGuest with_types_in $crate::bindings);
        };
    };
}
