//! `basic-auth`: HTTP Basic authentication (RFC 7617) against argon2id or bcrypt
//! password hashes, which the proxy checks on threads of its own (the crypto service).
//! Failures are counted per user and per client IP in the state service, so a guesser
//! is throttled on every proxy sharing it. See README.md for the config.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sluice_sdk::crypto::{verify_password, PasswordError};
use sluice_sdk::prelude::*;
use sluice_sdk::state;
use std::time::Duration;
use subtle::{Choice, ConstantTimeEq};

/// Longest user name (it names state keys).
const MAX_NAME_BYTES: usize = 128;

#[config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    users: Vec<User>,
    #[serde(default = "default_realm")]
    realm: String,
    /// Failures per user, and per client IP, within `failure_window_s` before their
    /// attempts are refused unchecked.
    #[serde(default = "default_max_failures")]
    max_failures: u32,
    #[serde(default = "default_failure_window_s")]
    failure_window_s: u64,
    /// The upstream gets the user's name in this header (a client's copy never).
    #[serde(default)]
    user_header: Option<String>,
    /// Remove `Authorization` before the request goes upstream.
    #[serde(default)]
    hide_credentials: bool,
    /// With the state service down failures cannot be counted: `deny` answers 503.
    #[serde(default)]
    on_unavailable: OnUnavailable,
}

#[config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct User {
    name: String,
    password_hash: String,
}

#[config]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnUnavailable {
    /// Answer 503: no unthrottled guessing.
    #[default]
    Deny,
    /// Check the password without counting failures.
    Allow,
}

fn default_realm() -> String {
    "Restricted".into()
}

fn default_max_failures() -> u32 {
    10
}

fn default_failure_window_s() -> u64 {
    300
}

pub struct BasicAuth {
    users: Vec<(Vec<u8>, String)>,
    challenge: String,
    max_failures: u32,
    window: Duration,
    user_header: Option<String>,
    hide_credentials: bool,
    on_unavailable: OnUnavailable,
}

/// A PHC string the proxy's password service takes (it checks the costs again).
fn check_hash(hash: &str) -> Result<(), String> {
    if let Some(rest) = ["$2a$", "$2b$", "$2y$"]
        .iter()
        .find_map(|p| hash.strip_prefix(p))
    {
        let cost: u32 = rest
            .get(..2)
            .and_then(|c| c.parse().ok())
            .ok_or("a bcrypt hash needs its cost")?;
        if !(4..=15).contains(&cost) || hash.len() != 60 {
            return Err("a bcrypt hash is 60 characters with a cost from 4 to 15".into());
        }
        return Ok(());
    }
    if hash.starts_with("$argon2id$") || hash.starts_with("$argon2i$") {
        return Ok(());
    }
    Err("not an argon2id ($argon2id$...) or bcrypt ($2b$...) hash".into())
}

#[plugin]
impl Plugin for BasicAuth {
    type Config = Config;

    fn new(cfg: Config) -> Result<Self, String> {
        if cfg.users.is_empty() {
            return Err("users: at least one user is required".into());
        }
        let mut users: Vec<(Vec<u8>, String)> = Vec::with_capacity(cfg.users.len());
        for (i, user) in cfg.users.into_iter().enumerate() {
            if user.name.is_empty() || user.name.contains(':') || user.name.len() > MAX_NAME_BYTES {
                return Err(format!(
                    "users[{i}].name: {:?} must be 1 to {MAX_NAME_BYTES} bytes without ':'",
                    user.name
                ));
            }
            if users.iter().any(|(n, _)| n == user.name.as_bytes()) {
                return Err(format!("users[{i}].name: {:?} appears twice", user.name));
            }
            check_hash(&user.password_hash)
                .map_err(|e| format!("users[{i}].password_hash: {e}"))?;
            users.push((user.name.into_bytes(), user.password_hash));
        }
        if cfg.realm.is_empty()
            || cfg.realm.contains(['"', '\\'])
            || !Headers::is_valid_value(cfg.realm.as_bytes())
        {
            return Err(format!(
                "realm: {:?} must be plain text without quotes",
                cfg.realm
            ));
        }
        if cfg.max_failures == 0 {
            return Err("max_failures: must be at least 1".into());
        }
        if !(1..=86_400).contains(&cfg.failure_window_s) {
            return Err("failure_window_s: must be from 1 to 86400".into());
        }
        let user_header = match cfg.user_header {
            Some(h) if !Headers::is_valid_name(&h) || h.eq_ignore_ascii_case("authorization") => {
                return Err(format!(
                    "user_header: {h:?} is not a header name the plugin may set"
                ))
            }
            other => other.map(|h| h.to_ascii_lowercase()),
        };
        Ok(Self {
            users,
            challenge: format!("Basic realm=\"{}\", charset=\"UTF-8\"", cfg.realm),
            max_failures: cfg.max_failures,
            window: Duration::from_secs(cfg.failure_window_s),
            user_header,
            hide_credentials: cfg.hide_credentials,
            on_unavailable: cfg.on_unavailable,
        })
    }

    fn on_request(&self, _: &mut (), client: &Client, req: &mut Request) -> Action {
        if let Some(header) = &self.user_header {
            req.remove_header(header);
        }
        let Some((name, password)) = req.header_bytes("authorization").and_then(credentials) else {
            return Action::Respond(self.unauthorized());
        };
        let keys = [
            format!("fail-ip:{}", client.ip()),
            format!("fail-user:{}", String::from_utf8_lossy(&name)),
        ];
        match self.throttled(&keys) {
            Ok(false) => {}
            Ok(true) => {
                log::info!(
                    "basic-auth: throttled {:?} from {}",
                    String::from_utf8_lossy(&name),
                    client.ip()
                );
                return Action::Respond(throttled(self.window));
            }
            Err(e) if self.on_unavailable == OnUnavailable::Deny => {
                log::warn!("basic-auth: state unavailable, refusing: {e}");
                return Action::Respond(unavailable());
            }
            Err(e) => log::warn!("basic-auth: state unavailable, failures not counted: {e}"),
        }
        let (user, hash) = self.find(&name);
        // An unknown user costs a real check too, so timing does not tell users apart.
        let matched = match verify_password(hash, &password) {
            Ok(matched) => matched && user.is_some(),
            Err(PasswordError::Busy) => {
                log::warn!("basic-auth: password checks are busy");
                return Action::Respond(unavailable().header("retry-after", "1"));
            }
            Err(e) => {
                log::error!("basic-auth: {e}");
                return Action::Respond(unavailable());
            }
        };
        let Some(user) = user.filter(|_| matched) else {
            for key in &keys {
                if let Err(e) = state::increment(key, 1, Some(self.window)) {
                    log::warn!("basic-auth: failure not counted: {e}");
                }
            }
            return Action::Respond(self.unauthorized());
        };
        if self.hide_credentials {
            req.remove_header("authorization");
        }
        if let Some(header) = &self.user_header {
            req.set_header(header, user);
        }
        Action::Continue
    }
}

impl BasicAuth {
    /// The user named `name` and its hash; for an unknown name, no user and the first
    /// user's hash. Every name is compared, in constant time for equal lengths.
    fn find(&self, name: &[u8]) -> (Option<&[u8]>, &str) {
        let mut found: Option<usize> = None;
        for (i, (candidate, _)) in self.users.iter().enumerate() {
            let equal: Choice = candidate.as_slice().ct_eq(name);
            if bool::from(equal) {
                found = Some(i);
            }
        }
        match found {
            Some(i) => (Some(self.users[i].0.as_slice()), &self.users[i].1),
            None => (None, &self.users[0].1),
        }
    }

    /// Whether either failure count has reached the limit.
    fn throttled(&self, keys: &[String]) -> Result<bool, state::StateError> {
        for key in keys {
            let count = state::get(key)?
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            if count >= u64::from(self.max_failures) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The 401 with the Basic challenge.
    pub fn unauthorized(&self) -> Reply {
        Reply::json(401, &json!({"error": "unauthorized"}))
            .header("www-authenticate", self.challenge.as_str())
            .header("cache-control", "no-store")
    }
}

/// User and password of a `Basic` credential (RFC 7617); `None` for anything else.
pub fn credentials(header: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let text = std::str::from_utf8(header).ok()?;
    let (scheme, encoded) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    let (name, password) = (decoded[..colon].to_vec(), decoded[colon + 1..].to_vec());
    (!name.is_empty()).then_some((name, password))
}

fn throttled(window: Duration) -> Reply {
    Reply::json(429, &json!({"error": "too_many_attempts"}))
        .header("retry-after", window.as_secs().to_string())
        .header("cache-control", "no-store")
}

fn unavailable() -> Reply {
    Reply::json(
        503,
        &json!({"error": "unavailable", "message": "authentication is unavailable"}),
    )
    .header("cache-control", "no-store")
}

sluice_sdk::export_plugin!(BasicAuth);

#[cfg(test)]
mod tests {
    use super::*;

    const BCRYPT: &str = "$2b$10$SSmakPLiUSILJ.GPGegniOZW506mLV4FaP6tc1G8pqFlgwlVGGLby";
    const ARGON: &str = "$argon2id$v=19$m=19456,t=2,p=1$E5v32cd33Ocot7u8tvZLZg$MdTWCPsfDUeVb+SHarOLZ7qEDsLKLVtIfhMZy1Ja9lo";

    fn plugin(json: &str) -> BasicAuth {
        match BasicAuth::from_json(json) {
            Ok(p) => p,
            Err(e) => panic!("config rejected: {e}"),
        }
    }

    fn users() -> String {
        format!(
            r#"{{"users":[{{"name":"alice","password_hash":"{BCRYPT}"}},{{"name":"bob","password_hash":"{ARGON}"}}]}}"#
        )
    }

    #[test]
    fn credentials_are_read_as_rfc_7617_says() {
        let basic = |s: &str| format!("Basic {}", STANDARD.encode(s));
        assert_eq!(
            credentials(basic("alice:pa:ss").as_bytes()),
            Some((b"alice".to_vec(), b"pa:ss".to_vec()))
        );
        assert_eq!(
            credentials(format!("bAsIc  {}", STANDARD.encode("a:")).as_bytes()),
            Some((b"a".to_vec(), Vec::new()))
        );
        assert_eq!(credentials(basic("no-colon").as_bytes()), None);
        assert_eq!(credentials(basic(":pw").as_bytes()), None);
        assert_eq!(credentials(b"Bearer abc"), None);
        assert_eq!(credentials(b"Basic !!!"), None);
    }

    #[test]
    fn users_are_found_and_unknown_ones_still_get_a_hash() {
        let p = plugin(&users());
        assert_eq!(p.find(b"bob"), (Some(&b"bob"[..]), ARGON));
        assert_eq!(p.find(b"alice"), (Some(&b"alice"[..]), BCRYPT));
        assert_eq!(p.find(b"mallory"), (None, BCRYPT));
        assert_eq!(p.find(b"alic"), (None, BCRYPT));
    }

    #[test]
    fn the_challenge_names_the_realm_and_charset() {
        let p = plugin(&users().replace("]}", "],\"realm\":\"ops\"}"));
        let r = p.unauthorized();
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers().get("www-authenticate"),
            Some("Basic realm=\"ops\", charset=\"UTF-8\"")
        );
    }

    #[test]
    fn a_request_fails_closed_without_the_proxy() {
        // Off the proxy no password can be checked: never a pass.
        let p = plugin(&users());
        let mut req = Request::new("GET", "/").with_header(
            "authorization",
            format!("Basic {}", STANDARD.encode("alice:pw")),
        );
        let client = Client::new("192.0.2.1", "http", "r");
        match p.on_request(&mut (), &client, &mut req) {
            Action::Respond(r) => assert_ne!(r.status(), 200),
            other => panic!("passed: {other:?}"),
        }
    }

    #[test]
    fn bad_configs_are_refused_with_the_key() {
        for (json, key) in [
            (r#"{"users":[]}"#.to_string(), "users"),
            (
                r#"{"users":[{"name":"a:b","password_hash":"x"}]}"#.into(),
                "users[0].name",
            ),
            (
                r#"{"users":[{"name":"a","password_hash":"plain"}]}"#.into(),
                "users[0].password_hash",
            ),
            (
                r#"{"users":[{"name":"a","password_hash":"$2b$31$abc"}]}"#.into(),
                "users[0].password_hash",
            ),
            (
                format!(
                    r#"{{"users":[{{"name":"a","password_hash":"{BCRYPT}"}},{{"name":"a","password_hash":"{BCRYPT}"}}]}}"#
                ),
                "twice",
            ),
            (users().replace("]}", "],\"realm\":\"a\\\"b\"}"), "realm"),
            (
                users().replace("]}", "],\"max_failures\":0}"),
                "max_failures",
            ),
            (
                users().replace("]}", "],\"failure_window_s\":0}"),
                "failure_window_s",
            ),
            (
                users().replace("]}", "],\"user_header\":\"authorization\"}"),
                "user_header",
            ),
            (
                users().replace("]}", "],\"on_unavailable\":\"maybe\"}"),
                "expected `deny` or `allow`",
            ),
            (users().replace("]}", "],\"relm\":\"x\"}"), "relm"),
        ] {
            let e = match BasicAuth::from_json(&json) {
                Ok(_) => panic!("accepted: {json}"),
                Err(e) => e,
            };
            assert!(e.contains(key), "{json}: {e}");
        }
    }
}
