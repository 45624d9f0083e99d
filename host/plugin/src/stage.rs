//! The passes that follow `on-request`: the request body pass (route order), the
//! `on-response` pass and the response body pass (both in reverse route order). Each
//! plugin waits here with the instance that ran its `on-request` (it holds the
//! request's context) and the hooks it still has to run; an instance goes back as soon
//! as its plugin has none left.

use std::fmt::Write as _;
use std::time::Instant;

use bytes::Bytes;

use super::bindings::{
    ClientInfo, Hooks, Oversize, RequestBodyAction, RequestHead, Response, ResponseAction,
    ResponseBodyAction, ResponseHead,
};
use super::calls::{Hook, Outcome};
use super::chain::{apply_policy, BoundPlugin, ChainFailure};
use super::engine::PluginEngine;
use super::instance::{Instance, PluginFault};

/// One plugin still to run hooks for this request.
pub struct Waiting {
    index: usize,
    /// The instance that ran `on-request`; none for a plugin without it (one is
    /// acquired when a later hook runs).
    instance: Option<Instance>,
    left: Hooks,
}

impl Waiting {
    pub(super) fn new(index: usize, instance: Option<Instance>, left: Hooks) -> Self {
        Self {
            index,
            instance,
            left,
        }
    }
}

/// The plugins of a request that still have hooks to run, in route order.
pub struct PluginStage<'a> {
    engine: &'a PluginEngine,
    chain: &'a [BoundPlugin],
    waiting: Vec<Waiting>,
}

impl Drop for PluginStage<'_> {
    /// A request that ends before its last pass (upstream error, client gone) still
    /// returns its healthy instances.
    fn drop(&mut self) {
        for waiting in self.waiting.drain(..) {
            if let Some(instance) = waiting.instance {
                self.chain[waiting.index].release(self.engine, instance);
            }
        }
    }
}

/// Outcome of the `on-response` pass.
pub enum ResponseDecision {
    /// Send this head with the upstream body.
    Continue(ResponseHead),
    /// Send this complete response; the upstream body is dropped.
    Replace(Response),
    Fail(ChainFailure),
}

/// Outcome of the request body pass.
pub enum RequestBodyDecision {
    /// Send this body; `replaced` when a plugin changed it.
    Continue {
        body: Bytes,
        replaced: bool,
    },
    /// A plugin answered; the upstream is skipped.
    Respond(Response),
    Fail(ChainFailure),
}

/// A response body as the response body pass gets it.
pub enum ResponseBodyIn {
    /// The whole body.
    Whole(Bytes),
    /// Larger than every reader's limit: only its size is known to be too large.
    TooLarge,
}

/// Outcome of the response body pass.
pub enum ResponseBodyDecision {
    /// Send the response as it is.
    Unchanged,
    /// Send this head and body.
    Replace {
        head: ResponseHead,
        body: Bytes,
    },
    /// The body is over the limit of a plugin that must see every body (`fail`).
    TooLarge {
        plugin: std::sync::Arc<str>,
        limit: usize,
    },
    Fail(ChainFailure),
}

impl<'a> PluginStage<'a> {
    pub(super) fn new(engine: &'a PluginEngine, chain: &'a [BoundPlugin]) -> Self {
        Self {
            engine,
            chain,
            waiting: Vec::with_capacity(chain.len()),
        }
    }

    pub(super) fn push(&mut self, waiting: Waiting) {
        self.waiting.push(waiting);
    }

    fn wanting(&self, hook: Hooks) -> impl Iterator<Item = (&Waiting, &BoundPlugin)> {
        self.waiting
            .iter()
            .filter(move |w| w.left.contains(hook))
            .map(|w| (w, &self.chain[w.index]))
    }

    /// The largest request body every reader takes, when a plugin reads it.
    pub fn request_body_max(&self) -> Option<usize> {
        self.wanting(Hooks::ON_REQUEST_BODY)
            .map(|(_, bound)| bound.bodies.request_max)
            .min()
    }

    /// True when an `on-response` or response body hook is still to run.
    pub fn has_response_hooks(&self) -> bool {
        self.waiting.iter().any(|w| {
            w.left.contains(Hooks::ON_RESPONSE) || w.left.contains(Hooks::ON_RESPONSE_BODY)
        })
    }

    /// True when an `on-response` hook is still to run.
    pub fn has_response_head_hooks(&self) -> bool {
        self.waiting
            .iter()
            .any(|w| w.left.contains(Hooks::ON_RESPONSE))
    }

    /// How much of a response body to buffer: the largest limit of its readers.
    pub fn response_body_max(&self) -> Option<usize> {
        self.wanting(Hooks::ON_RESPONSE_BODY)
            .map(|(_, bound)| bound.bodies.response_max)
            .max()
    }

    /// Takes `hook` off the plugin at `at`; gives its instance back (and drops the
    /// entry) when nothing is left for it.
    fn done(&mut self, at: usize, hook: Hooks, instance: Option<Instance>) {
        let waiting = &mut self.waiting[at];
        waiting.left &= !hook;
        waiting.instance = instance;
        if waiting.left == Hooks::empty() {
            let waiting = self.waiting.remove(at);
            if let Some(instance) = waiting.instance {
                self.chain[waiting.index].release(self.engine, instance);
            }
        }
    }

    /// Runs `call` on the waiting plugin at `at` in its instance (acquired when it has
    /// none). The instance comes back after a success; a failed one is dropped.
    async fn call<T>(
        &mut self,
        at: usize,
        call: impl AsyncFnOnce(&mut Instance, &BoundPlugin) -> Result<T, PluginFault>,
    ) -> (Result<T, PluginFault>, Option<Instance>) {
        let chain = self.chain;
        let bound = &chain[self.waiting[at].index];
        let engine = self.engine;
        let held = self.waiting[at].instance.take();
        let outcome = bound
            .guarded(async {
                let mut instance = match held {
                    Some(instance) => instance,
                    None => bound.acquire(engine).await?,
                };
                let result = call(&mut instance, bound).await?;
                Ok((result, instance))
            })
            .await;
        match outcome {
            Ok((result, instance)) => (Ok(result), Some(instance)),
            Err(fault) => (Err(fault), None),
        }
    }

    /// Runs `on-request-body` of the plugins that read the request body, in route
    /// order; each sees the body as the previous one left it.
    pub async fn run_request_body(
        &mut self,
        client: &ClientInfo,
        head: &RequestHead,
        mut body: Bytes,
        trail: &mut String,
    ) -> RequestBodyDecision {
        let mut replaced = false;
        let mut at = 0;
        while at < self.waiting.len() {
            if !self.waiting[at].left.contains(Hooks::ON_REQUEST_BODY) {
                at += 1;
                continue;
            }
            let chain = self.chain;
            let bound = &chain[self.waiting[at].index];
            let started = Instant::now();
            let sent = &body;
            let (outcome, instance) = self
                .call(at, async |instance, bound| {
                    instance.on_request_body(bound.limits, head, sent).await
                })
                .await;
            let counted = match &outcome {
                Ok(RequestBodyAction::Continue | RequestBodyAction::Replace(_)) => {
                    Outcome::Continue
                }
                Ok(RequestBodyAction::Respond(_)) => Outcome::Respond,
                Err(fault) => Outcome::of_fault(fault),
            };
            bound
                .calls
                .record(Hook::RequestBody, counted, started.elapsed());
            match outcome {
                Ok(RequestBodyAction::Continue) => {}
                Ok(RequestBodyAction::Replace(new)) => {
                    let _ = write!(trail, "{}:body-replaced ", bound.name());
                    body = Bytes::from(new);
                    replaced = true;
                }
                Ok(RequestBodyAction::Respond(response)) => {
                    let _ = write!(trail, "{}:respond({}) ", bound.name(), response.status);
                    self.done(at, Hooks::ON_REQUEST_BODY, instance);
                    return RequestBodyDecision::Respond(response);
                }
                Err(fault) => {
                    if let Some(failure) =
                        apply_policy(bound, Hook::RequestBody, fault, client, trail)
                    {
                        return RequestBodyDecision::Fail(failure);
                    }
                    // Skipped (`on_error = "allow"`): its later hooks are skipped too.
                    self.done(at, Hooks::all(), None);
                    continue;
                }
            }
            let remains = self.waiting.len();
            self.done(at, Hooks::ON_REQUEST_BODY, instance);
            if self.waiting.len() == remains {
                at += 1;
            }
        }
        RequestBodyDecision::Continue { body, replaced }
    }

    /// Runs `on-response` of the waiting plugins in reverse route order.
    pub async fn run_response(
        &mut self,
        client: &ClientInfo,
        mut head: ResponseHead,
        trail: &mut String,
    ) -> ResponseDecision {
        let mut replaced_body: Option<Vec<u8>> = None;
        for at in (0..self.waiting.len()).rev() {
            if !self.waiting[at].left.contains(Hooks::ON_RESPONSE) {
                continue;
            }
            let chain = self.chain;
            let bound = &chain[self.waiting[at].index];
            let started = Instant::now();
            let sent = &head;
            let (outcome, instance) = self
                .call(at, async |instance, bound| {
                    instance.on_response(bound.limits, sent).await
                })
                .await;
            let counted = match &outcome {
                Ok(ResponseAction::Continue(_)) => Outcome::Continue,
                Ok(ResponseAction::Replace(_)) => Outcome::Respond,
                Err(fault) => Outcome::of_fault(fault),
            };
            bound
                .calls
                .record(Hook::Response, counted, started.elapsed());
            match outcome {
                Ok(ResponseAction::Continue(next)) => head = next,
                Ok(ResponseAction::Replace(response)) => {
                    let _ = write!(trail, "{}:replace({}) ", bound.name(), response.status);
                    head = ResponseHead {
                        status: response.status,
                        headers: response.headers,
                    };
                    replaced_body = Some(response.body);
                }
                Err(fault) => {
                    if let Some(failure) = apply_policy(bound, Hook::Response, fault, client, trail)
                    {
                        return ResponseDecision::Fail(failure);
                    }
                    self.done(at, Hooks::all(), None);
                    continue;
                }
            }
            // Entries after `at` may go; those before it (still to run) stay in place.
            self.done(at, Hooks::ON_RESPONSE, instance);
        }
        match replaced_body {
            Some(body) => ResponseDecision::Replace(Response {
                status: head.status,
                headers: head.headers,
                body,
            }),
            None => ResponseDecision::Continue(head),
        }
    }

    /// Runs `on-response-body` of the plugins that read the response body, in reverse
    /// route order. A plugin whose limit the body is over is skipped (`pass-unread`)
    /// or ends the request (`fail`).
    pub async fn run_response_body(
        &mut self,
        client: &ClientInfo,
        mut head: ResponseHead,
        body: ResponseBodyIn,
        trail: &mut String,
    ) -> ResponseBodyDecision {
        let mut body = match body {
            ResponseBodyIn::Whole(body) => Some(body),
            ResponseBodyIn::TooLarge => None,
        };
        let mut changed = false;
        for at in (0..self.waiting.len()).rev() {
            if !self.waiting[at].left.contains(Hooks::ON_RESPONSE_BODY) {
                continue;
            }
            let chain = self.chain;
            let bound = &chain[self.waiting[at].index];
            let limits = bound.bodies;
            let Some(readable) = body.as_ref().filter(|b| b.len() <= limits.response_max) else {
                if limits.response_oversize == Oversize::Fail {
                    let _ = write!(trail, "{}:body-too-large ", bound.name());
                    return ResponseBodyDecision::TooLarge {
                        plugin: bound.plugin.name.clone(),
                        limit: limits.response_max,
                    };
                }
                let _ = write!(trail, "{}:body-unread ", bound.name());
                let instance = self.waiting[at].instance.take();
                self.done(at, Hooks::ON_RESPONSE_BODY, instance);
                continue;
            };
            let started = Instant::now();
            let (sent_head, sent_body) = (&head, readable);
            let (outcome, instance) = self
                .call(at, async |instance, bound| {
                    instance
                        .on_response_body(bound.limits, sent_head, sent_body)
                        .await
                })
                .await;
            let counted = match &outcome {
                Ok(ResponseBodyAction::Continue | ResponseBodyAction::Replace(_)) => {
                    Outcome::Continue
                }
                Ok(ResponseBodyAction::ReplaceResponse(_)) => Outcome::Respond,
                Err(fault) => Outcome::of_fault(fault),
            };
            bound
                .calls
                .record(Hook::ResponseBody, counted, started.elapsed());
            match outcome {
                Ok(ResponseBodyAction::Continue) => {}
                Ok(ResponseBodyAction::Replace(new)) => {
                    let _ = write!(trail, "{}:body-replaced ", bound.name());
                    body = Some(Bytes::from(new));
                    changed = true;
                }
                Ok(ResponseBodyAction::ReplaceResponse(response)) => {
                    let _ = write!(trail, "{}:replace({}) ", bound.name(), response.status);
                    head = ResponseHead {
                        status: response.status,
                        headers: response.headers,
                    };
                    body = Some(Bytes::from(response.body));
                    changed = true;
                }
                Err(fault) => {
                    if let Some(failure) =
                        apply_policy(bound, Hook::ResponseBody, fault, client, trail)
                    {
                        return ResponseBodyDecision::Fail(failure);
                    }
                    self.done(at, Hooks::all(), None);
                    continue;
                }
            }
            self.done(at, Hooks::ON_RESPONSE_BODY, instance);
        }
        match (changed, body) {
            (true, Some(body)) => ResponseBodyDecision::Replace { head, body },
            _ => ResponseBodyDecision::Unchanged,
        }
    }
}
