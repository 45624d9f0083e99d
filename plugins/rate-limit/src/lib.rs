//! `rate-limit`: limits requests per client IP, per value of a header, or per route,
//! with the state service's GCRA (one host call, one Redis round trip with Redis).
//! See README.md for the config.

use sha2::{Digest, Sha256};
use sluice_sdk::metrics::Counter;
use sluice_sdk::prelude::*;
use sluice_sdk::state::{self, RateDecision, RateLimit};

#[config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// What a limit is kept per: "ip", "route" or "header:NAME".
    #[serde(default = "default_key")]
    key: String,
    /// Requests allowed per `per_s` seconds.
    requests: u32,
    /// The period, in seconds.
    per_s: f64,
    /// Requests that may pass at once; `requests` when absent.
    #[serde(default)]
    burst: Option<u32>,
    /// What happens when the state service cannot answer.
    #[serde(default)]
    on_unavailable: OnUnavailable,
    /// Also tell allowed responses how much is left.
    #[serde(default)]
    headers: bool,
}

fn default_key() -> String {
    "ip".into()
}

#[config]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnUnavailable {
    /// Answer 503: no request passes unlimited.
    #[default]
    Deny,
    /// Let the request through unlimited.
    Allow,
}

/// What a limit is kept per.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyBy {
    Ip,
    Route,
    /// A header's value (lower-case name); requests without it share one empty key.
    Header(String),
}

impl KeyBy {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "ip" => Ok(KeyBy::Ip),
            "route" => Ok(KeyBy::Route),
            _ => match text.strip_prefix("header:") {
                Some(name) if Headers::is_valid_name(name) => {
                    Ok(KeyBy::Header(name.to_ascii_lowercase()))
                }
                _ => Err(format!(
                    "key: {text:?} is not \"ip\", \"route\" or \"header:NAME\""
                )),
            },
        }
    }
}

/// Header values longer than this are keyed by their hash (keys are bounded).
const MAX_PLAIN_VALUE: usize = 128;

pub struct RateLimiter {
    key: KeyBy,
    limit: RateLimit,
    on_unavailable: OnUnavailable,
    headers: bool,
    decisions: Counter,
}

#[plugin]
impl Plugin for RateLimiter {
    type Config = Config;
    /// The decision of an allowed request, for its response headers.
    type Context = Option<RateDecision>;

    fn new(cfg: Config) -> Result<Self, String> {
        let key = KeyBy::parse(&cfg.key)?;
        let limit = limit_of(cfg.requests, cfg.per_s, cfg.burst)?;
        let decisions = Counter::define(
            "decisions",
            "Rate-limit decisions by result (allowed, denied, unavailable)",
            &["result"],
        )?;
        Ok(Self {
            key,
            limit,
            on_unavailable: cfg.on_unavailable,
            headers: cfg.headers,
            decisions,
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            on_request: true,
            on_response: self.headers,
            ..Hooks::default()
        }
    }

    fn on_request(
        &self,
        allowed: &mut Option<RateDecision>,
        client: &Client,
        req: &mut Request,
    ) -> Action {
        let key = self.key_of(client, req);
        match state::rate_limit(&key, self.limit) {
            Ok(decision) if decision.allowed => {
                self.decisions.inc(&["allowed"]);
                *allowed = Some(decision);
                Action::Continue
            }
            Ok(decision) => {
                self.decisions.inc(&["denied"]);
                Action::Respond(too_many_requests(&decision))
            }
            Err(_) => {
                // The host logs and counts the outage itself; one line per request here
                // would flood the log.
                self.decisions.inc(&["unavailable"]);
                match self.on_unavailable {
                    OnUnavailable::Allow => Action::Continue,
                    OnUnavailable::Deny => Action::Respond(unavailable()),
                }
            }
        }
    }

    fn on_response(
        &self,
        allowed: &mut Option<RateDecision>,
        resp: &mut Response,
    ) -> ResponseAction {
        if let Some(decision) = allowed {
            for (name, value) in rate_headers(decision) {
                resp.set_header(name, value);
            }
        }
        ResponseAction::Continue
    }
}

impl RateLimiter {
    /// The state key of a request: its route, then what the limit is kept per.
    pub fn key_of(&self, client: &Client, req: &Request) -> String {
        let route = client.route();
        match &self.key {
            KeyBy::Ip => format!("{route}|ip:{}", client.ip()),
            KeyBy::Route => format!("{route}|route"),
            KeyBy::Header(name) => {
                let value = req.header_bytes(name).unwrap_or_default();
                match std::str::from_utf8(value) {
                    Ok(text) if text.len() <= MAX_PLAIN_VALUE => format!("{route}|h:{text}"),
                    _ => format!("{route}|hs:{}", hex(&Sha256::digest(value))),
                }
            }
        }
    }
}

/// The limit `requests` per `per_s` seconds with `burst`, checked as the host will.
pub fn limit_of(requests: u32, per_s: f64, burst: Option<u32>) -> Result<RateLimit, String> {
    if requests == 0 {
        return Err("requests: must be at least 1".into());
    }
    if !(per_s.is_finite() && per_s > 0.0 && per_s <= 31_536_000.0) {
        return Err(format!(
            "per_s: {per_s} is not a period from 1 ms to a year"
        ));
    }
    let period_ms = (per_s * 1000.0).round() as u64;
    if period_ms == 0 {
        return Err(format!("per_s: {per_s} is shorter than 1 ms"));
    }
    if period_ms.saturating_mul(1000) / u64::from(requests) == 0 {
        return Err("requests: more than one per microsecond cannot be kept".into());
    }
    let burst = burst.unwrap_or(requests);
    if burst == 0 {
        return Err("burst: must be at least 1".into());
    }
    Ok(RateLimit {
        requests,
        period: std::time::Duration::from_millis(period_ms),
        burst,
        cost: 1,
    })
}

fn whole_seconds(d: std::time::Duration) -> u64 {
    d.as_millis().div_ceil(1000) as u64
}

/// `RateLimit-Limit`, `-Remaining` and `-Reset` of a decision.
pub fn rate_headers(d: &RateDecision) -> [(&'static str, String); 3] {
    [
        ("ratelimit-limit", d.limit.to_string()),
        ("ratelimit-remaining", d.remaining.to_string()),
        ("ratelimit-reset", whole_seconds(d.reset).to_string()),
    ]
}

/// The 429 of a denied request.
pub fn too_many_requests(d: &RateDecision) -> Reply {
    let retry_after = whole_seconds(d.retry_after).max(1);
    let mut reply = Reply::json(
        429,
        &json!({"error": "too_many_requests", "message": "rate limit exceeded", "retry_after_s": retry_after}),
    )
    .header("retry-after", retry_after.to_string())
    .header("cache-control", "no-store");
    for (name, value) in rate_headers(d) {
        reply = reply.header(name, value);
    }
    reply
}

/// The 503 when the limit cannot be checked and the config says deny.
pub fn unavailable() -> Reply {
    Reply::json(
        503,
        &json!({"error": "unavailable", "message": "rate limit cannot be checked; try again shortly"}),
    )
    .header("retry-after", "1")
    .header("cache-control", "no-store")
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

sluice_sdk::export_plugin!(RateLimiter);

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limiter(json: &str) -> RateLimiter {
        match RateLimiter::from_json(json) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn config_is_checked() {
        for (json, problem) in [
            (r#"{"requests": 0, "per_s": 1}"#, "requests"),
            (r#"{"requests": 5, "per_s": 0}"#, "per_s"),
            (r#"{"requests": 5, "per_s": 1, "burst": 0}"#, "burst"),
            (r#"{"requests": 5, "per_s": 1, "key": "cookie:a"}"#, "key"),
            (
                r#"{"requests": 5, "per_s": 1, "key": "header:bad name"}"#,
                "key",
            ),
            (
                r#"{"requests": 5, "per_s": 1, "on_unavailable": "maybe"}"#,
                "maybe",
            ),
            (r#"{"requests": 5, "per_s": 1, "burts": 3}"#, "burts"),
            (r#"{"per_s": 1}"#, "requests"),
        ] {
            let e = RateLimiter::from_json(json).err().unwrap_or_default();
            assert!(e.contains(problem), "{json}: {e}");
        }
    }

    #[test]
    fn burst_defaults_to_requests() {
        let p = limiter(r#"{"requests": 20, "per_s": 60}"#);
        assert_eq!(p.limit.burst, 20);
        assert_eq!(p.limit.period, Duration::from_secs(60));
        assert_eq!(p.on_unavailable, OnUnavailable::Deny);
        assert!(!p.hooks().on_response);
        assert!(
            limiter(r#"{"requests": 1, "per_s": 1, "headers": true}"#)
                .hooks()
                .on_response
        );
    }

    #[test]
    fn keys_are_per_route_and_what_the_config_names() {
        let client = Client::new("10.0.0.1", "http", "api");
        let req = Request::new("GET", "/").with_header("X-Tenant", "acme");
        let by = |key: &str| {
            limiter(&format!(r#"{{"requests": 1, "per_s": 1, "key": "{key}"}}"#))
                .key_of(&client, &req)
        };
        assert_eq!(by("ip"), "api|ip:10.0.0.1");
        assert_eq!(by("route"), "api|route");
        assert_eq!(by("header:x-tenant"), "api|h:acme");
        // No header: one shared empty key, never unlimited.
        assert_eq!(by("header:x-other"), "api|h:");
        let long = Request::new("GET", "/").with_header("x-tenant", "a".repeat(500));
        let key = limiter(r#"{"requests": 1, "per_s": 1, "key": "header:x-tenant"}"#)
            .key_of(&client, &long);
        assert!(
            key.starts_with("api|hs:") && key.len() == "api|hs:".len() + 64,
            "{key}"
        );
    }

    #[test]
    fn a_denial_says_when_to_retry_in_whole_seconds() {
        let reply = too_many_requests(&RateDecision {
            allowed: false,
            limit: 20,
            remaining: 0,
            reset: Duration::from_millis(59_001),
            retry_after: Duration::from_millis(2_001),
        });
        assert_eq!(reply.status(), 429);
        assert_eq!(reply.headers().get("retry-after"), Some("3"));
        assert_eq!(reply.headers().get("ratelimit-limit"), Some("20"));
        assert_eq!(reply.headers().get("ratelimit-remaining"), Some("0"));
        assert_eq!(reply.headers().get("ratelimit-reset"), Some("60"));
        let body = String::from_utf8_lossy(reply.body_bytes()).to_string();
        assert!(body.contains("\"retry_after_s\":3"), "{body}");
    }

    #[test]
    fn without_state_deny_answers_503_and_allow_passes() {
        // Off wasm the state service is unavailable: exactly the outage case.
        let client = Client::new("10.0.0.1", "http", "api");
        let mut req = Request::new("GET", "/");
        let deny = limiter(r#"{"requests": 1, "per_s": 1}"#);
        match deny.on_request(&mut None, &client, &mut req) {
            Action::Respond(reply) => assert_eq!(reply.status(), 503),
            other => panic!("{other:?}"),
        }
        let allow = limiter(r#"{"requests": 1, "per_s": 1, "on_unavailable": "allow"}"#);
        assert_eq!(
            allow.on_request(&mut None, &client, &mut req),
            Action::Continue
        );
    }
}
