use serde::de::DeserializeOwned;

use crate::{Client, Reply, Request, Response};

/// A Sluice plugin.
///
/// The host makes a fresh instance for every request: [`new`](Plugin::new) runs with the
/// route's config, then [`on_request`](Plugin::on_request), then, if the request went on
/// to the upstream, [`on_response`](Plugin::on_response). Fields of `self` therefore live
/// for exactly one request (use them to carry data from request to response).
pub trait Plugin: Sized + 'static {
    /// The route's `config` table, deserialized from JSON. Absent config arrives as `{}`.
    /// Use [`NoConfig`] for a plugin that takes none.
    type Config: DeserializeOwned;

    /// Checks the config and builds the plugin. An `Err` fails the plugin's load with that
    /// message (the proxy refuses the config).
    fn new(config: Self::Config) -> Result<Self, String>;

    /// Inspects or rewrites the request, or answers it directly. The default passes it on.
    fn on_request(&mut self, client: &Client, req: &mut Request) -> Action {
        let _ = (client, req);
        Action::Continue
    }

    /// Inspects or rewrites the upstream's status and headers. Runs only if this plugin's
    /// `on_request` returned [`Action::Continue`]. The default passes the response on.
    fn on_response(&mut self, resp: &mut Response) -> ResponseAction {
        let _ = resp;
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
        ClientInfo, Forward, RequestAction, RequestHead, ResponseAction as WitResponseAction,
        ResponseHead,
    };
    pub use crate::bindings::Guest;
    pub use std::string::String;

    use super::{Action, Plugin, ResponseAction};
    use crate::{Client, Request, Response};

    /// Where the plugin value lives between the export calls of one instance.
    pub type Slot<P> = RefCell<Option<P>>;

    pub fn init<P: Plugin>(slot: &'static LocalKey<Slot<P>>, config: String) -> Result<(), String> {
        let plugin = P::from_json(&config)?;
        slot.with(|s| *s.borrow_mut() = Some(plugin));
        Ok(())
    }

    pub fn on_request<P: Plugin>(
        slot: &'static LocalKey<Slot<P>>,
        client: ClientInfo,
        head: RequestHead,
    ) -> RequestAction {
        slot.with(|s| {
            let mut s = s.borrow_mut();
            // The host always calls init first; without it there is nothing sane to do, so
            // trap and let the host's on_error policy decide.
            let Some(plugin) = s.as_mut() else {
                panic!("sluice-sdk: on-request called before init")
            };
            run_request(plugin, client, head)
        })
    }

    pub fn on_response<P: Plugin>(
        slot: &'static LocalKey<Slot<P>>,
        head: ResponseHead,
    ) -> WitResponseAction {
        slot.with(|s| {
            let mut s = s.borrow_mut();
            let Some(plugin) = s.as_mut() else {
                panic!("sluice-sdk: on-response called before init")
            };
            run_response(plugin, head)
        })
    }

    pub fn run_request<P: Plugin>(
        plugin: &mut P,
        client: ClientInfo,
        head: RequestHead,
    ) -> RequestAction {
        let client = Client::from(client);
        let mut req = Request::from(head);
        match plugin.on_request(&client, &mut req) {
            Action::Continue => {
                let (request, upstream) = req.into_parts();
                RequestAction::Continue(Forward { request, upstream })
            }
            Action::Respond(reply) => RequestAction::Respond(reply.into_wit()),
        }
    }

    pub fn run_response<P: Plugin>(plugin: &mut P, head: ResponseHead) -> WitResponseAction {
        let mut resp = Response::from(head);
        match plugin.on_response(&mut resp) {
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
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            struct __SluiceGuest;

            impl $crate::__private::Guest for __SluiceGuest {
                fn init(
                    config: $crate::__private::String,
                ) -> ::core::result::Result<(), $crate::__private::String> {
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
