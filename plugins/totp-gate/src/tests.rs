use super::*;

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$E5v32cd33Ocot7u8tvZLZg$MdTWCPsfDUeVb+SHarOLZ7qEDsLKLVtIfhMZy1Ja9lo";
const SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
const SESSION: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn config(extra: &str) -> String {
    format!(
        r#"{{"users":[{{"name":"alice","password_hash":"{HASH}","totp_secret":"{SECRET}"}}],"session_secret":"{SESSION}"{extra}}}"#
    )
}

fn plugin(json: &str) -> TotpGate {
    match TotpGate::from_json(json) {
        Ok(p) => p,
        Err(e) => panic!("config rejected: {e}"),
    }
}

fn respond(action: Action) -> Reply {
    match action {
        Action::Respond(r) => r,
        other => panic!("not answered: {other:?}"),
    }
}

#[test]
fn next_is_only_ever_a_local_path() {
    for local in ["/", "/app/x?y=1", "/a%20b"] {
        assert_eq!(safe_next(local), local);
    }
    for foreign in [
        "//evil.example",
        "/\\evil.example",
        "\\\\evil.example",
        "https://evil.example/",
        "http:evil.example",
        "/%2F%2Fevil.example",
        "/%5Cevil.example",
        "/%2f/evil.example",
        "/\t/evil.example",
        " /x",
        "",
        "javascript:alert(1)",
    ] {
        assert_eq!(safe_next(foreign), "/", "{foreign:?}");
    }
}

#[test]
fn without_a_session_browsers_go_to_the_login_and_others_get_401() {
    let p = plugin(&config(""));
    let client = Client::new("192.0.2.1", "http", "r");
    let mut req = Request::new("GET", "/reports/q?year=2026&x=a b")
        .with_header("x-authenticated-user", "root");
    let r = respond(p.on_request(&mut Form::None, &client, &mut req));
    assert_eq!(r.status(), 302);
    assert_eq!(
        r.headers().get("location"),
        Some("/.sluice/login?next=/reports/q%3Fyear%3D2026%26x%3Da%20b")
    );
    let mut req = Request::new("POST", "/api");
    assert_eq!(
        respond(p.on_request(&mut Form::None, &client, &mut req)).status(),
        401
    );
    // A forged session cookie is no session.
    let mut req = Request::new("GET", "/").with_header("cookie", "sluice_session=abc.def");
    assert_eq!(
        respond(p.on_request(&mut Form::None, &client, &mut req)).status(),
        302
    );
}

#[test]
fn the_forms_and_logout_answer_on_their_paths() {
    let p = plugin(&config(r#","login_path":"/auth/""#));
    let client = Client::new("192.0.2.1", "http", "r");
    let mut req = Request::new("GET", "/auth?next=//evil.example");
    let r = respond(p.on_request(&mut Form::None, &client, &mut req));
    assert_eq!(r.status(), 200);
    let html = String::from_utf8_lossy(r.body_bytes()).into_owned();
    assert!(html.contains("name=\"next\" value=\"/\""), "{html}");
    assert!(html.contains("action=\"/auth\""));
    // The code form needs the pending cookie.
    let mut req = Request::new("GET", "/auth/code");
    let r = respond(p.on_request(&mut Form::None, &client, &mut req));
    assert_eq!(
        (r.status(), r.headers().get("location")),
        (303, Some("/auth"))
    );
    let mut req = Request::new("GET", "/auth/logout");
    assert_eq!(
        respond(p.on_request(&mut Form::None, &client, &mut req)).status(),
        405
    );
    let mut req = Request::new("POST", "/auth");
    let mut form = Form::None;
    assert_eq!(p.on_request(&mut form, &client, &mut req), Action::Continue);
    assert!(matches!(form, Form::Password));
}

#[test]
fn bad_configs_are_refused_with_the_key() {
    for (json, key) in [
        (r#"{"users":[],"session_secret":"x"}"#.to_string(), "users"),
        (config("").replace("alice", "a:b"), "users[0].name"),
        (config("").replace(HASH, "plain"), "users[0].password_hash"),
        (config("").replace(SECRET, "JBSWY1"), "users[0].totp_secret"),
        (
            config("").replace(SECRET, "JBSWY3DP"),
            "users[0].totp_secret",
        ),
        (config("").replace(SESSION, "c2hvcnQ="), "session_secret"),
        (config("").replace(SESSION, "!!"), "session_secret"),
        (config(r#","session_ttl_s":10"#), "session_ttl_s"),
        (config(r#","login_path":"login""#), "login_path"),
        (config(r#","login_path":"//evil""#), "login_path"),
        (config(r#","max_failures":0"#), "max_failures"),
        (config(r#","lockout_s":0"#), "lockout_s"),
        (config(r#","user_header":"bad name""#), "user_header"),
        (config(r#","sesion_ttl_s":60"#), "sesion_ttl_s"),
    ] {
        let e = match TotpGate::from_json(&json) {
            Ok(_) => panic!("accepted: {json}"),
            Err(e) => e,
        };
        assert!(e.contains(key), "{json}: {e}");
    }
}
