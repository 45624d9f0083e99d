//! Where a message body ends and whether its connection carries another message
//! (RFC 9112 §6, §9.3), read from the fields of a head while they are parsed.

use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, StatusCode, Version};

use super::FramingError;

/// Fields that describe one connection, never forwarded (RFC 9110 §7.6.1).
pub const HOP_BY_HOP_TEXT: [&str; 6] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// How a message body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// This many bytes (0: no body).
    Length(u64),
    Chunked,
    /// Until the sender closes the connection (responses only).
    Close,
}

/// Why a request's framing is refused, and what the client is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestFramingError {
    /// 400: framing that two parsers could read differently.
    #[error("{0}")]
    Ambiguous(&'static str),
    /// 501: a transfer coding Sluice does not decode.
    #[error("transfer coding other than chunked")]
    UnknownCoding,
}

/// What a head's fields say about its body's framing and its connection, gathered
/// while the fields are read.
#[derive(Debug, Default)]
pub struct FramingFields {
    pub length: Option<u64>,
    pub transfer_encoding: bool,
    /// The last transfer coding seen is `chunked`.
    pub chunked: bool,
    /// Every transfer coding seen is `chunked` (and there is one).
    pub only_chunked: bool,
    pub close: bool,
    pub keep_alive: bool,
    /// `Connection: upgrade` was seen.
    pub upgrade: bool,
}

impl FramingFields {
    /// Notes `name: value` if it is a framing field.
    pub fn note(&mut self, name: &HeaderName, value: &[u8]) -> Result<(), FramingError> {
        if name == CONTENT_LENGTH {
            self.note_length(value)?;
        } else if name == TRANSFER_ENCODING {
            self.note_transfer_encoding(value);
        } else if name == CONNECTION {
            // Fields it names are stripped from the map later, by name.
            self.note_connection(value);
        }
        Ok(())
    }

    pub fn note_length(&mut self, value: &[u8]) -> Result<(), FramingError> {
        add_length(&mut self.length, value)
    }

    pub fn note_transfer_encoding(&mut self, value: &[u8]) {
        let first = !self.transfer_encoding;
        self.transfer_encoding = true;
        let mut all_chunked = true;
        let mut last_chunked = false;
        let mut any = false;
        for coding in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if coding.is_empty() {
                continue;
            }
            any = true;
            last_chunked = coding.eq_ignore_ascii_case(b"chunked");
            all_chunked &= last_chunked;
        }
        // A later field continues the list: `chunked` must still come last.
        if any {
            self.chunked = last_chunked;
            self.only_chunked = (first || self.only_chunked) && all_chunked;
        }
    }

    /// Notes `close`, `keep-alive` and `upgrade`; returns whether the value also names
    /// fields other than the fixed hop-by-hop ones (which a map strips by name).
    pub fn note_connection(&mut self, value: &[u8]) -> bool {
        // The usual value, alone, is told without splitting.
        if value.eq_ignore_ascii_case(b"keep-alive") {
            self.keep_alive = true;
            return false;
        }
        let mut names_others = false;
        for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if !token.is_empty() {
                self.upgrade |= token.eq_ignore_ascii_case(b"upgrade");
                names_others |= !HOP_BY_HOP_TEXT
                    .iter()
                    .any(|known| token.eq_ignore_ascii_case(known.as_bytes()));
            }
        }
        names_others
    }

    /// A response body's framing (RFC 9112 §6.3) and whether the connection can carry
    /// another message after it.
    pub fn response_framing(
        &self,
        status: StatusCode,
        is_head: bool,
        version: Version,
    ) -> (BodyFraming, bool) {
        // An HTTP/1.0 message with Transfer-Encoding: its sender may have meant other
        // framing, so the connection is not trusted with another message (§6.1).
        let reusable = !(self.transfer_encoding && version == Version::HTTP_10);
        if is_head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            return (BodyFraming::Length(0), reusable);
        }
        if self.transfer_encoding {
            return if self.chunked {
                (BodyFraming::Chunked, reusable && self.length.is_none())
            } else {
                (BodyFraming::Close, false)
            };
        }
        match self.length {
            Some(length) => (BodyFraming::Length(length), reusable),
            None => (BodyFraming::Close, false),
        }
    }

    /// A request body's framing (RFC 9112 §6.3): stricter than a response's, since a
    /// request another server reads differently is how smuggling starts. Refused:
    /// Transfer-Encoding beside Content-Length, in HTTP/1.0, or not ending in
    /// chunked (400); a coding other than chunked (501).
    pub fn request_framing(&self, version: Version) -> Result<BodyFraming, RequestFramingError> {
        if !self.transfer_encoding {
            return Ok(BodyFraming::Length(self.length.unwrap_or(0)));
        }
        if self.length.is_some() {
            return Err(RequestFramingError::Ambiguous(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        if version != Version::HTTP_11 {
            return Err(RequestFramingError::Ambiguous(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if !self.chunked {
            return Err(RequestFramingError::Ambiguous(
                "Transfer-Encoding does not end in chunked",
            ));
        }
        if !self.only_chunked {
            return Err(RequestFramingError::UnknownCoding);
        }
        Ok(BodyFraming::Chunked)
    }

    /// Whether the sender wants the connection kept after this message.
    pub fn keep_alive(&self, version: Version) -> bool {
        if version == Version::HTTP_11 {
            !self.close
        } else {
            self.keep_alive && !self.close
        }
    }
}

/// Adds one Content-Length field value to `length`: repeated fields and lists must
/// all agree, and each is plain digits.
pub fn add_length(length: &mut Option<u64>, value: &[u8]) -> Result<(), FramingError> {
    let invalid = FramingError("invalid Content-Length");
    for part in value.split(|&b| b == b',') {
        let digits = part.trim_ascii();
        if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(invalid);
        }
        let n = digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        match *length {
            Some(seen) if seen != n => return Err(invalid),
            _ => *length = Some(n),
        }
    }
    Ok(())
}

/// The Content-Length of `headers`, checked as a received head's is.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, FramingError> {
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        add_length(&mut length, value.as_bytes())?;
    }
    Ok(length)
}

/// Whether a comma-separated field value lists `token` (case-insensitively).
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(lines: &[(&str, &str)]) -> Result<FramingFields, FramingError> {
        let mut framing = FramingFields::default();
        for (name, value) in lines {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            framing.note(&name, value.as_bytes())?;
        }
        Ok(framing)
    }

    fn request(lines: &[(&str, &str)]) -> Result<BodyFraming, RequestFramingError> {
        let framing = fields(lines).map_err(|e| RequestFramingError::Ambiguous(e.0))?;
        framing.request_framing(Version::HTTP_11)
    }

    #[test]
    fn request_framing_is_one_length_or_chunked_alone() {
        assert_eq!(request(&[]), Ok(BodyFraming::Length(0)));
        assert_eq!(
            request(&[("content-length", "5"), ("Content-Length", "5, 5")]),
            Ok(BodyFraming::Length(5))
        );
        assert_eq!(
            request(&[("transfer-encoding", "Chunked")]),
            Ok(BodyFraming::Chunked)
        );
        assert_eq!(
            request(&[("transfer-encoding", "chunked"), ("transfer-encoding", "")]),
            Ok(BodyFraming::Chunked)
        );
        for ambiguous in [
            &[("content-length", "5"), ("content-length", "6")][..],
            &[("content-length", "+5")],
            &[("content-length", "5"), ("transfer-encoding", "chunked")],
            &[("transfer-encoding", "chunked, gzip")],
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "gzip"),
            ],
            &[("transfer-encoding", "gzip")],
            &[("transfer-encoding", "chunked;q=1")],
            &[("transfer-encoding", "")],
        ] {
            assert!(
                matches!(request(ambiguous), Err(RequestFramingError::Ambiguous(_))),
                "{ambiguous:?}"
            );
        }
        assert_eq!(
            request(&[("transfer-encoding", "gzip, chunked")]),
            Err(RequestFramingError::UnknownCoding)
        );
        let chunked = fields(&[("transfer-encoding", "chunked")]).unwrap();
        assert!(chunked.request_framing(Version::HTTP_10).is_err());
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let head = |lines: &[(&str, &str)], version| {
            fields(lines)
                .unwrap()
                .response_framing(StatusCode::OK, false, version)
        };
        assert_eq!(
            head(&[("content-length", "3")], Version::HTTP_11),
            (BodyFraming::Length(3), true)
        );
        assert_eq!(
            head(
                &[("content-length", "3"), ("transfer-encoding", "chunked")],
                Version::HTTP_11
            ),
            (BodyFraming::Chunked, false)
        );
        assert_eq!(
            head(&[("transfer-encoding", "chunked")], Version::HTTP_10),
            (BodyFraming::Chunked, false)
        );
        assert_eq!(head(&[], Version::HTTP_11), (BodyFraming::Close, false));
        let none = fields(&[("content-length", "9")]).unwrap();
        assert_eq!(
            none.response_framing(StatusCode::NOT_MODIFIED, false, Version::HTTP_11),
            (BodyFraming::Length(0), true)
        );
    }

    #[test]
    fn connection_tokens() {
        let f = fields(&[("connection", "Keep-Alive, Upgrade")]).unwrap();
        assert!(f.keep_alive && f.upgrade && !f.close);
        assert!(f.keep_alive(Version::HTTP_10));
        let f = fields(&[("connection", "close")]).unwrap();
        assert!(!f.keep_alive(Version::HTTP_11));
        assert!(!FramingFields::default().keep_alive(Version::HTTP_10));
        assert!(has_token(b"a, Close ,b", b"close"));
        assert!(!has_token(b"closed", b"close"));
    }
}
