//! A JWKS as verification keys, each bound to the algorithms its type allows, so a
//! token cannot pick an algorithm its key was not made for (an HS256 "signature" made
//! with an RSA public key finds no key).

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use sluice_sdk::serde_json::Value;

/// Most keys a JWKS may hold.
const MAX_KEYS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Rsa,
    P256,
    P384,
    Ed25519,
    Secret,
}

impl Kind {
    fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            Kind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            Kind::P256 => alg == ES256,
            Kind::P384 => alg == ES384,
            Kind::Ed25519 => alg == EdDSA,
            Kind::Secret => matches!(alg, HS256 | HS384 | HS512),
        }
    }
}

struct Key {
    kid: Option<String>,
    kind: Kind,
    /// The JWK's own `alg`, which the token's must then equal.
    alg: Option<Algorithm>,
    decoding: DecodingKey,
}

impl Key {
    fn fits(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.is_none_or(|own| own == alg)
    }
}

/// The keys that may verify a token.
pub enum Lookup<'a> {
    Keys(Vec<&'a DecodingKey>),
    /// The token names a key id the set does not have.
    UnknownKid,
    /// The named key (or, without a name, every key) is of another type.
    WrongType,
}

pub struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    /// Keys from the config: every key must be usable.
    pub fn from_config(jwks: &Value) -> Result<Self, String> {
        let list = key_list(jwks)?;
        let keys = list
            .iter()
            .enumerate()
            .map(|(i, k)| key(k).map_err(|e| format!("keys[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            keys: keys.into_iter().flatten().collect(),
        })
    }

    /// Keys from an identity provider: keys of other types or uses (encryption) are
    /// skipped; at least one must be usable.
    pub fn from_fetched(body: &[u8]) -> Result<Self, String> {
        let jwks: Value =
            sluice_sdk::serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        let keys: Vec<Key> = key_list(&jwks)?
            .iter()
            .filter_map(|k| key(k).ok().flatten())
            .collect();
        if keys.is_empty() {
            return Err("no usable signing key".into());
        }
        Ok(Self { keys })
    }

    pub fn has_key_for(&self, alg: Algorithm) -> bool {
        self.keys.iter().any(|k| k.fits(alg))
    }

    pub fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Lookup<'_> {
        let named: Vec<&Key> = match kid {
            Some(kid) => self
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect(),
            None => self.keys.iter().collect(),
        };
        if named.is_empty() {
            return Lookup::UnknownKid;
        }
        let fitting: Vec<&DecodingKey> = named
            .into_iter()
            .filter(|k| k.fits(alg))
            .map(|k| &k.decoding)
            .collect();
        if fitting.is_empty() {
            Lookup::WrongType
        } else {
            Lookup::Keys(fitting)
        }
    }
}

fn key_list(jwks: &Value) -> Result<&Vec<Value>, String> {
    let list = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("a JWKS is an object with a \"keys\" list")?;
    if list.len() > MAX_KEYS {
        return Err(format!("{} keys, over {MAX_KEYS}", list.len()));
    }
    Ok(list)
}

/// One JWK as a verification key; `None` for an encryption key.
fn key(value: &Value) -> Result<Option<Key>, String> {
    let jwk: Jwk = sluice_sdk::serde_json::from_value(value.clone())
        .map_err(|e| format!("not a supported JWK: {e}"))?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Ok(None);
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            // Fewer than 2048 bits is breakable (RFC 7518 §3.3 requires at least this).
            if p.n.trim_end_matches('=').len() * 3 / 4 < 255 {
                return Err("an RSA key under 2048 bits".into());
            }
            Kind::Rsa
        }
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Kind::P256,
            EllipticCurve::P384 => Kind::P384,
            ref other => return Err(format!("curve {other:?} is not supported")),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => Kind::Ed25519,
            ref other => return Err(format!("curve {other:?} is not supported")),
        },
        AlgorithmParameters::OctetKey(_) => Kind::Secret,
    };
    let alg = match jwk.common.key_algorithm {
        Some(a) => Some(
            a.to_string()
                .parse::<Algorithm>()
                .map_err(|_| format!("alg {a} is not a signing algorithm"))?,
        ),
        None => None,
    };
    if let Some(alg) = alg {
        if !kind.fits(alg) {
            return Err(format!("alg {alg:?} does not fit the key's type"));
        }
    }
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable key: {e}"))?;
    if kind == Kind::Secret && decoding.as_bytes().len() < 32 {
        return Err("an HMAC secret under 32 bytes".into());
    }
    Ok(Some(Key {
        kid: jwk.common.key_id,
        kind,
        alg,
        decoding,
    }))
}
