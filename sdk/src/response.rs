use crate::bindings::sluice::plugin::types::{self as wit, ResponseHead};
use crate::headers::{Headers, IntoBytes};

/// The upstream's response on its way to the client: status and headers. The body
/// streams past the plugin and cannot be read; replace the whole response to change it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    status: u16,
    headers: Headers,
}

impl Response {
    /// Builds a response head by hand, e.g. in unit tests.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Headers::new(),
        }
    }

    /// Adds a header; builder form of [`append_header`](Self::append_header).
    pub fn with_header(mut self, name: &str, value: impl IntoBytes) -> Self {
        self.append_header(name, value);
        self
    }

    /// Status code, e.g. 200.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Changes the status code sent to the client.
    pub fn set_status(&mut self, status: u16) {
        self.status = status;
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

    pub(crate) fn into_head(self) -> ResponseHead {
        ResponseHead {
            status: self.status,
            headers: self.headers.into_vec(),
        }
    }
}

impl From<ResponseHead> for Response {
    fn from(h: ResponseHead) -> Self {
        Self {
            status: h.status,
            headers: Headers::from_vec(h.headers),
        }
    }
}

/// A complete response made by the plugin: answers a request directly
/// ([`Action::Respond`](crate::Action::Respond)) or replaces the upstream's response
/// ([`ResponseAction::Replace`](crate::ResponseAction::Replace)).
///
/// ```
/// # use sluice_sdk::Reply;
/// let r = Reply::new(401)
///     .header("www-authenticate", "ApiKey")
///     .body("no key");
/// assert_eq!(r.status(), 401);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    status: u16,
    headers: Headers,
    body: Vec<u8>,
}

impl Reply {
    /// An empty response with this status. The host sets `content-length`.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Headers::new(),
            body: Vec::new(),
        }
    }

    /// A `text/plain; charset=utf-8` response.
    pub fn text(status: u16, text: impl Into<String>) -> Self {
        Self::new(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(text.into())
    }

    /// An `application/json` response with `value` serialized. If `value` cannot be
    /// serialized (a map with non-string keys, say), the reply is a 500 saying so.
    pub fn json<T: serde::Serialize + ?Sized>(status: u16, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self::new(status)
                .header("content-type", "application/json")
                .body(body),
            Err(e) => Self::text(500, format!("plugin reply not serializable: {e}")),
        }
    }

    /// A redirect (`status` 301, 302, 303, 307 or 308) to `location`.
    pub fn redirect(status: u16, location: impl IntoBytes) -> Self {
        Self::new(status).header("location", location)
    }

    /// Adds a header (repeats are kept, e.g. several `set-cookie`).
    pub fn header(mut self, name: &str, value: impl IntoBytes) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl IntoBytes) -> Self {
        self.body = body.into_vec();
        self
    }

    /// Status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// Headers, mutable.
    pub fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }

    /// Body bytes.
    pub fn body_bytes(&self) -> &[u8] {
        &self.body
    }

    pub(crate) fn into_wit(self) -> wit::Response {
        wit::Response {
            status: self.status,
            headers: self.headers.into_vec(),
            body: self.body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_reply() {
        let r = Reply::json(401, &serde_json::json!({"error": "unauthorized"}));
        assert_eq!(r.headers().get("content-type"), Some("application/json"));
        assert_eq!(r.body_bytes(), br#"{"error":"unauthorized"}"#);
    }

    #[test]
    fn json_reply_unserializable() {
        let mut m = std::collections::HashMap::new();
        m.insert((1, 2), 3);
        assert_eq!(Reply::json(200, &m).status(), 500);
    }

    #[test]
    fn text_and_headers() {
        let r = Reply::text(418, "short and stout")
            .header("Set-Cookie", "a=1")
            .header("set-cookie", "b=2");
        let w = r.into_wit();
        assert_eq!(w.status, 418);
        assert_eq!(w.body, b"short and stout");
        assert_eq!(
            w.headers.iter().filter(|(n, _)| n == "set-cookie").count(),
            2
        );
    }
}
