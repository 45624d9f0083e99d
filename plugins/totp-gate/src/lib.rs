//! `totp-gate`: a password and one-time-code login in front of any web app, the
//! SecureVisit flow. Without a session a browser is sent to a login form; a right
//! password leads to a code form (RFC 6238); a right code starts a session: a signed
//! cookie whose id lives in the state service (so logout, and with Redis every proxy,
//! sees it). Failures lock a user; a used code cannot be used again. See README.md.

mod pages;
mod session;
mod totp;

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sluice_sdk::crypto::{verify_password, PasswordError};
use sluice_sdk::prelude::*;
use sluice_sdk::{form_decode, now_ms, state};
use subtle::ConstantTimeEq;

use session::{Kind, Signer};

const SESSION_COOKIE: &str = "sluice_session";
const PENDING_COOKIE: &str = "sluice_pending";
/// How long the code form may take after the password.
const PENDING_TTL_S: u64 = 300;
/// Login forms are small: a larger body is refused by the proxy (413).
const FORM_MAX_BYTES: u64 = 8 * 1024;
const MAX_NAME_BYTES: usize = 128;

#[config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    users: Vec<UserConfig>,
    session_secret: String,
    #[serde(default = "default_session_ttl_s")]
    session_ttl_s: u64,
    #[serde(default = "default_login_path")]
    login_path: String,
    #[serde(default = "default_max_failures")]
    max_failures: u32,
    #[serde(default = "default_lockout_s")]
    lockout_s: u64,
    #[serde(default = "default_user_header")]
    user_header: String,
}

#[config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    name: String,
    password_hash: String,
    totp_secret: String,
}

fn default_session_ttl_s() -> u64 {
    28_800
}
fn default_login_path() -> String {
    "/.sluice/login".into()
}
fn default_max_failures() -> u32 {
    5
}
fn default_lockout_s() -> u64 {
    300
}
fn default_user_header() -> String {
    "x-authenticated-user".into()
}

struct User {
    name: String,
    password_hash: String,
    secret: Vec<u8>,
}

pub struct TotpGate {
    users: Vec<User>,
    signer: Signer,
    session_ttl_s: u64,
    login_path: String,
    code_path: String,
    logout_path: String,
    max_failures: u32,
    lockout_s: u64,
    user_header: String,
}

/// Which form a request body carries.
#[derive(Default)]
pub enum Form {
    #[default]
    None,
    Password,
    Code {
        user: String,
        secure: bool,
    },
}

#[plugin]
impl Plugin for TotpGate {
    type Config = Config;
    type Context = Form;

    fn new(cfg: Config) -> Result<Self, String> {
        if cfg.users.is_empty() {
            return Err("users: at least one user is required".into());
        }
        let mut users: Vec<User> = Vec::new();
        for (i, u) in cfg.users.into_iter().enumerate() {
            if u.name.is_empty() || u.name.len() > MAX_NAME_BYTES || u.name.contains(':') {
                return Err(format!(
                    "users[{i}].name: {:?} must be 1 to {MAX_NAME_BYTES} bytes without ':'",
                    u.name
                ));
            }
            if users.iter().any(|known| known.name == u.name) {
                return Err(format!("users[{i}].name: {:?} appears twice", u.name));
            }
            if !(u.password_hash.starts_with("$argon2") || u.password_hash.starts_with("$2")) {
                return Err(format!(
                    "users[{i}].password_hash: not an argon2id ($argon2id$...) or bcrypt ($2b$...) hash"
                ));
            }
            let secret = totp::base32_decode(&u.totp_secret)
                .map_err(|e| format!("users[{i}].totp_secret: {e}"))?;
            if secret.len() < 10 {
                return Err(format!(
                    "users[{i}].totp_secret: {} bytes; RFC 4226 asks for at least 16 (10 at the very least)",
                    secret.len()
                ));
            }
            users.push(User {
                name: u.name,
                password_hash: u.password_hash,
                secret,
            });
        }
        let secret = STANDARD
            .decode(cfg.session_secret.trim())
            .map_err(|_| "session_secret: must be base64".to_string())?;
        if secret.len() < 32 {
            return Err(format!(
                "session_secret: {} bytes; at least 32 random bytes (e.g. `openssl rand -base64 32`)",
                secret.len()
            ));
        }
        if !(60..=30 * 86_400).contains(&cfg.session_ttl_s) {
            return Err("session_ttl_s: must be from 60 to 2592000 (30 days)".into());
        }
        let login = cfg.login_path.trim_end_matches('/').to_string();
        if !login.starts_with('/')
            || login.starts_with("//")
            || login.len() < 2
            || !login
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
        {
            return Err(format!(
                "login_path: {:?} must be a plain absolute path (letters, digits, / . _ -)",
                cfg.login_path
            ));
        }
        if cfg.max_failures == 0 {
            return Err("max_failures: must be at least 1".into());
        }
        if !(1..=86_400).contains(&cfg.lockout_s) {
            return Err("lockout_s: must be from 1 to 86400".into());
        }
        let user_header = cfg.user_header.to_ascii_lowercase();
        if !Headers::is_valid_name(&user_header) || user_header == "cookie" {
            return Err(format!(
                "user_header: {:?} is not a header name the plugin may set",
                cfg.user_header
            ));
        }
        Ok(Self {
            users,
            signer: Signer::new(secret),
            session_ttl_s: cfg.session_ttl_s,
            code_path: format!("{login}/code"),
            logout_path: format!("{login}/logout"),
            login_path: login,
            max_failures: cfg.max_failures,
            lockout_s: cfg.lockout_s,
            user_header,
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            on_request: true,
            on_request_body: true,
            ..Hooks::default()
        }
    }

    fn body_limits(&self) -> BodyLimits {
        BodyLimits {
            request_max: FORM_MAX_BYTES,
            ..BodyLimits::default()
        }
    }

    fn on_request(&self, form: &mut Form, client: &Client, req: &mut Request) -> Action {
        // The user header is the gate's word alone.
        req.remove_header(&self.user_header);
        let path = req.path().to_string();
        let method = req.method().to_string();
        let reading = matches!(method.as_str(), "GET" | "HEAD");
        if path == self.login_path {
            if reading {
                let next = safe_next(req.query_param("next").as_deref().unwrap_or("/"));
                return pages::login(200, &self.login_path, &next, None).into();
            }
            if method == "POST" {
                *form = Form::Password;
                return Action::Continue;
            }
            return method_not_allowed("GET, HEAD, POST");
        }
        if path == self.code_path {
            let Some(pending) = self.pending_user(req) else {
                return Reply::redirect(303, self.login_path.as_str())
                    .header("cache-control", "no-store")
                    .into();
            };
            if reading {
                let next = safe_next(req.query_param("next").as_deref().unwrap_or("/"));
                return pages::code(200, &self.code_path, &next, None).into();
            }
            if method == "POST" {
                *form = Form::Code {
                    user: pending,
                    secure: client.is_https(),
                };
                return Action::Continue;
            }
            return method_not_allowed("GET, HEAD, POST");
        }
        if path == self.logout_path {
            if method != "POST" {
                // A link could log users out from another site: logout takes a POST.
                return method_not_allowed("POST");
            }
            if let Some(claims) = req
                .cookie(SESSION_COOKIE)
                .and_then(|t| self.signer.verify(Kind::Session, t, now_s()))
            {
                if let Err(e) = state::delete(&session_key(&claims.id)) {
                    log::warn!("totp-gate: session not ended in the state service: {e}");
                    return unavailable().into();
                }
            }
            return Reply::redirect(303, self.login_path.as_str())
                .header(
                    "set-cookie",
                    expired_cookie(SESSION_COOKIE, client.is_https()),
                )
                .header("cache-control", "no-store")
                .into();
        }
        // Everything else is the app's: its bodies are not the gate's to read.
        req.skip_body();
        match self.session_user(req) {
            Ok(Some(user)) => {
                req.set_header(&self.user_header, user);
                Action::Continue
            }
            Ok(None) if reading => {
                let target = match req.query() {
                    "" => path,
                    q => format!("{path}?{q}"),
                };
                let location = format!("{}?next={}", self.login_path, url_encode(&target));
                Reply::redirect(302, location)
                    .header("cache-control", "no-store")
                    .into()
            }
            Ok(None) => Reply::json(401, &json!({"error": "unauthorized"}))
                .header("cache-control", "no-store")
                .into(),
            Err(()) => unavailable().into(),
        }
    }

    fn on_request_body(&self, form: &mut Form, _: &Request, body: &mut Body) -> Action {
        let fields: Vec<(String, String)> = body
            .form()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
        };
        let next = safe_next(field("next"));
        match std::mem::take(form) {
            Form::None => Action::Continue,
            Form::Password => self.check_password(field("username"), field("password"), &next),
            Form::Code { user, secure } => self.check_code(&user, field("code"), &next, secure),
        }
    }
}

impl TotpGate {
    fn check_password(&self, name: &str, password: &str, next: &str) -> Action {
        let wrong = || {
            pages::login(
                401,
                &self.login_path,
                next,
                Some("Wrong user name or password."),
            )
            .into()
        };
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return wrong();
        }
        let user = self.find(name);
        // An unknown user costs a real check too: the answer and its timing are those
        // of a wrong password.
        let hash = user.map_or(self.users[0].password_hash.as_str(), |u| {
            u.password_hash.as_str()
        });
        let matched = match verify_password(hash, password.as_bytes()) {
            Ok(matched) => matched,
            Err(PasswordError::Busy) => return unavailable().header("retry-after", "1").into(),
            Err(e) => {
                log::error!("totp-gate: {e}");
                return unavailable().into();
            }
        };
        let locked = match self.locked(name) {
            Ok(locked) => locked,
            Err(()) => return unavailable().into(),
        };
        match user {
            Some(user) if matched && !locked => {
                let expires = now_s() + PENDING_TTL_S;
                let token = self.signer.sign(Kind::Pending, &user.name, expires, "");
                let location = format!("{}?next={}", self.code_path, url_encode(next));
                Reply::redirect(303, location)
                    .header(
                        "set-cookie",
                        format!(
                            "{PENDING_COOKIE}={token}; Path={}; Max-Age={PENDING_TTL_S}; HttpOnly; SameSite=Strict",
                            self.login_path
                        ),
                    )
                    .header("cache-control", "no-store")
                    .into()
            }
            _ => {
                if locked {
                    log::info!("totp-gate: {name:?} is locked out");
                }
                self.failed(name);
                wrong()
            }
        }
    }

    fn check_code(&self, name: &str, code: &str, next: &str, secure: bool) -> Action {
        let wrong = || pages::code(401, &self.code_path, next, Some("Wrong code.")).into();
        let Some(user) = self.find(name) else {
            return wrong();
        };
        let locked = match self.locked(name) {
            Ok(locked) => locked,
            Err(()) => return unavailable().into(),
        };
        let step = totp::matching_step(&user.secret, code.trim(), now_s());
        let step = match step {
            Some(step) if !locked => step,
            _ => {
                self.failed(name);
                return wrong();
            }
        };
        // A code works once: the first use of (user, step) wins, on every proxy.
        let used = format!("used:{name}:{step}");
        match state::increment(&used, 1, Some(Duration::from_secs(totp::STEP_S * 4))) {
            Ok(1) => {}
            Ok(_) => {
                log::info!("totp-gate: a code of {name:?} was used again");
                self.failed(name);
                return wrong();
            }
            Err(e) => {
                log::warn!("totp-gate: state unavailable: {e}");
                return unavailable().into();
            }
        }
        let id = match session_id() {
            Ok(id) => id,
            Err(e) => {
                log::error!("totp-gate: no randomness for a session id: {e}");
                return unavailable().into();
            }
        };
        let ttl = Duration::from_secs(self.session_ttl_s);
        if let Err(e) = state::set(&session_key(&id), name, Some(ttl)) {
            log::warn!("totp-gate: session not stored: {e}");
            return unavailable().into();
        }
        let token = self
            .signer
            .sign(Kind::Session, name, now_s() + self.session_ttl_s, &id);
        let secure_attr = if secure { "; Secure" } else { "" };
        Reply::redirect(303, next)
            .header(
                "set-cookie",
                format!(
                    "{SESSION_COOKIE}={token}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure_attr}",
                    self.session_ttl_s
                ),
            )
            .header(
                "set-cookie",
                format!(
                    "{PENDING_COOKIE}=; Path={}; Max-Age=0; HttpOnly; SameSite=Strict",
                    self.login_path
                ),
            )
            .header("cache-control", "no-store")
            .into()
    }

    /// The user of a valid session: its cookie verifies and its id is in the state.
    /// `Err` when the state service cannot say.
    fn session_user(&self, req: &Request) -> Result<Option<String>, ()> {
        let Some(claims) = req
            .cookie(SESSION_COOKIE)
            .and_then(|t| self.signer.verify(Kind::Session, t, now_s()))
        else {
            return Ok(None);
        };
        match state::get(&session_key(&claims.id)) {
            Ok(Some(user)) if user == claims.user.as_bytes() => Ok(Some(claims.user)),
            Ok(_) => Ok(None),
            Err(e) => {
                log::warn!("totp-gate: state unavailable, sessions cannot be checked: {e}");
                Err(())
            }
        }
    }

    fn pending_user(&self, req: &Request) -> Option<String> {
        req.cookie(PENDING_COOKIE)
            .and_then(|t| self.signer.verify(Kind::Pending, t, now_s()))
            .map(|c| c.user)
    }

    /// The user named `name`, every name compared in constant time.
    fn find(&self, name: &str) -> Option<&User> {
        let mut found = None;
        for user in &self.users {
            if bool::from(user.name.as_bytes().ct_eq(name.as_bytes())) {
                found = Some(user);
            }
        }
        found
    }

    fn locked(&self, name: &str) -> Result<bool, ()> {
        state::get(&format!("locked:{name}"))
            .map(|v| v.is_some())
            .map_err(|e| log::warn!("totp-gate: state unavailable: {e}"))
    }

    /// Counts a failure (passwords and codes together); at `max_failures` the user is
    /// locked for `lockout_s`.
    fn failed(&self, name: &str) {
        let window = Some(Duration::from_secs(self.lockout_s));
        match state::increment(&format!("fail:{name}"), 1, window) {
            Ok(n) if n >= i64::from(self.max_failures) => {
                if let Err(e) = state::set(&format!("locked:{name}"), "1", window) {
                    log::warn!("totp-gate: lockout not stored: {e}");
                }
            }
            Ok(_) => {}
            Err(e) => log::warn!("totp-gate: failure not counted: {e}"),
        }
    }
}

fn now_s() -> u64 {
    now_ms() / 1000
}

fn session_key(id: &str) -> String {
    format!("session:{id}")
}

/// 128 random bits, hex.
fn session_id() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| e.to_string())?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `next` if it is a path on this site, else `/`: never another host (`//host`,
/// `/\host`, `https://...`), nor anything with spaces or controls a browser would
/// strip into one.
pub fn safe_next(next: &str) -> String {
    let decoded = form_decode(next);
    let local = next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && !decoded.starts_with("//")
        && !decoded.starts_with("/\\")
        && !next.contains('\\')
        && !next.chars().any(|c| c.is_control() || c.is_whitespace());
    if local {
        next.to_string()
    } else {
        "/".into()
    }
}

/// Percent-encodes everything but unreserved characters and `/`.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn expired_cookie(name: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{secure}")
}

fn method_not_allowed(allow: &str) -> Action {
    Reply::new(405)
        .header("allow", allow)
        .header("cache-control", "no-store")
        .into()
}

fn unavailable() -> Reply {
    Reply::text(503, "Sign-in is unavailable. Try again in a moment.\n")
        .header("cache-control", "no-store")
}

sluice_sdk::export_plugin!(TotpGate);

#[cfg(test)]
mod tests;
