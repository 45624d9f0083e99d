//! The registered claims checked after the signature (RFC 7519 §4.1), on the host's
//! clock, and claims turned into header values.

use sluice_sdk::serde::Deserialize;
use sluice_sdk::serde_json::{Map, Value};

/// A token's claims set.
#[derive(Debug, Deserialize)]
#[serde(crate = "sluice_sdk::serde", transparent)]
pub struct Claims(pub Map<String, Value>);

impl Claims {
    /// A claim as a header value: a string as is, a number or boolean as text, a list
    /// of strings joined with `,`; absent, null or anything else is `None`.
    pub fn header_value(&self, name: &str) -> Option<String> {
        match self.0.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .map(|parts| parts.join(",")),
            _ => None,
        }
    }
}

/// What a token's claims must satisfy.
#[derive(Debug)]
pub struct ClaimRules {
    pub issuer: Option<String>,
    /// Any one of these in `aud`.
    pub audience: Option<Vec<String>>,
    pub require_exp: bool,
    pub leeway_s: u64,
    pub required: Vec<String>,
}

impl ClaimRules {
    /// Checks `claims` at `now_s` (seconds since the epoch); the error says why not.
    pub fn check(&self, claims: &Claims, now_s: u64) -> Result<(), String> {
        let now = now_s as f64;
        let leeway = self.leeway_s as f64;
        match numeric(claims, "exp")? {
            Some(exp) if now >= exp + leeway => return Err(format!("expired at {exp}")),
            None if self.require_exp => return Err("no exp claim".into()),
            _ => {}
        }
        if let Some(nbf) = numeric(claims, "nbf")? {
            if now + leeway < nbf {
                return Err(format!("not valid before {nbf}"));
            }
        }
        if let Some(issuer) = &self.issuer {
            if claims.0.get("iss").and_then(Value::as_str) != Some(issuer.as_str()) {
                return Err("wrong or missing issuer".into());
            }
        }
        if let Some(accepted) = &self.audience {
            let matches = |a: &str| accepted.iter().any(|x| x == a);
            let ok = match claims.0.get("aud") {
                Some(Value::String(a)) => matches(a),
                Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(matches),
                _ => false,
            };
            if !ok {
                return Err("wrong or missing audience".into());
            }
        }
        if let Some(missing) = self
            .required
            .iter()
            .find(|name| claims.0.get(name.as_str()).is_none_or(Value::is_null))
        {
            return Err(format!("no {missing} claim"));
        }
        Ok(())
    }
}

/// A NumericDate claim; present but not a number is an error.
fn numeric(claims: &Claims, name: &str) -> Result<Option<f64>, String> {
    match claims.0.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("{name} is not a number")),
        Some(_) => Err(format!("{name} is not a number")),
    }
}
