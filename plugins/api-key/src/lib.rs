//! `api-key`: lets a request through only if it carries one of the configured keys, in a
//! header or (optionally) a query parameter. See README.md for the config.

use sluice_sdk::form_decode;
use sluice_sdk::prelude::*;
use subtle::{Choice, ConstantTimeEq};

#[config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Accepted keys; at least one.
    keys: Vec<String>,
    /// Header carrying the key.
    #[serde(default = "default_header")]
    header: String,
    /// Query parameter carrying the key; off when absent.
    #[serde(default)]
    query: Option<String>,
    /// Realm named in `www-authenticate`.
    #[serde(default)]
    realm: Option<String>,
    /// Remove the key from the request before it goes upstream.
    #[serde(default = "default_strip")]
    strip: bool,
}

fn default_header() -> String {
    "x-api-key".into()
}

fn default_strip() -> bool {
    true
}

pub struct ApiKey {
    keys: Vec<Vec<u8>>,
    header: String,
    query: Option<String>,
    challenge: String,
    strip: bool,
}

#[plugin]
impl Plugin for ApiKey {
    type Config = Config;

    fn new(cfg: Config) -> Result<Self, String> {
        if cfg.keys.is_empty() {
            return Err("keys: at least one key is required".into());
        }
        if let Some(i) = cfg.keys.iter().position(|k| k.is_empty()) {
            return Err(format!("keys[{i}]: a key must not be empty"));
        }
        if !Headers::is_valid_name(&cfg.header) {
            return Err(format!(
                "header: {:?} is not a valid header name",
                cfg.header
            ));
        }
        if cfg.query.as_deref() == Some("") {
            return Err("query: the parameter name must not be empty".into());
        }
        let challenge = match &cfg.realm {
            Some(realm)
                if realm.contains(['"', '\\']) || !Headers::is_valid_value(realm.as_bytes()) =>
            {
                return Err(format!(
                    "realm: {realm:?} must be plain text without quotes"
                ));
            }
            Some(realm) => format!("ApiKey realm=\"{realm}\""),
            None => "ApiKey".into(),
        };
        Ok(Self {
            keys: cfg.keys.into_iter().map(String::into_bytes).collect(),
            header: cfg.header.to_ascii_lowercase(),
            query: cfg.query,
            challenge,
            strip: cfg.strip,
        })
    }

    fn on_request(&self, _: &mut (), _client: &Client, req: &mut Request) -> Action {
        // The header wins when both are sent; a wrong header is not retried via the query.
        let ok = match req.header_bytes(&self.header) {
            Some(given) => key_matches(&self.keys, given),
            None => match self.query.as_deref().and_then(|q| req.query_param(q)) {
                Some(given) => key_matches(&self.keys, given.as_bytes()),
                None => false,
            },
        };
        if !ok {
            return Action::Respond(unauthorized(&self.challenge));
        }
        if self.strip {
            req.remove_header(&self.header);
            if let Some(q) = &self.query {
                let stripped = strip_query_param(req.query(), q);
                req.set_query(stripped);
            }
        }
        Action::Continue
    }
}

/// The 401 sent for a missing or wrong key.
pub fn unauthorized(challenge: &str) -> Reply {
    Reply::json(
        401,
        &json!({"error": "unauthorized", "message": "missing or invalid API key"}),
    )
    .header("www-authenticate", challenge)
    .header("cache-control", "no-store")
}

/// Whether `given` equals one of `keys`. Every key is compared, in constant time for
/// equal lengths, so timing reveals at most whether some key has `given`'s length.
pub fn key_matches(keys: &[Vec<u8>], given: &[u8]) -> bool {
    let mut found = Choice::from(0);
    for key in keys {
        found |= key.as_slice().ct_eq(given);
    }
    found.into()
}

/// `query` without any `name` parameter (matched after form-decoding); other
/// parameters keep their original encoding and order.
pub fn strip_query_param(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|pair| {
            !pair.is_empty() && form_decode(pair.split_once('=').map_or(*pair, |(k, _)| k)) != name
        })
        .collect::<Vec<_>>()
        .join("&")
}

sluice_sdk::export_plugin!(ApiKey);

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(json: &str) -> ApiKey {
        match ApiKey::from_json(json) {
            Ok(p) => p,
            Err(e) => panic!("config rejected: {e}"),
        }
    }

    fn client() -> Client {
        Client::new("127.0.0.1", "http", "r")
    }

    fn status(a: &Action) -> Option<u16> {
        match a {
            Action::Continue => None,
            Action::Respond(r) => Some(r.status()),
        }
    }

    #[test]
    fn compare_every_key() {
        let keys = vec![b"k-123".to_vec(), b"other-key".to_vec()];
        assert!(key_matches(&keys, b"k-123"));
        assert!(key_matches(&keys, b"other-key"));
        assert!(!key_matches(&keys, b"k-124"));
        assert!(!key_matches(&keys, b"k-12"));
        assert!(!key_matches(&keys, b""));
        assert!(!key_matches(&[], b"k-123"));
    }

    #[test]
    fn config_validation() {
        let err = |j| ApiKey::from_json(j).err().unwrap_or_default();
        assert_eq!(err(r#"{"keys": []}"#), "keys: at least one key is required");
        assert!(err("{}").starts_with("invalid config: missing field `keys`"));
        assert!(err(r#"{"keys": ["a"], "hdr": "x"}"#).contains("unknown field `hdr`"));
        assert!(err(r#"{"keys": ["a", ""]}"#).starts_with("keys[1]"));
        assert!(err(r#"{"keys": ["a"], "header": "bad header"}"#).starts_with("header:"));
        assert!(err(r#"{"keys": ["a"], "query": ""}"#).starts_with("query:"));
        assert!(err(r#"{"keys": ["a"], "realm": "a\"b"}"#).starts_with("realm:"));
    }

    #[test]
    fn header_key() {
        let p = plugin(r#"{"keys": ["k-123"]}"#);
        let mut req = Request::new("GET", "/").with_header("X-Api-Key", "k-123");
        assert_eq!(status(&p.on_request(&mut (), &client(), &mut req)), None);
        assert_eq!(req.header("x-api-key"), None, "stripped by default");

        let mut req = Request::new("GET", "/").with_header("x-api-key", "nope");
        let action = p.on_request(&mut (), &client(), &mut req);
        let Action::Respond(reply) = action else {
            panic!("expected 401")
        };
        assert_eq!(reply.status(), 401);
        assert_eq!(
            reply.headers().get("content-type"),
            Some("application/json")
        );
        assert_eq!(reply.headers().get("www-authenticate"), Some("ApiKey"));
        assert_eq!(
            reply.body_bytes(),
            br#"{"error":"unauthorized","message":"missing or invalid API key"}"#
        );

        let mut req = Request::new("GET", "/");
        assert_eq!(
            status(&p.on_request(&mut (), &client(), &mut req)),
            Some(401)
        );
    }

    #[test]
    fn query_key_and_strip() {
        let p =
            plugin(r#"{"keys": ["k 1"], "query": "api_key", "header": "X-Key", "realm": "api"}"#);
        let mut req = Request::new("GET", "/x?a=1&api_key=k+1&b=%20");
        assert_eq!(status(&p.on_request(&mut (), &client(), &mut req)), None);
        assert_eq!(req.query(), "a=1&b=%20");

        // A present but wrong header is not rescued by a good query key.
        let mut req = Request::new("GET", "/x?api_key=k+1").with_header("x-key", "bad");
        let Action::Respond(reply) = p.on_request(&mut (), &client(), &mut req) else {
            panic!("expected 401")
        };
        assert_eq!(
            reply.headers().get("www-authenticate"),
            Some("ApiKey realm=\"api\"")
        );
    }

    #[test]
    fn no_strip_keeps_key() {
        let p = plugin(r#"{"keys": ["k"], "query": "key", "strip": false}"#);
        let mut req = Request::new("GET", "/?key=k").with_header("x-other", "1");
        assert_eq!(status(&p.on_request(&mut (), &client(), &mut req)), None);
        assert_eq!(req.query(), "key=k");
        let mut req = Request::new("GET", "/").with_header("x-api-key", "k");
        assert_eq!(status(&p.on_request(&mut (), &client(), &mut req)), None);
        assert_eq!(req.header("x-api-key"), Some("k"));
    }

    #[test]
    fn strip_query() {
        assert_eq!(strip_query_param("api_key=1", "api_key"), "");
        assert_eq!(strip_query_param("a&api_key&b=2", "api_key"), "a&b=2");
        assert_eq!(strip_query_param("api%5Fkey=1&x=1&&", "api_key"), "x=1");
        assert_eq!(strip_query_param("", "api_key"), "");
    }
}
