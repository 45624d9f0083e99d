use super::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use sluice_sdk::serde_json;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
// base64url of SECRET.
const SECRET_B64: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY";
// A 2048-bit RSA modulus (base64url); any will do to test type binding.
const RSA_N: &str = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";

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
        r#"{{"algorithms":["HS256"],"jwks":{{"keys":[{{"kty":"oct","kid":"s1","k":"{SECRET_B64}"}},{{"kty":"RSA","kid":"r1","n":"{RSA_N}","e":"AQAB"}}]}}{extra}}}"#
    )
}

fn hs_token(kid: Option<&str>, claims: serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    encode(&header, &claims, &EncodingKey::from_secret(SECRET)).expect("token")
}

const NOW: u64 = 1_800_000_000;

fn invalid(p: &Jwt, token: &str) -> String {
    match p.verify(token, NOW) {
        Err(Refusal::Invalid(reason)) => reason,
        other => panic!("expected invalid, got {other:?}"),
    }
}

#[test]
fn a_valid_token_passes_and_its_claims_are_read() {
    let p = plugin(&hs_config(
        r#","issuer":"https://idp","audience":["api","web"]"#,
    ));
    let token = hs_token(
        Some("s1"),
        json!({"sub":"alice","iss":"https://idp","aud":"web","exp":NOW+60,"roles":["a","b"],"n":7}),
    );
    let claims = p.verify(&token, NOW).expect("valid");
    assert_eq!(claims.header_value("sub").as_deref(), Some("alice"));
    assert_eq!(claims.header_value("roles").as_deref(), Some("a,b"));
    assert_eq!(claims.header_value("n").as_deref(), Some("7"));
    assert_eq!(claims.header_value("missing"), None);
}

#[test]
fn time_issuer_audience_and_required_claims_are_enforced() {
    let p = plugin(&hs_config(
        r#","issuer":"https://idp","audience":"api","leeway_s":10,"required_claims":["sub"]"#,
    ));
    let ok = json!({"sub":"a","iss":"https://idp","aud":"api","exp":NOW+60});
    let with = |key: &str, value: serde_json::Value| {
        let mut c = ok.clone();
        c[key] = value;
        hs_token(Some("s1"), c)
    };
    assert!(
        p.verify(&with("exp", json!(NOW - 5)), NOW).is_ok(),
        "within leeway"
    );
    assert!(invalid(&p, &with("exp", json!(NOW - 10))).contains("expired"));
    assert!(invalid(&p, &with("exp", json!("soon"))).contains("not a number"));
    assert!(invalid(&p, &with("nbf", json!(NOW + 11))).contains("not valid before"));
    assert!(p.verify(&with("nbf", json!(NOW + 9)), NOW).is_ok());
    assert!(invalid(&p, &with("iss", json!("https://evil"))).contains("issuer"));
    assert!(invalid(&p, &with("aud", json!(["web"]))).contains("audience"));
    assert!(p.verify(&with("aud", json!(["web", "api"])), NOW).is_ok());
    assert!(invalid(&p, &with("sub", json!(null))).contains("sub"));
    let mut no_exp = ok.clone();
    no_exp.as_object_mut().expect("object").remove("exp");
    assert!(invalid(&p, &hs_token(Some("s1"), no_exp.clone())).contains("no exp"));
    let lax = plugin(&hs_config(r#","require_exp":false"#));
    assert!(lax.verify(&hs_token(Some("s1"), no_exp), NOW).is_ok());
}

#[test]
fn tampering_algorithm_confusion_and_unknown_keys_are_refused() {
    let p = plugin(&hs_config(""));
    let token = hs_token(Some("s1"), json!({"sub":"a","exp":NOW+60}));
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    // The payload of another token under the first one's signature.
    let other = hs_token(Some("s1"), json!({"sub":"admin","exp":NOW+60}));
    parts[1] = other.split('.').nth(1).expect("payload").to_owned();
    assert!(invalid(&p, &parts.join(".")).contains("InvalidSignature"));
    // An HS256 token naming the RSA key: that key is not an HMAC key.
    let confused = hs_token(Some("r1"), json!({"sub":"a","exp":NOW+60}));
    assert!(invalid(&p, &confused).contains("not a key for"));
    assert!(invalid(&p, &hs_token(Some("zz"), json!({"exp":NOW+60}))).starts_with(UNKNOWN_KID));
    // alg "none", unsigned.
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhZG1pbiJ9.";
    assert!(invalid(&p, none).contains("header"));
    assert!(invalid(&p, "not a token").contains("header"));
    assert!(invalid(&p, &"a".repeat(9000)).contains("over"));
    // Without a kid every HMAC key is tried.
    assert!(p
        .verify(&hs_token(None, json!({"exp":NOW+60})), NOW)
        .is_ok());
}

#[test]
fn an_algorithm_not_listed_is_refused_even_with_a_fitting_key() {
    let p = plugin(&hs_config("").replace(r#"["HS256"]"#, r#"["HS256","RS256"]"#));
    let mut header = Header::new(Algorithm::HS384);
    header.kid = Some("s1".into());
    let token = encode(
        &header,
        &json!({"exp":NOW+60}),
        &EncodingKey::from_secret(SECRET),
    )
    .expect("token");
    assert!(invalid(&p, &token).contains("not accepted"));
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
    let rsa = format!(r#"{{"kty":"RSA","n":"{RSA_N}","e":"AQAB"}}"#);
    for (json, key) in [
        (r#"{"jwks":{"keys":[]}}"#.to_string(), "algorithms"),
        (r#"{"algorithms":[],"jwks_upstream":"idp"}"#.into(), "algorithms"),
        (r#"{"algorithms":["none"],"jwks_upstream":"idp"}"#.into(), "algorithms[0]"),
        (r#"{"algorithms":["RS999"],"jwks_upstream":"idp"}"#.into(), "algorithms[0]"),
        (r#"{"algorithms":["RS256"]}"#.into(), "jwks or jwks_upstream"),
        (format!(r#"{{"algorithms":["RS256"],"jwks_upstream":"idp","jwks":{{"keys":[{rsa}]}}}}"#), "not both"),
        (r#"{"algorithms":["RS256"],"jwks":{"keys":[{"kty":"oct","k":"c2hvcnQ"}]}}"#.into(), "under 32 bytes"),
        (r#"{"algorithms":["RS256"],"jwks":{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}}"#.into(), "under 2048"),
        (format!(r#"{{"algorithms":["ES256"],"jwks":{{"keys":[{rsa}]}}}}"#), "no key can verify"),
        (format!(r#"{{"algorithms":["RS256"],"jwks":{{"keys":[{}]}}}}"#, rsa.replace("\"e\"", "\"alg\":\"HS256\",\"e\"")), "does not fit"),
        (r#"{"algorithms":["RS256"],"jwks":{"nokeys":1}}"#.into(), "jwks"),
        (r#"{"algorithms":["RS256"],"jwks_upstream":"idp","jwks_path":"x"}"#.into(), "jwks_path"),
        (r#"{"algorithms":["RS256"],"jwks_upstream":"idp","leeway_s":3600}"#.into(), "leeway_s"),
        (r#"{"algorithms":["RS256"],"jwks_upstream":"idp","audience":[]}"#.into(), "audience"),
        (r#"{"algorithms":["RS256"],"jwks_upstream":"idp","claims_to_headers":{"sub":"bad name"}}"#.into(), "claims_to_headers.sub"),
        (r#"{"algorithms":["RS256"],"jwks_upstream":"idp","realm":"a\"b"}"#.into(), "realm"),
        (r#"{"algorithms":["RS256"],"jwks_upstream":"idp","isuer":"x"}"#.into(), "isuer"),
    ] {
        let e = refused(&json);
        assert!(e.contains(key), "{json}: {e}");
    }
}
