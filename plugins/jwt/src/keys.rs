//! A JWKS as verification keys, each bound to the algorithms its type allows, so a
//! token cannot pick an algorithm its key was not made for (an HS256 "signature" made
//! with an RSA public key finds no key). The proxy checks the signatures
//! (`sluice_sdk::crypto`) and the key's fit again.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sluice_sdk::crypto::SignatureAlgorithm;
use sluice_sdk::serde_json::{self, Value};

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
    fn fits(self, alg: SignatureAlgorithm) -> bool {
        use SignatureAlgorithm::*;
        match self {
            Kind::Rsa => matches!(alg, Rs256 | Rs384 | Rs512 | Ps256 | Ps384 | Ps512),
            Kind::P256 => alg == Es256,
            Kind::P384 => alg == Es384,
            Kind::Ed25519 => alg == EdDsa,
            Kind::Secret => matches!(alg, Hs256 | Hs384 | Hs512),
        }
    }
}

pub struct Key {
    kid: Option<String>,
    kind: Kind,
    /// The JWK's own `alg`, which the token's must then equal.
    alg: Option<SignatureAlgorithm>,
    /// The JWK as JSON text, as the proxy's signature check takes it.
    pub jwk: String,
    /// A digest of `jwk`, naming the key in remembered verifications.
    pub fingerprint: [u8; 16],
}

impl Key {
    fn fits(&self, alg: SignatureAlgorithm) -> bool {
        self.kind.fits(alg) && self.alg.is_none_or(|own| own == alg)
    }
}

/// The keys that may verify a token.
pub enum Lookup<'a> {
    Keys(Vec<&'a Key>),
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
        let keys = key_list(jwks)?
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
        let jwks: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        let keys: Vec<Key> = key_list(&jwks)?
            .iter()
            .filter_map(|k| key(k).ok().flatten())
            .collect();
        if keys.is_empty() {
            return Err("no usable signing key".into());
        }
        Ok(Self { keys })
    }

    pub fn has_key_for(&self, alg: SignatureAlgorithm) -> bool {
        self.keys.iter().any(|k| k.fits(alg))
    }

    pub fn lookup(&self, kid: Option<&str>, alg: SignatureAlgorithm) -> Lookup<'_> {
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
        let fitting: Vec<&Key> = named.into_iter().filter(|k| k.fits(alg)).collect();
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

fn decoded_len(jwk: &Value, name: &str) -> Result<usize, String> {
    let text = jwk
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("no {name:?}"))?;
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map(|b| b.iter().skip_while(|x| name == "n" && **x == 0).count())
        .map_err(|_| format!("{name:?} is not base64url"))
}

/// One JWK as a verification key; `None` for an encryption key.
fn key(jwk: &Value) -> Result<Option<Key>, String> {
    let field = |name: &str| jwk.get(name).and_then(Value::as_str);
    if !jwk.is_object() {
        return Err("a JWK is an object".into());
    }
    if field("use") == Some("enc") {
        return Ok(None);
    }
    let kind = match (field("kty"), field("crv")) {
        (Some("RSA"), _) => {
            // Fewer than 2048 bits is breakable (RFC 7518 §3.3 asks for at least this).
            if decoded_len(jwk, "n")? < 256 {
                return Err("an RSA key under 2048 bits".into());
            }
            decoded_len(jwk, "e")?;
            Kind::Rsa
        }
        (Some("EC"), Some(crv @ ("P-256" | "P-384"))) => {
            let size = if crv == "P-256" { 32 } else { 48 };
            if decoded_len(jwk, "x")? != size || decoded_len(jwk, "y")? != size {
                return Err(format!("{crv} coordinates must be {size} bytes"));
            }
            if crv == "P-256" {
                Kind::P256
            } else {
                Kind::P384
            }
        }
        (Some("OKP"), Some("Ed25519")) => {
            if decoded_len(jwk, "x")? != 32 {
                return Err("an Ed25519 key is 32 bytes".into());
            }
            Kind::Ed25519
        }
        (Some("oct"), _) => {
            if decoded_len(jwk, "k")? < 32 {
                return Err("an HMAC secret under 32 bytes".into());
            }
            Kind::Secret
        }
        (kty, crv) => {
            return Err(format!(
                "kty {:?} crv {:?} is not a supported signing key",
                kty.unwrap_or(""),
                crv.unwrap_or("")
            ))
        }
    };
    let alg = match field("alg") {
        Some(name) => {
            let alg = SignatureAlgorithm::from_name(name)
                .ok_or_else(|| format!("alg {name:?} is not a signing algorithm"))?;
            if !kind.fits(alg) {
                return Err(format!("alg {name} does not fit the key's type"));
            }
            Some(alg)
        }
        None => None,
    };
    let text = jwk.to_string();
    let digest = <sha2::Sha256 as sha2::Digest>::digest(text.as_bytes());
    let mut fingerprint = [0u8; 16];
    fingerprint.copy_from_slice(&digest[..16]);
    Ok(Some(Key {
        kid: field("kid").map(str::to_owned),
        kind,
        alg,
        jwk: text,
        fingerprint,
    }))
}
