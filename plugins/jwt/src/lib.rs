//! `jwt`: lets a request through only with a valid JWT (RFC 7519) bearer token, signed
//! by a key of a JWKS (RFC 7517) given inline or fetched from an upstream through the
//! outbound call service and kept in the state service. Chosen claims become request
//! headers. See README.md for the config.

mod claims;
mod keys;
mod token;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use sluice_sdk::crypto::{verify_signature, SignatureAlgorithm};
use sluice_sdk::outbound::Call;
use sluice_sdk::prelude::*;
use sluice_sdk::{now_ms, state};

use claims::{ClaimRules, Claims};
use keys::{KeySet, Lookup};
use token::Token;

/// Longest token accepted; real ones are well under 2 KB.
const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// At most one refetch of the JWKS for an unknown `kid` in this long.
const UNKNOWN_KID_REFETCH: Duration = Duration::from_secs(30);
/// At most one attempt to refresh a stale or missing JWKS in this long.
const REFRESH_GAP: Duration = Duration::from_secs(5);
/// A fetched JWKS is fresh for its `max-age`, within these bounds (300 s without one).
const MIN_FRESH_S: u64 = 30;
const DEFAULT_FRESH_S: u64 = 300;
const MAX_FRESH_S: u64 = 86_400;
/// After it goes stale a JWKS is still used, for this long, while its upstream fails.
const STALE_GRACE_S: u64 = 86_400;
/// Longest `jwks_upstream` + `jwks_path`: they name the state keys (at most 256 bytes).
const MAX_SOURCE_BYTES: usize = 200;

#[config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Accepted algorithms; required.
    algorithms: Vec<String>,
    /// Inline keys: `{ keys = [ ... ] }`.
    #[serde(default)]
    jwks: Option<sluice_sdk::serde_json::Value>,
    /// Upstream serving the JWKS; also listed in the route entry's `outbound`.
    #[serde(default)]
    jwks_upstream: Option<String>,
    #[serde(default = "default_jwks_path")]
    jwks_path: String,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    audience: Option<Audience>,
    #[serde(default = "default_true")]
    require_exp: bool,
    #[serde(default = "default_leeway")]
    leeway_s: u64,
    #[serde(default)]
    required_claims: Vec<String>,
    #[serde(default)]
    claims_to_headers: BTreeMap<String, String>,
    /// Also take the token from this cookie when there is no `Authorization: Bearer`.
    #[serde(default)]
    cookie: Option<String>,
    #[serde(default)]
    realm: Option<String>,
    /// Seconds a verified signature is remembered (per token and key), 0 for never.
    #[serde(default = "default_verified_cache_s")]
    verified_cache_s: u64,
}

#[derive(Debug, Deserialize)]
#[serde(crate = "sluice_sdk::serde", untagged)]
enum Audience {
    One(String),
    Any(Vec<String>),
}

fn default_jwks_path() -> String {
    "/.well-known/jwks.json".into()
}

fn default_true() -> bool {
    true
}

fn default_leeway() -> u64 {
    30
}

fn default_verified_cache_s() -> u64 {
    60
}

/// Where the keys come from.
enum KeySource {
    Inline(KeySet),
    Fetched {
        upstream: String,
        path: String,
        /// State keys, per source (the state service keeps keys per plugin, shared by
        /// its routes): the stored JWKS and the gates of its refetches.
        stored_key: String,
        refresh_gate: String,
        kid_gate: String,
    },
}

pub struct Jwt {
    algorithms: Vec<SignatureAlgorithm>,
    source: KeySource,
    rules: ClaimRules,
    claims_to_headers: Vec<(String, String)>,
    cookie: Option<String>,
    realm: Option<String>,
    verified_cache: Option<Duration>,
    /// The last fetched JWKS as stored and its parsed keys, so a reused instance
    /// parses each JWKS once.
    parsed: RefCell<Option<(Vec<u8>, KeySet)>>,
}

/// Why a request does not pass.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No bearer token (`invalid_request`).
    NoToken,
    /// A token that is not valid (`invalid_token`); the reason goes to the log only.
    Invalid(String),
    /// No keys to check it with: the JWKS could not be fetched.
    NoKeys(String),
}

fn algorithm(name: &str) -> Result<SignatureAlgorithm, String> {
    if name.eq_ignore_ascii_case("none") {
        return Err("\"none\" is never accepted: an unsigned token proves nothing".into());
    }
    SignatureAlgorithm::from_name(name).ok_or_else(|| {
        format!("{name:?} is not one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512")
    })
}

#[plugin]
impl Plugin for Jwt {
    type Config = Config;

    fn new(cfg: Config) -> Result<Self, String> {
        if cfg.algorithms.is_empty() {
            return Err("algorithms: list the accepted algorithms, e.g. [\"RS256\"]".into());
        }
        let algorithms = cfg
            .algorithms
            .iter()
            .enumerate()
            .map(|(i, a)| algorithm(a).map_err(|e| format!("algorithms[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let source = match (cfg.jwks, cfg.jwks_upstream) {
            (Some(_), Some(_)) => {
                return Err("jwks and jwks_upstream: give the keys one way, not both".into())
            }
            (None, None) => {
                return Err(
                    "jwks or jwks_upstream: the keys are required (inline, or an upstream serving them)"
                        .into(),
                )
            }
            (Some(jwks), None) => {
                let set = KeySet::from_config(&jwks).map_err(|e| format!("jwks: {e}"))?;
                if !algorithms.iter().any(|a| set.has_key_for(*a)) {
                    return Err("jwks: no key can verify any of the accepted algorithms".into());
                }
                KeySource::Inline(set)
            }
            (None, Some(upstream)) => {
                if upstream.is_empty() {
                    return Err("jwks_upstream: must name an upstream".into());
                }
                if !cfg.jwks_path.starts_with('/') || cfg.jwks_path.starts_with("//") {
                    return Err(format!(
                        "jwks_path: {:?} must start with a single '/'",
                        cfg.jwks_path
                    ));
                }
                let source = format!("{upstream}{}", cfg.jwks_path);
                if source.len() > MAX_SOURCE_BYTES {
                    return Err(format!(
                        "jwks_upstream and jwks_path: over {MAX_SOURCE_BYTES} bytes together"
                    ));
                }
                KeySource::Fetched {
                    stored_key: format!("jwks:{source}"),
                    refresh_gate: format!("jwks-refresh:{source}"),
                    kid_gate: format!("jwks-kid:{source}"),
                    upstream,
                    path: cfg.jwks_path,
                }
            }
        };
        if cfg.leeway_s > 600 {
            return Err(format!(
                "leeway_s: {} is over 600; clocks that far apart need fixing",
                cfg.leeway_s
            ));
        }
        let audience = match cfg.audience {
            None => None,
            Some(Audience::One(a)) => Some(vec![a]),
            Some(Audience::Any(list)) if list.is_empty() => {
                return Err("audience: an empty list would accept no token".into())
            }
            Some(Audience::Any(list)) => Some(list),
        };
        let mut claims_to_headers = Vec::new();
        for (claim, header) in cfg.claims_to_headers {
            let header = header.to_ascii_lowercase();
            if !Headers::is_valid_name(&header) || header == "host" || header == "authorization" {
                return Err(format!(
                    "claims_to_headers.{claim}: {header:?} is not a header name the plugin may set"
                ));
            }
            claims_to_headers.push((claim, header));
        }
        if cfg.verified_cache_s > 3600 {
            return Err("verified_cache_s: at most 3600".into());
        }
        if cfg.cookie.as_deref() == Some("") {
            return Err("cookie: the cookie name must not be empty".into());
        }
        if let Some(realm) = &cfg.realm {
            if realm.contains(['"', '\\']) || !Headers::is_valid_value(realm.as_bytes()) {
                return Err(format!(
                    "realm: {realm:?} must be plain text without quotes"
                ));
            }
        }
        Ok(Self {
            algorithms,
            source,
            rules: ClaimRules {
                issuer: cfg.issuer,
                audience,
                require_exp: cfg.require_exp,
                leeway_s: cfg.leeway_s,
                required: cfg.required_claims,
            },
            claims_to_headers,
            cookie: cfg.cookie,
            realm: cfg.realm,
            verified_cache: (cfg.verified_cache_s > 0)
                .then(|| Duration::from_secs(cfg.verified_cache_s)),
            parsed: RefCell::new(None),
        })
    }

    fn on_request(&self, _: &mut (), _: &Client, req: &mut Request) -> Action {
        // The headers the claims fill are the plugin's: a client's copy never passes.
        for (_, header) in &self.claims_to_headers {
            req.remove_header(header);
        }
        let claims = match self.verify_request(req) {
            Ok(claims) => claims,
            Err(refusal) => return Action::Respond(self.refuse(refusal)),
        };
        for (claim, header) in &self.claims_to_headers {
            match claims.header_value(claim) {
                Some(value) if Headers::is_valid_value(value.as_bytes()) => {
                    req.set_header(header, value)
                }
                Some(_) => {
                    return Action::Respond(self.refuse(Refusal::Invalid(format!(
                        "claim {claim:?} cannot be a header value"
                    ))))
                }
                None => {}
            }
        }
        Action::Continue
    }
}

impl Jwt {
    /// The token of a request: `Authorization: Bearer`, else the configured cookie.
    pub fn token<'r>(&self, req: &'r Request) -> Option<&'r str> {
        if let Some(value) = req.header("authorization") {
            let (scheme, token) = value.split_once(' ')?;
            return scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim())
                .filter(|t| !t.is_empty());
        }
        self.cookie
            .as_deref()
            .and_then(|name| req.cookie(name))
            .filter(|t| !t.is_empty())
    }

    /// The verified claims of the request's token.
    pub fn verify_request(&self, req: &Request) -> Result<Claims, Refusal> {
        let token = self.token(req).ok_or(Refusal::NoToken)?;
        self.verify(token, now_ms() / 1000)
    }

    /// Checks `token`'s signature and claims at `now_s`.
    pub fn verify(&self, token: &str, now_s: u64) -> Result<Claims, Refusal> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refusal::Invalid(format!(
                "token of {} bytes, over {MAX_TOKEN_BYTES}",
                token.len()
            )));
        }
        let token = Token::parse(token).map_err(Refusal::Invalid)?;
        if !self.algorithms.contains(&token.alg) {
            return Err(Refusal::Invalid(format!(
                "algorithm {} is not accepted",
                token.alg.name()
            )));
        }
        let claims = match &self.source {
            KeySource::Inline(set) => check_with(set, &token, self.verified_cache)?,
            KeySource::Fetched {
                stored_key,
                refresh_gate,
                kid_gate,
                ..
            } => self.check_with_fetched(&token, stored_key, refresh_gate, kid_gate)?,
        };
        self.rules.check(&claims, now_s).map_err(Refusal::Invalid)?;
        Ok(claims)
    }

    /// Checks with the fetched JWKS: the stored copy, refreshed when stale (at most
    /// every few seconds) or when the token names an unknown key (at most every 30 s).
    fn check_with_fetched(
        &self,
        token: &Token,
        stored_key: &str,
        refresh_gate: &str,
        kid_gate: &str,
    ) -> Result<Claims, Refusal> {
        let now = now_ms();
        let stored = state::get(stored_key).unwrap_or_else(|e| {
            log::warn!("jwt: state unavailable: {e}");
            None
        });
        // Without a stored copy (the state down, or the JWKS too large for it), a
        // reused instance still has the JWKS it parsed last.
        let stored = stored.or_else(|| self.parsed.borrow().as_ref().map(|(raw, _)| raw.clone()));
        let stale = stored
            .as_deref()
            .is_none_or(|s| fresh_until(s).is_none_or(|until| until <= now));
        let stored = if stale && gate(refresh_gate, REFRESH_GAP, stored.is_none()) {
            self.refresh(stored_key).or(stored)
        } else {
            stored
        };
        let Some(stored) = stored else {
            return Err(Refusal::NoKeys("no JWKS could be fetched".into()));
        };
        match self.with_keys(&stored, |set| check_with(set, token, self.verified_cache)) {
            Err(Refusal::Invalid(reason)) if reason.starts_with(UNKNOWN_KID) => {
                if !gate(kid_gate, UNKNOWN_KID_REFETCH, false) {
                    return Err(Refusal::Invalid(reason));
                }
                match self.refresh(stored_key) {
                    Some(fresh) => {
                        self.with_keys(&fresh, |set| check_with(set, token, self.verified_cache))
                    }
                    None => Err(Refusal::Invalid(reason)),
                }
            }
            other => other,
        }
    }

    /// Runs `check` with the keys of a stored JWKS, parsed once per JWKS.
    fn with_keys(
        &self,
        stored: &[u8],
        check: impl FnOnce(&KeySet) -> Result<Claims, Refusal>,
    ) -> Result<Claims, Refusal> {
        let mut parsed = self.parsed.borrow_mut();
        if parsed
            .as_ref()
            .is_none_or(|(raw, _)| raw.as_slice() != stored)
        {
            let body = stored.get(8..).unwrap_or_default();
            let set = KeySet::from_fetched(body)
                .map_err(|e| Refusal::NoKeys(format!("stored JWKS unreadable: {e}")))?;
            *parsed = Some((stored.to_vec(), set));
        }
        match parsed.as_ref() {
            Some((_, set)) => check(set),
            None => Err(Refusal::NoKeys("no JWKS".into())),
        }
    }

    /// Fetches the JWKS, stores it with its freshness, and returns what was stored.
    fn refresh(&self, stored_key: &str) -> Option<Vec<u8>> {
        let KeySource::Fetched { upstream, path, .. } = &self.source else {
            return None;
        };
        let answer = match Call::get(upstream, path)
            .header("accept", "application/json")
            .send()
        {
            Ok(answer) if answer.status == 200 => answer,
            Ok(answer) => {
                log::warn!(
                    "jwt: JWKS from {upstream:?}{path} answered {}",
                    answer.status
                );
                return None;
            }
            Err(e) => {
                log::warn!("jwt: JWKS from {upstream:?}{path}: {e}");
                return None;
            }
        };
        if let Err(e) = KeySet::from_fetched(&answer.body) {
            log::warn!("jwt: JWKS from {upstream:?}{path} is not usable: {e}");
            return None;
        }
        let fresh_s = answer
            .headers
            .get("cache-control")
            .and_then(max_age)
            .unwrap_or(DEFAULT_FRESH_S)
            .clamp(MIN_FRESH_S, MAX_FRESH_S);
        let until = now_ms().saturating_add(fresh_s * 1000);
        let mut stored = until.to_be_bytes().to_vec();
        stored.extend_from_slice(&answer.body);
        let keep = Duration::from_secs(fresh_s + STALE_GRACE_S);
        if let Err(e) = state::set(stored_key, &stored, Some(keep)) {
            log::warn!("jwt: JWKS not stored: {e}");
        }
        Some(stored)
    }

    /// The 401 (or 503) for a refusal; the reason goes to the log, never the client.
    pub fn refuse(&self, refusal: Refusal) -> Reply {
        let realm = self
            .realm
            .as_deref()
            .map(|r| format!("realm=\"{r}\", "))
            .unwrap_or_default();
        let error = match refusal {
            Refusal::NoToken => "invalid_request",
            Refusal::Invalid(reason) => {
                log::info!("jwt: token refused: {reason}");
                "invalid_token"
            }
            Refusal::NoKeys(reason) => {
                log::warn!("jwt: cannot verify tokens: {reason}");
                return Reply::json(
                    503,
                    &json!({"error": "unavailable", "message": "authentication is unavailable"}),
                )
                .header("cache-control", "no-store");
            }
        };
        Reply::json(401, &json!({ "error": error }))
            .header(
                "www-authenticate",
                format!("Bearer {realm}error=\"{error}\""),
            )
            .header("cache-control", "no-store")
    }
}

const UNKNOWN_KID: &str = "unknown key id";

/// Verifies `token` with a key of `set` that fits its header, and reads its claims.
/// With `cache`, a signature verified under a key is remembered in the state service
/// (keyed by a hash of key and token, so a key leaving the JWKS takes its tokens with
/// it) for `cache` or until the token expires, whichever is sooner.
fn check_with(set: &KeySet, token: &Token, cache: Option<Duration>) -> Result<Claims, Refusal> {
    let kid = token.kid.as_deref();
    let candidates = match set.lookup(kid, token.alg) {
        Lookup::Keys(keys) => keys,
        Lookup::UnknownKid => {
            return Err(Refusal::Invalid(format!(
                "{UNKNOWN_KID} {:?}",
                kid.unwrap_or("")
            )))
        }
        Lookup::WrongType => {
            return Err(Refusal::Invalid(format!(
                "key {:?} is not a key for {}",
                kid.unwrap_or(""),
                token.alg.name()
            )))
        }
    };
    // Each candidate's state key, hashed once for the lookup and the store.
    let remembered: Vec<String> = match cache {
        Some(_) => candidates
            .iter()
            .map(|key| verified_key(&key.fingerprint, token))
            .collect(),
        None => Vec::new(),
    };
    if remembered
        .iter()
        .any(|state_key| matches!(state::get(state_key), Ok(Some(_))))
    {
        return token.claims().map_err(Refusal::Invalid);
    }
    let mut last = String::from("bad signature");
    for (i, key) in candidates.into_iter().enumerate() {
        match verify_signature(
            token.alg,
            &key.jwk,
            token.signed.as_bytes(),
            &token.signature,
        ) {
            Ok(true) => {
                let claims = token.claims().map_err(Refusal::Invalid)?;
                if let (Some(cache), Some(state_key)) = (cache, remembered.get(i)) {
                    remember(state_key, &claims, cache);
                }
                return Ok(claims);
            }
            Ok(false) => last = "bad signature".into(),
            Err(e) => last = e,
        }
    }
    Err(Refusal::Invalid(last))
}

/// The state key of a token verified under a key.
fn verified_key(fingerprint: &[u8; 16], token: &Token) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(fingerprint);
    hash.update(token.signed.as_bytes());
    hash.update([0]);
    hash.update(&token.signature);
    let digest = hash.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("ok:{hex}")
}

/// Remembers a verified token for `cache`, never past its `exp`.
fn remember(key: &str, claims: &Claims, cache: Duration) {
    let left = claims
        .0
        .get("exp")
        .and_then(|v| v.as_f64())
        .map(|exp| exp - (now_ms() / 1000) as f64);
    let ttl = match left {
        Some(left) if left < 1.0 => return,
        Some(left) => cache.min(Duration::from_secs(left as u64)),
        None => cache,
    };
    if let Err(e) = state::set(key, "1", Some(ttl)) {
        log::debug!("jwt: verified token not remembered: {e}");
    }
}

/// When a stored JWKS stops being fresh (ms), from its 8-byte prefix.
fn fresh_until(stored: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(stored.get(..8)?.try_into().ok()?))
}

/// `max-age` (or `s-maxage`) of a `Cache-Control` value; `no-cache`/`no-store` as 0.
pub fn max_age(value: &str) -> Option<u64> {
    let mut age = None;
    for directive in value.split(',') {
        let directive = directive.trim();
        let (name, arg) = directive.split_once('=').unwrap_or((directive, ""));
        match name.trim().to_ascii_lowercase().as_str() {
            "no-cache" | "no-store" => return Some(0),
            "s-maxage" => return arg.trim().trim_matches('"').parse().ok(),
            "max-age" => age = arg.trim().trim_matches('"').parse().ok(),
            _ => {}
        }
    }
    age
}

/// Whether this caller may go ahead, at most once per `gap` across every instance and
/// proxy sharing the state. With the state unavailable, `when_down` decides.
fn gate(key: &str, gap: Duration, when_down: bool) -> bool {
    match state::increment(key, 1, Some(gap)) {
        Ok(n) => n == 1,
        Err(_) => when_down,
    }
}

sluice_sdk::export_plugin!(Jwt);

#[cfg(test)]
mod tests;
