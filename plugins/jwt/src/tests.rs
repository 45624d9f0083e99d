//! The plugin's own logic; signatures are the proxy's and are tested end to end
//! (`tests/tests/auth/jwt.rs`, with tokens from an independent implementation).

use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sluice_sdk::serde_json::{self, Value};

const SECRET_B64: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY";
fn rsa_n() -> String {
    URL_SAFE_NO_PAD.encode([0xC5u8; 256])
}

fn plugin(json: &str) -> Jwt {
    match Jwt::from_json(json) {
        Ok(p) => p,
        Err(e) => panic!("config rejected: {e}"),
    }
}

fn refused(json: &str) -> String {
    match Jwt::from_json(json) {
        Ok(_) => panic!("config accepted: {json}"),
        Err(e) => e,
    }
}

fn hs_config(extra: &str) -> String {
    format!(
        r#"{{"algorithms":["HS256","RS256"],"jwks":{{"keys":[{{"kty":"oct","kid":"s1","k":"{SECRET_B64}"}},{{"kty":"RSA","kid":"r1","n":"{}","e":"AQAB"}}]}}{extra}}}"#,
        rsa_n()
    )
}

/// An unsigned-looking token with this header and payload (signature bytes "sig").
fn token(header: Value, payload: Value) -> String {
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.{}",
        part(&header),
        part(&payload),
        URL_SAFE_NO_PAD.encode("sig")
    )
}

fn claims(v: Value) -> Claims {
    serde_json::from_value(v).expect("claims")
}

const NOW: u64 = 1_800_000_000;

#[test]
fn claims_become_header_values() {
    let c = claims(json!({"sub":"alice","roles":["a","b"],"n":7,"ok":true,"obj":{"a":1}}));
    assert_eq!(c.header_value("sub").as_deref(), Some("alice"));
    assert_eq!(c.header_value("roles").as_deref(), Some("a,b"));
    assert_eq!(c.header_value("n").as_deref(), Some("7"));
    assert_eq!(c.header_value("ok").as_deref(), Some("true"));
    assert_eq!(c.header_value("obj"), None);
    assert_eq!(c.header_value("missing"), None);
}

#[test]
fn time_issuer_audience_and_required_claims_are_enforced() {
    let p = plugin(&hs_config(
        r#","issuer":"https://idp","audience":"api","leeway_s":10,"required_claims":["sub"]"#,
    ));
    let ok = json!({"sub":"a","iss":"https://idp","aud":"api","exp":NOW+60});
    let check = |key: &str, value: Value| {
        let mut c = ok.clone();
        c[key] = value;
        p.rules.check(&claims(c), NOW)
    };
    assert!(check("exp", json!(NOW - 5)).is_ok(), "within leeway");
    assert!(check("exp", json!(NOW - 10))
        .unwrap_err()
        .contains("expired"));
    assert!(check("exp", json!("soon"))
        .unwrap_err()
        .contains("not a number"));
    assert!(check("nbf", json!(NOW + 11))
        .unwrap_err()
        .contains("not valid before"));
    assert!(check("nbf", json!(NOW + 9)).is_ok());
    assert!(check("iss", json!("https://evil"))
        .unwrap_err()
        .contains("issuer"));
    assert!(check("aud", json!(["web"]))
        .unwrap_err()
        .contains("audience"));
    assert!(check("aud", json!(["web", "api"])).is_ok());
    assert!(check("sub", json!(null)).unwrap_err().contains("sub"));
    let mut no_exp = ok.clone();
    no_exp.as_object_mut().expect("object").remove("exp");
    assert!(p
        .rules
        .check(&claims(no_exp.clone()), NOW)
        .unwrap_err()
        .contains("no exp"));
    let lax = plugin(&hs_config(r#","require_exp":false"#));
    assert!(lax.rules.check(&claims(no_exp), NOW).is_ok());
}

fn invalid(p: &Jwt, token: &str) -> String {
    match p.verify(token, NOW) {
        Err(Refusal::Invalid(reason)) => reason,
        Err(other) => panic!("expected invalid, got {other:?}"),
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn malformed_unlisted_none_and_confused_tokens_never_reach_a_signature_check() {
    let p = plugin(&hs_config(""));
    let claims = json!({"sub":"admin","exp":NOW+60});
    // An HS256 token naming the RSA key: that key is no HMAC secret.
    let confused = token(json!({"alg":"HS256","kid":"r1"}), claims.clone());
    assert!(invalid(&p, &confused).contains("not a key for"));
    let unknown = token(json!({"alg":"HS256","kid":"zz"}), claims.clone());
    assert!(invalid(&p, &unknown).starts_with(UNKNOWN_KID));
    let none = token(json!({"alg":"none"}), claims.clone());
    assert!(invalid(&p, &none).contains("not accepted"));
    let unlisted = token(json!({"alg":"ES256"}), claims.clone());
    assert!(invalid(&p, &unlisted).contains("not accepted"));
    let crit = token(
        json!({"alg":"HS256","kid":"s1","crit":["exp"]}),
        claims.clone(),
    );
    assert!(invalid(&p, &crit).contains("critical"));
    let bad_kid = token(json!({"alg":"HS256","kid":7}), claims.clone());
    assert!(invalid(&p, &bad_kid).contains("kid"));
    for garbage in ["not a token", "a.b", "a.b.c.d", "!!.e30.c2ln", "e30.e30.!!"] {
        invalid(&p, garbage);
    }
    assert!(invalid(&p, &"a".repeat(9000)).contains("over"));
    // Off the proxy no signature can be checked: a well-formed token fails closed.
    let fits = token(json!({"alg":"HS256","kid":"s1"}), claims);
    assert!(invalid(&p, &fits).contains("checked by the proxy"));
}

#[test]
fn tokens_come_from_the_bearer_header_or_the_cookie() {
    let p = plugin(&hs_config(r#","cookie":"jwt""#));
    let req = Request::new("GET", "/").with_header("authorization", "bearer   abc ");
    assert_eq!(p.token(&req), Some("abc"));
    let req = Request::new("GET", "/").with_header("cookie", "a=1; jwt=xyz");
    assert_eq!(p.token(&req), Some("xyz"));
    // Another scheme is no bearer token, and the cookie does not rescue it.
    let req = Request::new("GET", "/")
        .with_header("authorization", "Basic YTpi")
        .with_header("cookie", "jwt=xyz");
    assert_eq!(p.token(&req), None);
    assert_eq!(p.token(&Request::new("GET", "/")), None);
}

#[test]
fn refusals_name_no_reason_to_the_client() {
    let p = plugin(&hs_config(r#","realm":"api""#));
    let r = p.refuse(Refusal::Invalid("expired at 5".into()));
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers().get("www-authenticate"),
        Some("Bearer realm=\"api\", error=\"invalid_token\"")
    );
    assert!(!String::from_utf8_lossy(r.body_bytes()).contains("expired"));
    let r = p.refuse(Refusal::NoToken);
    assert_eq!(
        r.headers().get("www-authenticate"),
        Some("Bearer realm=\"api\", error=\"invalid_request\"")
    );
    assert_eq!(p.refuse(Refusal::NoKeys("down".into())).status(), 503);
}

#[test]
fn max_age_reads_cache_control() {
    assert_eq!(max_age("public, max-age=600"), Some(600));
    assert_eq!(max_age("max-age=600, s-maxage=60"), Some(60));
    assert_eq!(max_age("no-store"), Some(0));
    assert_eq!(max_age("public"), None);
    assert_eq!(max_age("max-age=abc"), None);
}

#[test]
fn bad_configs_are_refused_with_the_key() {
    let rsa = format!(r#"{{"kty":"RSA","n":"{}","e":"AQAB"}}"#, rsa_n());
    let small = URL_SAFE_NO_PAD.encode([0xC5u8; 128]);
    for (json, key) in [
        (r#"{"jwks":{"keys":[]}}"#.to_string(), "algorithms"),
        (r#"{"algorithms":[],"jwks_upstream":"idp"}"#.into(), "algorithms"),
        (r#"{"algorithms":["none"],"jwks_upstream":"idp"}"#.into(), "algorithms[0]"),
        (r#"{"algorithms":["RS999"],"jwks_upstream":"idp"}"#.into(), "algorithms[0]"),
        (r#"{"algorithms":["RS256"]}"#.into(), "jwks or jwks_upstream"),
        (format!(r#"{{"algorithms":["RS256"],"jwks_upstream":"idp","jwks":{{"keys":[{rsa}]}}}}"#), "not both"),
        (r#"{"algorithms":["HS256"],"jwks":{"keys":[{"kty":"oct","k":"c2hvcnQ"}]}}"#.into(), "under 32 bytes"),
        (format!(r#"{{"algorithms":["RS256"],"jwks":{{"keys":[{{"kty":"RSA","n":"{small}","e":"AQAB"}}]}}}}"#), "under 2048"),
        (r#"{"algorithms":["ES256"],"jwks":{"keys":[{"kty":"EC","crv":"P-256","x":"AQAB","y":"AQAB"}]}}"#.into(), "32 bytes"),
        (r#"{"algorithms":["ES256"],"jwks":{"keys":[{"kty":"EC","crv":"P-521","x":"AQAB","y":"AQAB"}]}}"#.into(), "not a supported"),
        (format!(r#"{{"algorithms":["ES256"],"jwks":{{"keys":[{rsa}]}}}}"#), "no key can verify"),
        (format!(r#"{{"algorithms":["RS256"],"jwks":{{"keys":[{}]}}}}"#, rsa.replace("\"e\"", "\"alg\":\"HS256\",\"e\"")), "does not fit"),
        (r#"{"algorithms":["RS256"],"jwks":{"nokeys":1}}"#.into(), "jwks"),
        (r#"{"algorithms":["RS256"],"jwks_upstream":"idp","jwks_path":"x"}"#.into(), "jwks_path"),
        (r#"{"algorithms":["RS256"],"jwks_upstream":"idp","leeway_s":3600}"#.into(), "leeway_s"),
        (r#"{"algorithms":["RS256"],"jwks_upstream":"idp","audience":[]}"#.into(), "audience"),
        (r#"{"algorithms":["RS256"],"jwks_upstream":"idp","claims_to_headers":{"sub":"bad name"}}"#.into(), "claims_to_headers.sub"),
        (r#"{"algorithms":["RS256"],"jwks_upstream":"idp","realm":"a\"b"}"#.into(), "realm"),
        (r#"{"algorithms":["RS256"],"jwks_upstream":"idp","isuer":"x"}"#.into(), "isuer"),
        (r#"{"algorithms":["RS256"],"jwks_upstream":"idp","verified_cache_s":7200}"#.into(), "verified_cache_s"),
    ] {
        let e = refused(&json);
        assert!(e.contains(key), "{json}: {e}");
    }
}
