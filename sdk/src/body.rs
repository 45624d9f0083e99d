use std::borrow::Cow;

use serde::de::DeserializeOwned;

use crate::headers::IntoBytes;
use crate::request::parse_query;

/// A whole request or response body, as a body hook gets it (at most the size the
/// plugin declared in [`Plugin::body_limits`](crate::Plugin::body_limits)).
/// [`set`](Body::set) replaces it; the host then sends the new body with a
/// `Content-Length` of its length.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Body {
    bytes: Vec<u8>,
    replaced: bool,
}

impl Body {
    /// A body as received, e.g. in unit tests.
    pub fn new(bytes: impl IntoBytes) -> Self {
        Self {
            bytes: bytes.into_vec(),
            replaced: false,
        }
    }

    /// The body's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True when there is no body (or an empty one).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The body as UTF-8 text, when it is.
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.bytes).ok()
    }

    /// The body parsed as JSON into `T`; the error says what did not fit.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.bytes).map_err(|e| e.to_string())
    }

    /// The body as `application/x-www-form-urlencoded` (name, value) pairs, decoded;
    /// nothing when it is not UTF-8.
    pub fn form(&self) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
        parse_query(self.text().unwrap_or(""))
    }

    /// Replaces the body sent on.
    pub fn set(&mut self, bytes: impl IntoBytes) {
        self.bytes = bytes.into_vec();
        self.replaced = true;
    }

    /// Replaces the body with `value` as JSON (set `content-type` yourself).
    pub fn set_json<T: serde::Serialize + ?Sized>(&mut self, value: &T) {
        // Serializing plain data into a Vec cannot fail; an empty body is the fallback.
        self.set(serde_json::to_vec(value).unwrap_or_default());
    }

    /// True once [`set`](Body::set) replaced it.
    pub fn is_replaced(&self) -> bool {
        self.replaced
    }

    /// The new body, when it was replaced.
    pub(crate) fn into_replacement(self) -> Option<Vec<u8>> {
        self.replaced.then_some(self.bytes)
    }
}
