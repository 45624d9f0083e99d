//! `rewrite`: rewrites the request path (strip a prefix, regex rules, add a prefix) and
//! sets or removes request and response headers. See README.md for the config.

use std::borrow::Cow;
use std::collections::BTreeMap;

use regex::bytes::{Regex, RegexBuilder};
use sluice_sdk::prelude::*;

#[config]
#[derive(Debug, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    strip_prefix: Option<String>,
    add_prefix: Option<String>,
    regex: Vec<RegexConfig>,
    set_request_headers: BTreeMap<String, String>,
    remove_request_headers: Vec<String>,
    set_response_headers: BTreeMap<String, String>,
    remove_response_headers: Vec<String>,
}

#[config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct RegexConfig {
    pattern: String,
    replacement: String,
    /// Replace every match instead of the first.
    #[serde(default)]
    all: bool,
}

/// One compiled regex rule.
#[derive(Debug)]
pub struct RegexRule {
    re: Regex,
    replacement: String,
    all: bool,
}

/// Header changes for one direction: removals first, then sets.
#[derive(Debug, Default)]
pub struct HeaderEdits {
    remove: Vec<String>,
    set: Vec<(String, String)>,
}

impl HeaderEdits {
    fn from_config(
        what: &str,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    ) -> Result<Self, String> {
        for name in set.keys().chain(remove.iter()) {
            if !Headers::is_valid_name(name) {
                return Err(format!("{what}: {name:?} is not a valid header name"));
            }
        }
        for (name, value) in &set {
            if !Headers::is_valid_value(value.as_bytes()) {
                return Err(format!(
                    "{what}: value of {name:?} is not a valid header value"
                ));
            }
        }
        Ok(Self {
            remove: remove.into_iter().map(|n| n.to_ascii_lowercase()).collect(),
            set: set
                .into_iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v))
                .collect(),
        })
    }

    fn apply(&self, headers: &mut Headers) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.set(name, value);
        }
    }

    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty()
    }
}

#[derive(Debug)]
pub struct Rewrite {
    strip_prefix: Option<String>,
    add_prefix: Option<String>,
    rules: Vec<RegexRule>,
    request_headers: HeaderEdits,
    response_headers: HeaderEdits,
}

#[plugin]
impl Plugin for Rewrite {
    type Config = Config;

    fn new(cfg: Config) -> Result<Self, String> {
        let strip_prefix = cfg
            .strip_prefix
            .map(|p| normalize_prefix("strip_prefix", &p))
            .transpose()?;
        let add_prefix = cfg
            .add_prefix
            .map(|p| normalize_prefix("add_prefix", &p))
            .transpose()?;
        let rules = cfg
            .regex
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let re = compile(&r.pattern)
                    .map_err(|e| format!("regex[{i}]: invalid pattern {:?}: {e}", r.pattern))?;
                Ok(RegexRule {
                    re,
                    replacement: r.replacement,
                    all: r.all,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            strip_prefix,
            add_prefix,
            rules,
            request_headers: HeaderEdits::from_config(
                "set_request_headers/remove_request_headers",
                cfg.set_request_headers,
                cfg.remove_request_headers,
            )?,
            response_headers: HeaderEdits::from_config(
                "set_response_headers/remove_response_headers",
                cfg.set_response_headers,
                cfg.remove_response_headers,
            )?,
        })
    }

    fn on_request(&self, _: &mut (), _client: &Client, req: &mut Request) -> Action {
        if self.strip_prefix.is_some() || self.add_prefix.is_some() || !self.rules.is_empty() {
            let (path, extra_query) = rewrite_path(
                req.path(),
                self.strip_prefix.as_deref(),
                &self.rules,
                self.add_prefix.as_deref(),
            );
            if let Some(extra) = extra_query {
                let query = merge_query(&extra, req.query());
                req.set_query(query);
            }
            req.set_path(path);
        }
        self.request_headers.apply(req.headers_mut());
        Action::Continue
    }

    fn on_response(&self, _: &mut (), resp: &mut Response) -> ResponseAction {
        if !self.response_headers.is_empty() {
            self.response_headers.apply(resp.headers_mut());
        }
        ResponseAction::Continue
    }
}

/// Compiles a path regex. Paths are ASCII (non-ASCII arrives percent-encoded), so
/// Unicode mode is off by default: same matches, and several times cheaper to compile,
/// which keeps loads and reloads fast. `(?u)` turns it back on.
pub fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern).unicode(false).build()
}

/// Checks a prefix from config: must start with `/`; trailing slashes are dropped.
pub fn normalize_prefix(what: &str, prefix: &str) -> Result<String, String> {
    if !prefix.starts_with('/') {
        return Err(format!("{what}: {prefix:?} must start with '/'"));
    }
    if prefix.contains(['?', '#']) {
        return Err(format!("{what}: {prefix:?} must not contain '?' or '#'"));
    }
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(format!("{what}: {prefix:?} is the root; nothing to do"));
    }
    Ok(trimmed.to_owned())
}

/// Strips `prefix` (no trailing slash) from `path` at a segment boundary:
/// "/api" turns "/api/users" into "/users" and "/api" into "/", but leaves "/apix" alone.
pub fn strip_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    match path.strip_prefix(prefix)? {
        "" => Some("/"),
        rest if rest.starts_with('/') => Some(rest),
        _ => None,
    }
}

/// Applies strip, regex rules (in order) and add. A `?` produced by a regex replacement
/// splits off a query, returned separately.
pub fn rewrite_path(
    path: &str,
    strip: Option<&str>,
    rules: &[RegexRule],
    add: Option<&str>,
) -> (String, Option<String>) {
    let mut path = match strip.and_then(|p| strip_prefix(path, p)) {
        Some(rest) => rest.to_owned(),
        None => path.to_owned(),
    };
    for rule in rules {
        let replaced = if rule.all {
            rule.re
                .replace_all(path.as_bytes(), rule.replacement.as_bytes())
        } else {
            rule.re
                .replace(path.as_bytes(), rule.replacement.as_bytes())
        };
        if let Cow::Owned(p) = replaced {
            // Only a pattern that splits a multi-byte character can break UTF-8.
            path = match String::from_utf8(p) {
                Ok(p) => p,
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            };
        }
    }
    let mut query = None;
    if let Some(i) = path.find('?') {
        query = Some(path[i + 1..].to_owned());
        path.truncate(i);
    }
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    if let Some(add) = add {
        path.insert_str(0, add);
    }
    (path, query)
}

/// Query from a regex replacement first, then the original one (like nginx's `rewrite`).
pub fn merge_query(extra: &str, original: &str) -> String {
    match (extra.is_empty(), original.is_empty()) {
        (_, true) => extra.to_owned(),
        (true, false) => original.to_owned(),
        (false, false) => format!("{extra}&{original}"),
    }
}

sluice_sdk::export_plugin!(Rewrite);

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(json: &str) -> Rewrite {
        match Rewrite::from_json(json) {
            Ok(p) => p,
            Err(e) => panic!("config rejected: {e}"),
        }
    }

    fn run(p: &Rewrite, target: &str) -> Request {
        let mut req = Request::new("GET", target).with_header("x-drop", "1");
        assert_eq!(
            p.on_request(&mut (), &Client::default(), &mut req),
            Action::Continue
        );
        req
    }

    #[test]
    fn strip_at_segment_boundary() {
        assert_eq!(strip_prefix("/api/users", "/api"), Some("/users"));
        assert_eq!(strip_prefix("/api", "/api"), Some("/"));
        assert_eq!(strip_prefix("/api/", "/api"), Some("/"));
        assert_eq!(strip_prefix("/apix", "/api"), None);
        assert_eq!(strip_prefix("/v1/api", "/api"), None);
        assert_eq!(strip_prefix("/a/b/c", "/a/b"), Some("/c"));
    }

    #[test]
    fn prefixes_normalized() {
        assert_eq!(normalize_prefix("p", "/api/"), Ok("/api".into()));
        assert!(normalize_prefix("p", "api").is_err());
        assert!(normalize_prefix("p", "/").is_err());
        assert!(normalize_prefix("p", "/a?b").is_err());
    }

    #[test]
    fn strip_then_add() {
        let p = plugin(r#"{"strip_prefix": "/api/", "add_prefix": "/v1"}"#);
        assert_eq!(run(&p, "/api/users?x=1").path(), "/v1/users");
        assert_eq!(run(&p, "/api").path(), "/v1/");
        assert_eq!(run(&p, "/apix").path(), "/v1/apix");
        assert_eq!(run(&p, "/api/users?x=1").query(), "x=1");
    }

    #[test]
    fn order_is_strip_regex_add() {
        let p = plugin(
            r#"{"strip_prefix": "/api", "add_prefix": "/svc",
                "regex": [{"pattern": "^/users/(\\d+)$", "replacement": "/u/$1"},
                          {"pattern": "/u/", "replacement": "/user/"}]}"#,
        );
        assert_eq!(run(&p, "/api/users/42").path(), "/svc/user/42");
        assert_eq!(run(&p, "/api/users/x").path(), "/svc/users/x");
    }

    #[test]
    fn regex_all_and_query() {
        let p = plugin(
            r#"{"regex": [{"pattern": "/+", "replacement": "/", "all": true},
                          {"pattern": "^/old/(?P<id>[^/]+)$", "replacement": "/new?id=${id}"}]}"#,
        );
        assert_eq!(run(&p, "//a///b").path(), "/a/b");
        let r = run(&p, "/old/7?x=1");
        assert_eq!((r.path(), r.query()), ("/new", "id=7&x=1"));
        let r = run(&p, "/old/7");
        assert_eq!((r.path(), r.query()), ("/new", "id=7"));
    }

    #[test]
    fn ascii_by_default_unicode_on_request() {
        let p = plugin(r#"{"regex": [{"pattern": "^/(\\w+)/(?i:ab)$", "replacement": "/$1/x"}]}"#);
        assert_eq!(run(&p, "/a_1/AB").path(), "/a_1/x");
        assert!(compile(r"\p{Greek}").is_err());
        assert!(compile(r"(?u)\w+").is_ok());
        assert!(compile(r"(.*)").is_ok());
    }

    #[test]
    fn regex_result_gets_leading_slash() {
        let p = plugin(r#"{"regex": [{"pattern": "^/", "replacement": ""}]}"#);
        assert_eq!(run(&p, "/a").path(), "/a");
    }

    #[test]
    fn headers() {
        let p = plugin(
            r#"{"set_request_headers": {"X-Env": "prod", "x-drop": "kept"},
                "remove_request_headers": ["X-Drop", "x-none"],
                "set_response_headers": {"x-frame-options": "DENY"},
                "remove_response_headers": ["server"]}"#,
        );
        let req = run(&p, "/");
        assert_eq!(req.header("x-env"), Some("prod"));
        assert_eq!(req.header("x-drop"), Some("kept"), "set wins over remove");
        let mut resp = Response::new(200).with_header("server", "origin");
        assert_eq!(p.on_response(&mut (), &mut resp), ResponseAction::Continue);
        assert_eq!(resp.header("server"), None);
        assert_eq!(resp.header("x-frame-options"), Some("DENY"));
    }

    #[test]
    fn config_errors() {
        let err = |j| Rewrite::from_json(j).err().unwrap_or_default();
        let e = err(r#"{"regex": [{"pattern": "([a-", "replacement": ""}]}"#);
        assert!(e.starts_with("regex[0]: invalid pattern \"([a-\""), "{e}");
        assert!(err(r#"{"strip": "/a"}"#).contains("unknown field `strip`"));
        assert!(
            err(r#"{"regex": [{"pattern": "a", "replacement": "", "x": 1}]}"#)
                .contains("unknown field `x`")
        );
        assert!(err(r#"{"set_request_headers": {"a b": "1"}}"#).contains("not a valid header name"));
        assert!(err(r#"{"set_response_headers": {"a": "1\r\nb: 2"}}"#)
            .contains("not a valid header value"));
        assert!(Rewrite::from_json("{}").is_ok());
    }
}
