use std::borrow::Cow;
use std::net::IpAddr;

use crate::bindings::sluice::plugin::types::{ClientInfo, RequestHead};
use crate::headers::{Headers, IntoBytes};

/// Facts about the client connection (read-only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Client {
    ip: String,
    scheme: String,
    route: String,
    sni: Option<String>,
    alpn: Option<String>,
    client_cert: Option<ClientCert>,
}

/// A client certificate the proxy verified (mTLS, `[tls] client_ca`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientCert {
    /// Distinguished name in RFC 4514 form, e.g. `"CN=alice, O=Example"`.
    pub subject: String,
    /// SubjectAltName entries: `"DNS:name"`, `"email:addr"`, `"URI:uri"`, `"IP:addr"`.
    pub sans: Vec<String>,
}

impl Client {
    /// Builds client facts by hand, e.g. in unit tests.
    pub fn new(ip: impl Into<String>, scheme: impl Into<String>, route: impl Into<String>) -> Self {
        Self {
            ip: ip.into(),
            scheme: scheme.into(),
            route: route.into(),
            ..Self::default()
        }
    }

    /// The same facts as arriving over TLS with this SNI, ALPN and client certificate
    /// (for unit tests).
    pub fn with_tls(
        mut self,
        sni: Option<&str>,
        alpn: Option<&str>,
        client_cert: Option<ClientCert>,
    ) -> Self {
        self.scheme = "https".to_string();
        self.sni = sni.map(str::to_string);
        self.alpn = alpn.map(str::to_string);
        self.client_cert = client_cert;
        self
    }

    /// Client IP address as text, e.g. `"127.0.0.1"` or `"::1"`.
    pub fn ip(&self) -> &str {
        &self.ip
    }

    /// Client IP address, parsed.
    pub fn ip_addr(&self) -> Option<IpAddr> {
        self.ip.parse().ok()
    }

    /// `"http"` or `"https"`.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// Whether the client connected over TLS.
    pub fn is_https(&self) -> bool {
        self.scheme == "https"
    }

    /// Name of the route that matched (its `name`, or `"ROUTE#INDEX"`).
    pub fn route(&self) -> &str {
        &self.route
    }

    /// Over TLS: the SNI name the client asked for (lower case).
    pub fn sni(&self) -> Option<&str> {
        self.sni.as_deref()
    }

    /// Over TLS: the ALPN protocol agreed on (`"h2"`, `"http/1.1"`).
    pub fn alpn(&self) -> Option<&str> {
        self.alpn.as_deref()
    }

    /// Over TLS with client certificates on: the verified client certificate.
    pub fn client_cert(&self) -> Option<&ClientCert> {
        self.client_cert.as_ref()
    }
}

impl From<ClientInfo> for Client {
    fn from(c: ClientInfo) -> Self {
        Self {
            ip: c.ip,
            scheme: c.scheme,
            route: c.route,
            sni: c.sni,
            alpn: c.alpn,
            client_cert: c.client_cert.map(|cert| ClientCert {
                subject: cert.subject,
                sans: cert.sans,
            }),
        }
    }
}

/// The request on its way to the upstream: method, path, query and headers (no body).
///
/// Framing and hop-by-hop headers (`connection`, `transfer-encoding`, `content-length`,
/// `upgrade`, `keep-alive`, `te`, `trailer`, `proxy-*`) belong to the host: changes to
/// them are ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    method: String,
    path: String,
    query: String,
    headers: Headers,
    upstream: Option<String>,
    hash_key: Option<String>,
    skip_body: bool,
}

impl Request {
    /// Builds a request by hand, e.g. in unit tests. `target` is a path with an optional
    /// `?query`.
    pub fn new(method: impl Into<String>, target: &str) -> Self {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut req = Self {
            method: method.into(),
            query: query.to_owned(),
            ..Self::default()
        };
        req.set_path(path);
        req
    }

    /// Adds a header; builder form of [`append_header`](Self::append_header).
    pub fn with_header(mut self, name: &str, value: impl IntoBytes) -> Self {
        self.append_header(name, value);
        self
    }

    /// Method as sent, e.g. `"GET"`.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// Changes the method sent upstream.
    pub fn set_method(&mut self, method: impl Into<String>) {
        self.method = method.into();
    }

    /// Path without the query; always starts with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Changes the path sent upstream. A missing leading `/` is added. The path must not
    /// contain `?` or `#`: use [`set_query`](Self::set_query) for the query.
    pub fn set_path(&mut self, path: impl Into<String>) {
        let mut path = path.into();
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        self.path = path;
    }

    /// Query string without the leading `?`; empty when there is none.
    pub fn query(&self) -> &str {
        &self.query
    }

    /// Replaces the query string (without the leading `?`; empty for none).
    pub fn set_query(&mut self, query: impl Into<String>) {
        self.query = query.into();
    }

    /// First value of query parameter `name`, form-decoded (`%XX` and `+`).
    /// A parameter without `=` has the value `""`.
    pub fn query_param(&self, name: &str) -> Option<Cow<'_, str>> {
        self.query_params().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// All query parameters in order, form-decoded.
    pub fn query_params(&self) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
        parse_query(&self.query)
    }

    /// First value of header `name` (any case); `None` when absent or not UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// First value of header `name` as raw bytes.
    pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.headers.get_bytes(name)
    }

    /// All headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// All headers, for changes beyond the shortcuts below.
    pub fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }

    /// Replaces every value of `name` with `value`, or adds it.
    pub fn set_header(&mut self, name: &str, value: impl IntoBytes) {
        self.headers.set(name, value);
    }

    /// Adds a value for `name`, keeping existing ones.
    pub fn append_header(&mut self, name: &str, value: impl IntoBytes) {
        self.headers.append(name, value);
    }

    /// Removes every value of `name`; returns whether there was any.
    pub fn remove_header(&mut self, name: &str) -> bool {
        self.headers.remove(name)
    }

    /// Value of cookie `name` from the `cookie` header(s), with surrounding quotes removed.
    /// Cookie names are case-sensitive.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .get_all("cookie")
            .filter_map(|v| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| {
                let v = v.trim();
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v)
            })
    }

    /// The upstream chosen so far by this plugin; `None` keeps the route's upstream.
    pub fn upstream(&self) -> Option<&str> {
        self.upstream.as_deref()
    }

    /// Sends the request to the upstream with this name from the proxy config instead of
    /// the route's own.
    pub fn set_upstream(&mut self, name: impl Into<String>) {
        self.upstream = Some(name.into());
    }

    /// Goes back to the route's upstream.
    pub fn clear_upstream(&mut self) {
        self.upstream = None;
    }

    /// The balancing key set by this plugin (upstreams with `balance = "hash"`).
    pub fn hash_key(&self) -> Option<&str> {
        self.hash_key.as_deref()
    }

    /// Balances the request by this key on upstreams with `balance = "hash"` (the same
    /// key, the same server), instead of the upstream's own `hash_key`.
    pub fn set_hash_key(&mut self, key: impl Into<String>) {
        self.hash_key = Some(key.into());
    }

    /// This plugin's `on_request_body` is not called for this request (e.g. a login
    /// gate that reads only its own form posts): the body streams on unless another
    /// plugin reads it.
    pub fn skip_body(&mut self) {
        self.skip_body = true;
    }

    /// True when [`skip_body`](Request::skip_body) was called.
    pub fn body_skipped(&self) -> bool {
        self.skip_body
    }

    pub(crate) fn into_parts(self) -> (RequestHead, Option<String>, Option<String>, bool) {
        let head = RequestHead {
            method: self.method,
            path: self.path,
            query: self.query,
            headers: self.headers.into_vec(),
        };
        (head, self.upstream, self.hash_key, self.skip_body)
    }
}

impl From<RequestHead> for Request {
    fn from(h: RequestHead) -> Self {
        Self {
            method: h.method,
            path: h.path,
            query: h.query,
            headers: Headers::from_vec(h.headers),
            upstream: None,
            hash_key: None,
            skip_body: false,
        }
    }
}

/// Splits a query string into form-decoded (name, value) pairs, skipping empty pieces.
pub fn parse_query(query: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(k), form_decode(v))
    })
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space, `%XX` a byte).
/// Malformed escapes are kept as is; invalid UTF-8 becomes U+FFFD.
pub fn form_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

fn hex(b: Option<&u8>) -> Option<u8> {
    match *b? {
        c @ b'0'..=b'9' => Some(c - b'0'),
        c @ b'a'..=b'f' => Some(c - b'a' + 10),
        c @ b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_splits_target() {
        let r = Request::new("GET", "/a/b?x=1&y");
        assert_eq!(r.path(), "/a/b");
        assert_eq!(r.query(), "x=1&y");
        assert_eq!(r.query_param("y").as_deref(), Some(""));
        assert_eq!(r.query_param("z"), None);
    }

    #[test]
    fn query_param_decodes() {
        let r = Request::new("GET", "/?q=a+b%20c&k%5F=%E2%9C%93&bad=%zz&tail=%4");
        assert_eq!(r.query_param("q").as_deref(), Some("a b c"));
        assert_eq!(r.query_param("k_").as_deref(), Some("\u{2713}"));
        assert_eq!(r.query_param("bad").as_deref(), Some("%zz"));
        assert_eq!(r.query_param("tail").as_deref(), Some("%4"));
        assert!(matches!(r.query_param("q"), Some(Cow::Owned(_))));
        let plain = Request::new("GET", "/?a=b");
        assert!(matches!(plain.query_param("a"), Some(Cow::Borrowed("b"))));
    }

    #[test]
    fn set_path_adds_slash() {
        let mut r = Request::new("GET", "/");
        r.set_path("x/y");
        assert_eq!(r.path(), "/x/y");
        r.set_path("");
        assert_eq!(r.path(), "/");
    }

    #[test]
    fn cookies_across_headers() {
        let r = Request::new("GET", "/")
            .with_header("Cookie", "a=1; beta=\"yes\"")
            .with_header("cookie", "c=3;d=");
        assert_eq!(r.cookie("beta"), Some("yes"));
        assert_eq!(r.cookie("c"), Some("3"));
        assert_eq!(r.cookie("d"), Some(""));
        assert_eq!(r.cookie("A"), None);
    }

    #[test]
    fn round_trip_moves_fields() {
        let head = RequestHead {
            method: "POST".into(),
            path: "/p".into(),
            query: "q".into(),
            headers: vec![("host".into(), b"h".to_vec())],
        };
        let mut r = Request::from(head);
        r.set_upstream("b");
        r.skip_body();
        let (head, upstream, _, skip_body) = r.into_parts();
        assert_eq!(head.method, "POST");
        assert_eq!(head.headers.len(), 1);
        assert_eq!(upstream.as_deref(), Some("b"));
        assert!(skip_body);
    }
}
