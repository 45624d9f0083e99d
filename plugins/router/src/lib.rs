//! `router`: picks the upstream from the first rule that matches a header, cookie,
//! query parameter or path prefix. See README.md for the config.

use regex::bytes::{Regex, RegexBuilder};
use sluice_sdk::prelude::*;

#[config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    rules: Vec<RuleConfig>,
}

#[config]
#[derive(Debug, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    header: Option<String>,
    cookie: Option<String>,
    query: Option<String>,
    path_prefix: Option<String>,
    equals: Option<String>,
    matches: Option<String>,
    upstream: Option<String>,
}

/// What a rule looks at.
#[derive(Debug)]
pub enum Source {
    /// Any value of this header (lowercase name).
    Header(String),
    /// This cookie.
    Cookie(String),
    /// The first value of this query parameter, form-decoded.
    Query(String),
    /// The path starts with this (plain string prefix).
    PathPrefix(String),
}

/// What the looked-at value must be.
#[derive(Debug)]
pub enum Test {
    /// Present, any value.
    Present,
    /// Exactly this value.
    Equals(String),
    /// Matches this regex (unanchored unless the pattern anchors it).
    Matches(Regex),
}

impl Test {
    fn check(&self, value: &[u8]) -> bool {
        match self {
            Test::Present => true,
            Test::Equals(v) => value == v.as_bytes(),
            Test::Matches(re) => re.is_match(value),
        }
    }
}

/// Compiles a `matches` regex. Unicode mode is off by default (ASCII classes and case
/// folding): compiling is several times cheaper, which keeps loads and reloads fast.
/// `(?u)` turns it back on.
pub fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern).unicode(false).build()
}

#[derive(Debug)]
pub struct Rule {
    pub source: Source,
    pub test: Test,
    pub upstream: String,
}

impl Rule {
    /// Validates rule number `n` (1-based, as in messages).
    pub fn from_config(n: usize, r: RuleConfig) -> Result<Self, String> {
        let mut sources = Vec::new();
        if let Some(h) = r.header {
            if !Headers::is_valid_name(&h) {
                return Err(format!("rule {n}: header {h:?} is not a valid header name"));
            }
            sources.push(("header", Source::Header(h.to_ascii_lowercase())));
        }
        if let Some(c) = r.cookie {
            sources.push(("cookie", Source::Cookie(c)));
        }
        if let Some(q) = r.query {
            sources.push(("query", Source::Query(q)));
        }
        if let Some(p) = r.path_prefix {
            if !p.starts_with('/') {
                return Err(format!("rule {n}: path_prefix {p:?} must start with '/'"));
            }
            sources.push(("path_prefix", Source::PathPrefix(p)));
        }
        if sources.len() != 1 {
            let found: Vec<_> = sources.iter().map(|(k, _)| *k).collect();
            return Err(format!(
                "rule {n}: needs exactly one of header, cookie, query, path_prefix (found {})",
                if found.is_empty() {
                    "none".into()
                } else {
                    found.join(", ")
                }
            ));
        }
        let (_, source) = sources.remove(0);

        let test = match (r.equals, r.matches) {
            (Some(_), Some(_)) => {
                return Err(format!("rule {n}: use either equals or matches, not both"));
            }
            (Some(v), None) => Test::Equals(v),
            (None, Some(pattern)) => Test::Matches(
                compile(&pattern)
                    .map_err(|e| format!("rule {n}: invalid regex {pattern:?}: {e}"))?,
            ),
            (None, None) => Test::Present,
        };
        if matches!(source, Source::PathPrefix(_)) && !matches!(test, Test::Present) {
            return Err(format!("rule {n}: path_prefix takes no equals or matches"));
        }

        let upstream = match r.upstream {
            Some(u) if !u.is_empty() => u,
            _ => return Err(format!("rule {n}: upstream is required")),
        };
        Ok(Self {
            source,
            test,
            upstream,
        })
    }

    /// Whether this rule matches `req`.
    pub fn matches(&self, req: &Request) -> bool {
        match &self.source {
            Source::Header(name) => req.headers().get_all(name).any(|v| self.test.check(v)),
            Source::Cookie(name) => req
                .cookie(name)
                .is_some_and(|v| self.test.check(v.as_bytes())),
            Source::Query(name) => req
                .query_param(name)
                .is_some_and(|v| self.test.check(v.as_bytes())),
            Source::PathPrefix(prefix) => req.path().starts_with(prefix.as_str()),
        }
    }
}

/// The upstream of the first rule matching `req`, if any.
pub fn pick<'a>(rules: &'a [Rule], req: &Request) -> Option<&'a str> {
    rules
        .iter()
        .find(|r| r.matches(req))
        .map(|r| r.upstream.as_str())
}

pub struct Router {
    rules: Vec<Rule>,
}

#[plugin]
impl Plugin for Router {
    type Config = Config;

    fn new(cfg: Config) -> Result<Self, String> {
        if cfg.rules.is_empty() {
            return Err("rules: at least one rule is required".into());
        }
        let rules = cfg
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| Rule::from_config(i + 1, r))
            .collect::<Result<_, _>>()?;
        Ok(Self { rules })
    }

    fn on_request(&self, _: &mut (), _client: &Client, req: &mut Request) -> Action {
        if let Some(upstream) = pick(&self.rules, req) {
            req.set_upstream(upstream);
        }
        Action::Continue
    }
}

sluice_sdk::export_plugin!(Router);

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{"rules": [
        {"header": "X-Canary", "equals": "1", "upstream": "canary"},
        {"cookie": "beta", "equals": "yes", "upstream": "b"},
        {"path_prefix": "/v2/", "upstream": "v2"},
        {"query": "ver", "equals": "2", "upstream": "v2"},
        {"header": "x-user", "matches": "^admin-", "upstream": "admin"},
        {"header": "x-any", "upstream": "any"}
    ]}"#;

    fn route(req: Request) -> Option<String> {
        let p = match Router::from_json(EXAMPLE) {
            Ok(p) => p,
            Err(e) => panic!("config rejected: {e}"),
        };
        let mut req = req;
        assert_eq!(
            p.on_request(&mut (), &Client::default(), &mut req),
            Action::Continue
        );
        req.upstream().map(str::to_owned)
    }

    fn get(target: &str) -> Request {
        Request::new("GET", target)
    }

    #[test]
    fn each_kind_matches() {
        assert_eq!(
            route(get("/").with_header("x-canary", "1")).as_deref(),
            Some("canary")
        );
        assert_eq!(route(get("/").with_header("x-canary", "0")), None);
        assert_eq!(
            route(get("/").with_header("cookie", "a=1; beta=yes")).as_deref(),
            Some("b")
        );
        assert_eq!(route(get("/").with_header("cookie", "beta=no")), None);
        assert_eq!(route(get("/v2/users")).as_deref(), Some("v2"));
        assert_eq!(route(get("/v2")), None);
        assert_eq!(route(get("/?ver=2")).as_deref(), Some("v2"));
        assert_eq!(route(get("/?ver=3")), None);
        assert_eq!(
            route(get("/").with_header("x-user", "admin-7")).as_deref(),
            Some("admin")
        );
        assert_eq!(route(get("/").with_header("x-user", "user-admin-7")), None);
        assert_eq!(
            route(get("/").with_header("x-any", "")).as_deref(),
            Some("any")
        );
        assert_eq!(route(get("/")), None);
    }

    #[test]
    fn first_match_wins() {
        let req = get("/v2/x?ver=2").with_header("x-canary", "1");
        assert_eq!(route(req).as_deref(), Some("canary"));
        let req = get("/v2/x").with_header("cookie", "beta=yes");
        assert_eq!(route(req).as_deref(), Some("b"));
    }

    #[test]
    fn any_header_value_counts() {
        let req = get("/")
            .with_header("x-canary", "0")
            .with_header("x-canary", "1");
        assert_eq!(route(req).as_deref(), Some("canary"));
    }

    #[test]
    fn raw_header_bytes_can_match() {
        let p = match Router::from_json(
            r#"{"rules": [{"header": "x-bin", "matches": "^\\xFF", "upstream": "bin"}]}"#,
        ) {
            Ok(p) => p,
            Err(e) => panic!("config rejected: {e}"),
        };
        let mut req = get("/").with_header("x-bin", vec![0xff, 0x01]);
        p.on_request(&mut (), &Client::default(), &mut req);
        assert_eq!(req.upstream(), Some("bin"));
    }

    #[test]
    fn validation_messages() {
        let err = |rules: &str| {
            Router::from_json(&format!(
                r#"{{"rules": [{{"header": "a", "upstream": "u"}}, {rules}]}}"#
            ))
            .err()
            .unwrap_or_default()
        };
        assert_eq!(
            err(r#"{"header": "a", "cookie": "b", "upstream": "u"}"#),
            "rule 2: needs exactly one of header, cookie, query, path_prefix (found header, cookie)"
        );
        assert_eq!(
            err(r#"{"upstream": "u"}"#),
            "rule 2: needs exactly one of header, cookie, query, path_prefix (found none)"
        );
        assert_eq!(
            err(r#"{"query": "a", "equals": "1", "matches": "x", "upstream": "u"}"#),
            "rule 2: use either equals or matches, not both"
        );
        assert!(err(r#"{"query": "a", "matches": "(", "upstream": "u"}"#)
            .starts_with("rule 2: invalid regex \"(\""));
        assert_eq!(
            err(r#"{"path_prefix": "/a", "equals": "1", "upstream": "u"}"#),
            "rule 2: path_prefix takes no equals or matches"
        );
        assert_eq!(err(r#"{"cookie": "a"}"#), "rule 2: upstream is required");
        assert!(err(r#"{"cookie": "a", "upstream": "u", "equal": "1"}"#)
            .contains("unknown field `equal`"));
        assert_eq!(
            Router::from_json(r#"{"rules": []}"#)
                .err()
                .unwrap_or_default(),
            "rules: at least one rule is required"
        );
        assert!(Router::from_json("{}")
            .err()
            .unwrap_or_default()
            .starts_with("invalid config: missing field `rules`"));
    }
}
