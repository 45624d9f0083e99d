//! The plugin boundary: `http` types to the WIT records plugins see and back. Which
//! headers a plugin may not change is the caller's rule (`keep`), so this knows no
//! proxy policy.

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use super::bindings::RequestHead;

/// Headers as the plugin interface carries them: lower-case names, raw values, in order.
pub fn headers_to_wit(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect()
}

/// Replaces the headers of `headers` with a plugin's `list`, except those `keep` says
/// belong to the host: the plugin's copies of them are ignored, the originals kept.
/// An invalid name or value is an error naming it.
pub fn apply_headers(
    headers: &mut HeaderMap,
    list: Vec<(String, Vec<u8>)>,
    keep: impl Fn(&HeaderName) -> bool,
) -> Result<(), String> {
    let mut next = HeaderMap::with_capacity(list.len() + 2);
    for (name, value) in list {
        let name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("header name {name:?}"))?;
        if keep(&name) {
            continue;
        }
        let value = HeaderValue::from_bytes(&value)
            .map_err(|_| format!("value of header {:?}", name.as_str()))?;
        next.append(name, value);
    }
    for (name, value) in headers.iter() {
        if keep(name) {
            next.append(name.clone(), value.clone());
        }
    }
    *headers = next;
    Ok(())
}

/// The request head a plugin sees.
pub fn request_head(parts: &http::request::Parts) -> RequestHead {
    RequestHead {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or("").to_owned(),
        headers: headers_to_wit(&parts.headers),
    }
}

/// A plugin's method, checked.
pub fn method(text: &str) -> Result<Method, String> {
    Method::from_bytes(text.as_bytes()).map_err(|_| format!("method {text:?}"))
}

/// A plugin's final status: 200 to 599 (an interim `1xx` is the host's to send).
pub fn status(code: u16) -> Result<StatusCode, String> {
    StatusCode::from_u16(code)
        .ok()
        .filter(|s| !s.is_informational())
        .ok_or_else(|| format!("status {code}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_kept_ones_stay_the_hosts() {
        let mut headers = HeaderMap::new();
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("content-length", HeaderValue::from_static("5"));
        let mut list = headers_to_wit(&headers);
        assert_eq!(list[0], ("x-a".to_string(), b"1".to_vec()));
        list.push(("content-length".into(), b"99".to_vec()));
        list.push(("x-b".into(), b"2".to_vec()));
        apply_headers(&mut headers, list, |n| n == "content-length").expect("valid");
        assert_eq!(
            headers.get("content-length").map(|v| v.as_bytes()),
            Some(&b"5"[..])
        );
        assert_eq!(headers.get_all("content-length").iter().count(), 1);
        assert_eq!(headers.get("x-b").map(|v| v.as_bytes()), Some(&b"2"[..]));
    }

    #[test]
    fn invalid_plugin_output_is_named() {
        let mut headers = HeaderMap::new();
        let bad_name = vec![("bad name".to_string(), b"1".to_vec())];
        let e = apply_headers(&mut headers, bad_name, |_| false).unwrap_err();
        assert!(e.contains("bad name"), "{e}");
        let bad_value = vec![("x-a".to_string(), b"a\r\nb".to_vec())];
        let e = apply_headers(&mut headers, bad_value, |_| false).unwrap_err();
        assert!(e.contains("x-a"), "{e}");
        assert!(status(101).is_err() && status(1000).is_err() && status(204).is_ok());
        assert!(method("GET").is_ok() && method("BAD METHOD").is_err());
    }
}
