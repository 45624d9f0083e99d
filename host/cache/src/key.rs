//! Cache keys: the scheme, the host and the normalized target, plus the request
//! fields or cookies a route adds. Method-independent: `HEAD` reads what `GET` stored.

use http::header::{self, HeaderMap, HeaderName};

/// What a route adds to its keys (`key = ["header:NAME", "cookie:NAME"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    Header(HeaderName),
    Cookie(String),
}

impl KeyPart {
    /// Parses one `key` item; the error says what is accepted.
    pub fn parse(item: &str) -> Result<KeyPart, String> {
        if let Some(name) = item.strip_prefix("header:") {
            return HeaderName::from_bytes(name.as_bytes())
                .map(KeyPart::Header)
                .map_err(|_| format!("{name:?} is not a header name"));
        }
        if let Some(name) = item.strip_prefix("cookie:") {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"=;,".contains(&b))
            {
                return Err(format!("{name:?} is not a cookie name"));
            }
            return Ok(KeyPart::Cookie(name.to_string()));
        }
        Err(format!(
            "{item:?} is neither \"header:NAME\" nor \"cookie:NAME\""
        ))
    }
}

/// The URL part of a key: `scheme://host/path?query`, host lowercase.
pub fn url_key(scheme: &str, host: &str, path_and_query: &str) -> String {
    let mut key = String::with_capacity(scheme.len() + host.len() + path_and_query.len() + 3);
    key.push_str(scheme);
    key.push_str("://");
    key.extend(host.chars().map(|c| c.to_ascii_lowercase()));
    key.push_str(path_and_query);
    key
}

/// The full key: the URL part, then each added part on a line of its own (a URL
/// cannot hold a newline, so no two requests' parts can run together).
pub fn request_key(url: String, parts: &[KeyPart], request: &HeaderMap) -> String {
    let mut key = url;
    for part in parts {
        key.push('\n');
        match part {
            KeyPart::Header(name) => {
                key.push_str("h:");
                for (i, value) in request.get_all(name).iter().enumerate() {
                    if i > 0 {
                        key.push(',');
                    }
                    key.extend(value.as_bytes().iter().map(|&b| b as char));
                }
            }
            KeyPart::Cookie(name) => {
                key.push_str("c:");
                if let Some(value) = cookie(request, name) {
                    key.push('=');
                    key.push_str(value);
                }
            }
        }
    }
    key
}

/// Whether a key belongs to a URL (all its variants by added parts).
pub fn key_has_url(key: &str, url: &str) -> bool {
    key.strip_prefix(url)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('\n'))
}

fn cookie<'a>(request: &'a HeaderMap, name: &str) -> Option<&'a str> {
    request
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn keys_separate_hosts_schemes_and_added_parts() {
        let a = url_key("http", "Example.COM", "/a?x=1");
        assert_eq!(a, "http://example.com/a?x=1");
        assert_ne!(a, url_key("https", "example.com", "/a?x=1"));
        let parts = [
            KeyPart::parse("header:accept-language").unwrap(),
            KeyPart::parse("cookie:lang").unwrap(),
        ];
        let mut req = HeaderMap::new();
        req.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static("fr"));
        req.insert(header::COOKIE, HeaderValue::from_static("x=1; lang=de"));
        let key = request_key(a.clone(), &parts, &req);
        assert_eq!(key, "http://example.com/a?x=1\nh:fr\nc:=de");
        assert!(key_has_url(&key, &a));
        assert!(!key_has_url(&key, "http://example.com/a?x="));
        let none = request_key(a.clone(), &parts, &HeaderMap::new());
        assert_ne!(none, key);
    }

    #[test]
    fn bad_key_items_are_named() {
        assert!(KeyPart::parse("query:x").unwrap_err().contains("query:x"));
        assert!(KeyPart::parse("header:a b").is_err());
        assert!(KeyPart::parse("cookie:").is_err());
    }
}
