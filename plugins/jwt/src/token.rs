//! A compact JWS (RFC 7515 §7.1): `header.payload.signature`, base64url each.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sluice_sdk::crypto::SignatureAlgorithm;
use sluice_sdk::serde_json::{self, Value};

use crate::claims::Claims;

/// A token split and its header read; the claims are read only once it is verified.
pub struct Token<'t> {
    pub alg: SignatureAlgorithm,
    pub kid: Option<String>,
    /// `header.payload`, what the signature covers.
    pub signed: &'t str,
    payload: &'t str,
    pub signature: Vec<u8>,
}

fn decode(part: &str, what: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| format!("{what} is not base64url"))
}

impl<'t> Token<'t> {
    pub fn parse(token: &'t str) -> Result<Self, String> {
        let (signed, signature) = token
            .rsplit_once('.')
            .ok_or("not a compact JWS (three parts)")?;
        let (header, payload) = signed
            .split_once('.')
            .ok_or("not a compact JWS (three parts)")?;
        if payload.contains('.') {
            return Err("not a compact JWS (more than three parts)".into());
        }
        let header: Value = serde_json::from_slice(&decode(header, "header")?)
            .map_err(|_| "header is not JSON".to_string())?;
        let header = header.as_object().ok_or("header is not a JSON object")?;
        let name = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or("header has no alg")?;
        let alg = SignatureAlgorithm::from_name(name)
            .ok_or_else(|| format!("algorithm {name:?} is not accepted"))?;
        // RFC 7515 §4.1.11: extensions marked critical must be understood; we know none.
        if header.contains_key("crit") {
            return Err("critical header extensions are not understood".into());
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.clone()),
            Some(_) => return Err("kid is not a string".into()),
        };
        Ok(Self {
            alg,
            kid,
            signed,
            payload,
            signature: decode(signature, "signature")?,
        })
    }

    /// The claims set (after the signature is verified).
    pub fn claims(&self) -> Result<Claims, String> {
        serde_json::from_slice(&decode(self.payload, "payload")?)
            .map_err(|_| "payload is not a JSON object".to_string())
    }
}
