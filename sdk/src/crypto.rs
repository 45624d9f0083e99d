//! Checks done by the proxy in native code: a JWS signature (RS256 and the rest)
//! checked here costs the host ~0.05 ms, where the same check compiled into a plugin
//! takes milliseconds, over a request's CPU deadline; and password hashes (argon2,
//! bcrypt), which need more memory and time than a plugin has.
//!
//! ```no_run
//! use sluice_sdk::crypto::{verify_signature, SignatureAlgorithm};
//! let jwk = r#"{"kty":"oct","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}"#;
//! let ok = verify_signature(SignatureAlgorithm::Hs256, jwk, b"head.payload", b"tag");
//! assert_eq!(ok, Ok(false));
//! ```

/// JWS signature algorithms (RFC 7518 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum SignatureAlgorithm {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
    Hs256,
    Hs384,
    Hs512,
}

impl SignatureAlgorithm {
    /// Every algorithm.
    pub const ALL: [SignatureAlgorithm; 12] = [
        Self::Rs256,
        Self::Rs384,
        Self::Rs512,
        Self::Ps256,
        Self::Ps384,
        Self::Ps512,
        Self::Es256,
        Self::Es384,
        Self::EdDsa,
        Self::Hs256,
        Self::Hs384,
        Self::Hs512,
    ];

    /// The JWS name, as in a token's `alg` (`"RS256"`, `"EdDSA"`).
    pub fn name(self) -> &'static str {
        use SignatureAlgorithm::*;
        match self {
            Rs256 => "RS256",
            Rs384 => "RS384",
            Rs512 => "RS512",
            Ps256 => "PS256",
            Ps384 => "PS384",
            Ps512 => "PS512",
            Es256 => "ES256",
            Es384 => "ES384",
            EdDsa => "EdDSA",
            Hs256 => "HS256",
            Hs384 => "HS384",
            Hs512 => "HS512",
        }
    }

    /// The algorithm a JWS name stands for; `None` for unknown names and `"none"`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// Whether `signature` is `alg`'s signature of `message` under `key`, a JWK (RFC 7517)
/// as JSON text whose type fits `alg` (`RSA` for RS*/PS*, `EC` P-256/P-384 for
/// ES256/ES384, `OKP` Ed25519 for EdDSA, `oct` for HS*). A key that does not fit or
/// is malformed is an `Err`, never a pass.
pub fn verify_signature(
    alg: SignatureAlgorithm,
    key: &str,
    message: &[u8],
    signature: &[u8],
) -> Result<bool, String> {
    imp::verify_signature(alg, key, message, signature)
}

/// Why a password was not checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PasswordError {
    /// Not an argon2 or bcrypt PHC string, or its cost is over the proxy's bounds.
    Unsupported(String),
    /// The proxy's password check slots stayed taken (a flood of logins): fail closed.
    Busy,
}

impl std::fmt::Display for PasswordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PasswordError::Unsupported(why) => write!(f, "password hash not supported: {why}"),
            PasswordError::Busy => f.write_str("password checks are busy"),
        }
    }
}

impl std::error::Error for PasswordError {}

/// Whether `password` matches `hash`, a PHC string (`$argon2id$...`, `$2b$...`). The
/// proxy checks it on threads of its own, a bounded number at once; the wait does not
/// count against the plugin's CPU deadline.
pub fn verify_password(hash: &str, password: &[u8]) -> Result<bool, PasswordError> {
    imp::verify_password(hash, password)
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::SignatureAlgorithm;
    use crate::bindings::sluice::plugin::crypto as wit;

    pub fn verify_signature(
        alg: SignatureAlgorithm,
        key: &str,
        message: &[u8],
        signature: &[u8],
    ) -> Result<bool, String> {
        use wit::SignatureAlgorithm as W;
        use SignatureAlgorithm::*;
        let alg = match alg {
            Rs256 => W::Rs256,
            Rs384 => W::Rs384,
            Rs512 => W::Rs512,
            Ps256 => W::Ps256,
            Ps384 => W::Ps384,
            Ps512 => W::Ps512,
            Es256 => W::Es256,
            Es384 => W::Es384,
            EdDsa => W::Eddsa,
            Hs256 => W::Hs256,
            Hs384 => W::Hs384,
            Hs512 => W::Hs512,
        };
        wit::verify_signature(alg, key, message, signature)
    }

    pub fn verify_password(hash: &str, password: &[u8]) -> Result<bool, super::PasswordError> {
        wit::verify_password(hash, password).map_err(|e| match e {
            wit::PasswordError::Unsupported(why) => super::PasswordError::Unsupported(why),
            wit::PasswordError::Busy => super::PasswordError::Busy,
        })
    }
}

// Off wasm (plugin unit tests on the build machine) there is no proxy to check with.
#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::SignatureAlgorithm;

    pub fn verify_signature(
        alg: SignatureAlgorithm,
        _: &str,
        _: &[u8],
        _: &[u8],
    ) -> Result<bool, String> {
        Err(format!(
            "{}: signatures are checked by the proxy, not outside it",
            alg.name()
        ))
    }

    pub fn verify_password(_: &str, _: &[u8]) -> Result<bool, super::PasswordError> {
        Err(super::PasswordError::Unsupported(
            "passwords are checked by the proxy, not outside it".into(),
        ))
    }
}
