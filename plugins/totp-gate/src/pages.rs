//! The login pages: plain, accessible HTML with no external resources (no scripts, no
//! fonts, no images), sent with headers that keep them out of caches and frames.

use sluice_sdk::Reply;

/// `text` with `& < > " '` escaped for HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:16px/1.5 system-ui,sans-serif;max-width:22rem;margin:4rem auto;padding:0 1rem;color:#1a1a1a}\
h1{font-size:1.4rem}label{display:block;margin-top:1rem;font-weight:600}\
input{width:100%;box-sizing:border-box;padding:.5rem;font-size:1rem;border:1px solid #767676;border-radius:4px}\
input:focus{outline:3px solid #1a5fb4;outline-offset:1px}\
button{margin-top:1.5rem;width:100%;padding:.6rem;font-size:1rem;background:#1a5fb4;color:#fff;border:0;border-radius:4px}\
p.error{color:#a51d2d;font-weight:600}";

fn page(status: u16, title: &str, error: Option<&str>, form: &str) -> Reply {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title}</title><style>{STYLE}</style></head>\
<body><main><h1>{title}</h1>{error}{form}</main></body></html>\n"
    );
    Reply::new(status)
        .header("content-type", "text/html; charset=utf-8")
        .header("cache-control", "no-store")
        .header(
            "content-security-policy",
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        )
        .header("x-frame-options", "DENY")
        .header("referrer-policy", "no-referrer")
        .body(html)
}

/// The user name and password form.
pub fn login(status: u16, action: &str, next: &str, error: Option<&str>) -> Reply {
    let form = format!(
        "<form method=\"post\" action=\"{}\">\
<input type=\"hidden\" name=\"next\" value=\"{}\">\
<label for=\"username\">User name</label>\
<input id=\"username\" name=\"username\" autocomplete=\"username\" required autofocus>\
<label for=\"password\">Password</label>\
<input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
<button type=\"submit\">Continue</button></form>",
        escape(action),
        escape(next)
    );
    page(status, "Sign in", error, &form)
}

/// The one-time code form.
pub fn code(status: u16, action: &str, next: &str, error: Option<&str>) -> Reply {
    let form = format!(
        "<form method=\"post\" action=\"{}\">\
<input type=\"hidden\" name=\"next\" value=\"{}\">\
<label for=\"code\">Code from your authenticator app</label>\
<input id=\"code\" name=\"code\" inputmode=\"numeric\" pattern=\"[0-9]{{6}}\" maxlength=\"6\" autocomplete=\"one-time-code\" required autofocus>\
<button type=\"submit\">Sign in</button></form>",
        escape(action),
        escape(next)
    );
    page(status, "Enter your code", error, &form)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_and_nothing_external_is_loaded() {
        let r = login(
            200,
            "/.sluice/login",
            "/a\"><script>x</script>",
            Some("<b>"),
        );
        let html = String::from_utf8_lossy(r.body_bytes()).into_owned();
        assert!(html.contains("/a&quot;&gt;&lt;script&gt;x&lt;/script&gt;"));
        assert!(html.contains("&lt;b&gt;"));
        assert!(!html.contains("<script"));
        assert!(!html.contains("http"));
        assert!(html.contains("<label for=\"password\">"));
    }
}
