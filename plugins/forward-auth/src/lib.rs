//! `forward-auth`: asks an auth service, through an outbound call, whether a request
//! may pass (nginx `auth_request`, Traefik ForwardAuth). A `2xx` lets it go on, with
//! chosen headers of the answer copied onto it; the configured deny statuses (`401`,
//! `403`) go to the client as the auth service wrote them; anything else, or no answer,
//! is a `503`: the check fails closed. See README.md for the config.

use sluice_sdk::outbound::{Call, CallResponse, OutboundError};
use sluice_sdk::prelude::*;

#[config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The auth service: an upstream of the proxy config, also listed in the route
    /// entry's `outbound`.
    upstream: String,
    /// Path (and query) called on it.
    #[serde(default = "default_path")]
    path: String,
    /// Method of the call; the request's own when absent.
    #[serde(default)]
    method: Option<String>,
    /// Request headers sent along to the auth service.
    #[serde(default = "default_request_headers")]
    request_headers: Vec<String>,
    /// Headers of a `2xx` answer copied onto the request; a client's own copies of
    /// these never reach the upstream.
    #[serde(default)]
    response_headers: Vec<String>,
    /// Statuses of the answer that go to the client as they are.
    #[serde(default = "default_deny_statuses")]
    deny_statuses: Vec<u16>,
    /// Call timeout; the route entry's `outbound_timeout_ms` when absent (and at most).
    #[serde(default)]
    timeout_ms: Option<u32>,
}

fn default_path() -> String {
    "/".into()
}

fn default_request_headers() -> Vec<String> {
    vec!["authorization".into(), "cookie".into()]
}

fn default_deny_statuses() -> Vec<u16> {
    vec![401, 403]
}

/// Headers the proxy owns on any request or response (framing, hop-by-hop, `host`):
/// naming one in the config would be silently ignored, so it is refused.
const PROXY_OWNED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

fn proxy_owned(name: &str) -> bool {
    PROXY_OWNED.contains(&name) || name.starts_with("proxy-")
}

/// The `X-Forwarded-*` fields this plugin sets on the call from what the proxy saw.
const FORWARDED: &[&str] = &[
    "x-forwarded-method",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-uri",
    "x-forwarded-for",
];

pub struct ForwardAuth {
    upstream: String,
    path: String,
    method: Option<String>,
    request_headers: Vec<String>,
    response_headers: Vec<String>,
    deny_statuses: Vec<u16>,
    timeout: Option<std::time::Duration>,
}

fn header_names(key: &str, names: Vec<String>) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for (i, name) in names.into_iter().enumerate() {
        let lower = name.to_ascii_lowercase();
        if !Headers::is_valid_name(&lower) {
            return Err(format!("{key}[{i}]: {name:?} is not a valid header name"));
        }
        if proxy_owned(&lower) {
            return Err(format!(
                "{key}[{i}]: {name:?} belongs to the proxy (framing, hop-by-hop or host)"
            ));
        }
        if !out.contains(&lower) {
            out.push(lower);
        }
    }
    Ok(out)
}

#[plugin]
impl Plugin for ForwardAuth {
    type Config = Config;

    fn new(cfg: Config) -> Result<Self, String> {
        if cfg.upstream.is_empty() {
            return Err("upstream: the auth service's upstream name is required".into());
        }
        if !cfg.path.starts_with('/') || cfg.path.starts_with("//") {
            return Err(format!("path: {:?} must start with a single '/'", cfg.path));
        }
        if cfg
            .path
            .bytes()
            .any(|b| b <= b' ' || b == 0x7f || b == b'#')
        {
            return Err(format!(
                "path: {:?} must not contain spaces, controls or '#'",
                cfg.path
            ));
        }
        if let Some(method) = &cfg.method {
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(format!("method: {method:?} is not a method (e.g. \"GET\")"));
            }
        }
        let request_headers = header_names("request_headers", cfg.request_headers)?;
        if let Some(name) = request_headers
            .iter()
            .find(|n| FORWARDED.contains(&n.as_str()))
        {
            return Err(format!(
                "request_headers: {name:?} is set by the plugin from what the proxy saw; a client's copy is never sent"
            ));
        }
        let response_headers = header_names("response_headers", cfg.response_headers)?;
        if cfg.deny_statuses.is_empty() {
            return Err("deny_statuses: at least one status (e.g. [401, 403])".into());
        }
        if let Some(s) = cfg.deny_statuses.iter().find(|s| !(300..=599).contains(*s)) {
            return Err(format!(
                "deny_statuses: {s} is not a status from 300 to 599 (a 2xx lets the request pass)"
            ));
        }
        let timeout = match cfg.timeout_ms {
            Some(0) => return Err("timeout_ms: must be at least 1".into()),
            Some(ms) => Some(std::time::Duration::from_millis(u64::from(ms))),
            None => None,
        };
        Ok(Self {
            upstream: cfg.upstream,
            path: cfg.path,
            method: cfg.method,
            request_headers,
            response_headers,
            deny_statuses: cfg.deny_statuses,
            timeout,
        })
    }

    fn on_request(&self, _: &mut (), client: &Client, req: &mut Request) -> Action {
        // A client's own copy of a header the auth service vouches for never passes,
        // whatever the answer.
        for name in &self.response_headers {
            req.remove_header(name);
        }
        let answer = self.auth_call(client, req).send();
        match self.decide(answer) {
            Decision::Pass(granted) => {
                for (name, value) in granted {
                    req.append_header(&name, value);
                }
                Action::Continue
            }
            Decision::Answer(reply) => Action::Respond(reply),
        }
    }
}

/// What the auth service's answer means for the request.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Let it pass with these headers added.
    Pass(Vec<(String, Vec<u8>)>),
    /// Answer the client with this.
    Answer(Reply),
}

impl ForwardAuth {
    /// The call asking whether `req` may pass.
    pub fn auth_call(&self, client: &Client, req: &Request) -> Call {
        let method = self.method.as_deref().unwrap_or(req.method());
        let mut call = Call::new(method, &self.upstream, &self.path);
        for name in &self.request_headers {
            for value in req.headers().get_all(name) {
                call = call.header(name, value);
            }
        }
        let uri = match req.query() {
            "" => req.path().to_string(),
            query => format!("{}?{query}", req.path()),
        };
        call = call
            .header("x-forwarded-method", req.method())
            .header("x-forwarded-proto", client.scheme())
            .header("x-forwarded-host", req.header_bytes("host").unwrap_or(b""))
            .header("x-forwarded-uri", uri)
            .header("x-forwarded-for", client.ip());
        match self.timeout {
            Some(t) => call.timeout(t),
            None => call,
        }
    }

    /// The decision for the auth service's answer (or its absence).
    pub fn decide(&self, answer: Result<CallResponse, OutboundError>) -> Decision {
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                if matches!(e, OutboundError::NotAllowed(_)) {
                    log::error!(
                        "forward-auth: {e}; list {:?} in this route entry's `outbound`",
                        self.upstream
                    );
                } else {
                    log::warn!("forward-auth: no answer from {:?}: {e}", self.upstream);
                }
                return Decision::Answer(unavailable());
            }
        };
        if (200..300).contains(&answer.status) {
            let granted = self
                .response_headers
                .iter()
                .flat_map(|name| {
                    answer
                        .headers
                        .get_all(name)
                        .map(move |v| (name.clone(), v.to_vec()))
                })
                .collect();
            return Decision::Pass(granted);
        }
        if self.deny_statuses.contains(&answer.status) {
            return Decision::Answer(relayed(answer));
        }
        log::warn!(
            "forward-auth: {:?} answered {}, not 2xx or a deny status: refused",
            self.upstream,
            answer.status
        );
        Decision::Answer(unavailable())
    }
}

/// The auth service's denial as the client gets it: status, end-to-end headers, body.
fn relayed(answer: CallResponse) -> Reply {
    let mut reply = Reply::new(answer.status).body(answer.body);
    for (name, value) in answer.headers.iter() {
        if !proxy_owned(name) {
            reply = reply.header(name, value);
        }
    }
    reply
}

/// The answer when the auth service cannot decide: the request does not pass.
pub fn unavailable() -> Reply {
    Reply::json(
        503,
        &json!({"error": "unavailable", "message": "authentication is unavailable"}),
    )
    .header("cache-control", "no-store")
}

sluice_sdk::export_plugin!(ForwardAuth);

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(json: &str) -> ForwardAuth {
        match ForwardAuth::from_json(json) {
            Ok(p) => p,
            Err(e) => panic!("config rejected: {e}"),
        }
    }

    fn refused(json: &str) -> String {
        match ForwardAuth::from_json(json) {
            Ok(_) => panic!("config accepted: {json}"),
            Err(e) => e,
        }
    }

    fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> CallResponse {
        let mut h = Headers::new();
        for (n, v) in headers {
            h.append(n, *v);
        }
        CallResponse {
            status,
            headers: h,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn the_call_carries_chosen_headers_and_what_the_proxy_saw() {
        let p = plugin(r#"{"upstream":"auth","path":"/verify?app=1"}"#);
        let req = Request::new("POST", "/orders/7?x=1")
            .with_header("host", "shop.example")
            .with_header("authorization", "Bearer t")
            .with_header("cookie", "a=1")
            .with_header("cookie", "b=2")
            .with_header("x-forwarded-for", "6.6.6.6")
            .with_header("x-secret", "no");
        let client = Client::new("203.0.113.9", "https", "api");
        let call = p.auth_call(&client, &req);
        assert_eq!(
            (call.method(), call.upstream(), call.path_and_query()),
            ("POST", "auth", "/verify?app=1")
        );
        let h = call.headers();
        assert_eq!(h.get("authorization"), Some("Bearer t"));
        assert_eq!(h.get_all("cookie").collect::<Vec<_>>(), [b"a=1", b"b=2"]);
        assert_eq!(h.get("x-forwarded-method"), Some("POST"));
        assert_eq!(h.get("x-forwarded-proto"), Some("https"));
        assert_eq!(h.get("x-forwarded-host"), Some("shop.example"));
        assert_eq!(h.get("x-forwarded-uri"), Some("/orders/7?x=1"));
        assert_eq!(
            h.get_all("x-forwarded-for").collect::<Vec<_>>(),
            [b"203.0.113.9"],
            "never a client's own X-Forwarded-For"
        );
        assert_eq!(h.get("x-secret"), None);
        assert!(call.body_bytes().is_empty());
        assert_eq!(call.timeout_value(), None);
    }

    #[test]
    fn a_fixed_method_replaces_the_requests() {
        let p = plugin(r#"{"upstream":"auth","method":"GET","timeout_ms":250}"#);
        let call = p.auth_call(
            &Client::new("1.2.3.4", "http", "r"),
            &Request::new("DELETE", "/x"),
        );
        assert_eq!(call.method(), "GET");
        assert_eq!(call.headers().get("x-forwarded-method"), Some("DELETE"));
        assert_eq!(
            call.timeout_value(),
            Some(std::time::Duration::from_millis(250))
        );
    }

    #[test]
    fn a_2xx_passes_with_the_granted_headers_only() {
        let p = plugin(r#"{"upstream":"auth","response_headers":["X-User","x-roles"]}"#);
        let d = p.decide(Ok(answer(
            204,
            &[
                ("x-user", "alice"),
                ("x-roles", "a"),
                ("x-roles", "b"),
                ("x-other", "1"),
            ],
            "",
        )));
        assert_eq!(
            d,
            Decision::Pass(vec![
                ("x-user".into(), b"alice".to_vec()),
                ("x-roles".into(), b"a".to_vec()),
                ("x-roles".into(), b"b".to_vec()),
            ])
        );
    }

    #[test]
    fn a_deny_status_is_relayed_without_framing_headers() {
        let p = plugin(r#"{"upstream":"auth"}"#);
        let d = p.decide(Ok(answer(
            401,
            &[
                ("www-authenticate", "Bearer"),
                ("content-length", "4"),
                ("connection", "close"),
            ],
            "nope",
        )));
        let Decision::Answer(reply) = d else {
            panic!("passed")
        };
        assert_eq!(reply.status(), 401);
        assert_eq!(reply.headers().get("www-authenticate"), Some("Bearer"));
        assert_eq!(reply.headers().get("content-length"), None);
        assert_eq!(reply.headers().get("connection"), None);
        assert_eq!(reply.body_bytes(), b"nope");
    }

    #[test]
    fn anything_else_fails_closed() {
        let p = plugin(r#"{"upstream":"auth"}"#);
        for outcome in [
            Ok(answer(500, &[], "")),
            Ok(answer(302, &[("location", "/login")], "")),
            Ok(answer(404, &[], "")),
            Err(OutboundError::Timeout),
            Err(OutboundError::TooLarge),
            Err(OutboundError::Failed("refused".into())),
            Err(OutboundError::NotAllowed("auth".into())),
        ] {
            match p.decide(outcome) {
                Decision::Answer(r) => assert_eq!(r.status(), 503),
                Decision::Pass(_) => panic!("passed"),
            }
        }
        let with_redirect = plugin(r#"{"upstream":"auth","deny_statuses":[302,401]}"#);
        match with_redirect.decide(Ok(answer(302, &[("location", "/login")], ""))) {
            Decision::Answer(r) => assert_eq!(r.headers().get("location"), Some("/login")),
            Decision::Pass(_) => panic!("passed"),
        }
    }

    #[test]
    fn bad_configs_are_refused_with_the_key() {
        for (json, key) in [
            (r#"{}"#, "upstream"),
            (r#"{"upstream":""}"#, "upstream"),
            (r#"{"upstream":"a","path":"verify"}"#, "path"),
            (r#"{"upstream":"a","path":"//evil/x"}"#, "path"),
            (r#"{"upstream":"a","path":"/a b"}"#, "path"),
            (r#"{"upstream":"a","method":"get"}"#, "method"),
            (
                r#"{"upstream":"a","request_headers":["bad name"]}"#,
                "request_headers[0]",
            ),
            (
                r#"{"upstream":"a","request_headers":["Host"]}"#,
                "request_headers[0]",
            ),
            (
                r#"{"upstream":"a","request_headers":["x-forwarded-for"]}"#,
                "request_headers",
            ),
            (
                r#"{"upstream":"a","response_headers":["content-length"]}"#,
                "response_headers[0]",
            ),
            (r#"{"upstream":"a","deny_statuses":[]}"#, "deny_statuses"),
            (r#"{"upstream":"a","deny_statuses":[200]}"#, "deny_statuses"),
            (r#"{"upstream":"a","timeout_ms":0}"#, "timeout_ms"),
            (r#"{"upstream":"a","tiemout_ms":5}"#, "tiemout_ms"),
        ] {
            let e = refused(json);
            assert!(e.contains(key), "{json}: {e}");
        }
    }
}
