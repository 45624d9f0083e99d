//! Parsing an HTTP/1.1 request head: httparse into the `Request` the pipeline takes
//! (field values share the read buffer), the framing rules of `protocol::wire`, and
//! the error answer for a head that is refused.

use std::mem::MaybeUninit;

use http::{Method, Request, StatusCode, Version};

use super::HeadLimits;
use crate::protocol::body::ReceivedBody;
use crate::protocol::upgrade::GrantUpgrade;
use crate::protocol::wire::framing::{BodyFraming, FramingFields, RequestFramingError};

/// The own parser keeps this many header slots on the stack; a head with more (up to
/// `max_headers`) is parsed again with room for them on the heap.
pub(super) const MAX_OWN_HEADERS: usize = 64;
/// Longest request target taken (hyper's bound); the pipeline holds targets to
/// `server.max_uri_bytes`, which is lower.
const MAX_URI_LEN: usize = u16::MAX as usize - 1;

/// A request head the own server takes, how it wants the connection kept, and its
/// body, if it has one.
pub(super) struct Head {
    pub(super) request: Request<ReceivedBody>,
    pub(super) keep_alive: bool,
    pub(super) body: Option<BodyPlan>,
    /// The client asked for an upgrade: granted if the response is a `101`.
    pub(super) upgrade: Option<GrantUpgrade>,
}

/// How a request's body is to be read.
#[derive(Debug, Clone, Copy)]
pub(super) struct BodyPlan {
    pub(super) framing: BodyFraming,
    /// The client waits for `100 Continue` before it sends the body.
    pub(super) expect_continue: bool,
}

impl BodyPlan {
    pub(super) fn length(&self) -> Option<u64> {
        match self.framing {
            BodyFraming::Length(n) => Some(n),
            _ => None,
        }
    }
}

/// An error answer to a head the own server does not serve, and why (for the debug
/// log); the connection closes after it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Refusal {
    pub(super) status: StatusCode,
    pub(super) why: &'static str,
}

impl Refusal {
    pub(super) const HEAD_TOO_LARGE: Refusal = Refusal {
        status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        why: "request head over server.max_header_bytes",
    };

    pub(super) fn bad_request(why: &'static str) -> Self {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            why,
        }
    }
}

/// What a parsed head says, with its fields' spans written aside.
pub(super) struct ParsedHead {
    pub(super) len: usize,
    pub(super) method: Method,
    pub(super) target: [u32; 2],
    pub(super) version: Version,
    pub(super) count: usize,
    pub(super) framing: BodyFraming,
    pub(super) keep_alive: bool,
    pub(super) expect_continue: bool,
    pub(super) upgrade: bool,
}

/// Parses the request head at the start of `buf` into `slots`, writing where each
/// field lies into `spans`; `Ok(None)` while incomplete.
pub(super) fn parse_head<'b>(
    buf: &'b [u8],
    slots: &mut [MaybeUninit<httparse::Header<'b>>],
    spans: &mut [[u32; 4]],
    limits: HeadLimits,
) -> Result<Option<ParsedHead>, Refusal> {
    let bad = |why| Err(Refusal::bad_request(why));
    let mut parsed = httparse::Request::new(&mut []);
    let room = limits.max_headers.min(slots.len());
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots[..room],
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal {
                status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                why: "more header fields than server.max_headers",
            })
        }
        Err(_) => return bad("malformed request head"),
    };
    if len > limits.max_bytes {
        return Err(Refusal::HEAD_TOO_LARGE);
    }
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return bad("unsupported HTTP version"),
    };
    let Some(method) = parsed
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
    else {
        return bad("invalid method");
    };
    let Some(target) = parsed.path else {
        return bad("no request target");
    };
    if target.len() > MAX_URI_LEN {
        return Err(Refusal {
            status: StatusCode::URI_TOO_LONG,
            why: "request target too long",
        });
    }
    let target = span_of(buf, target.as_bytes());
    let mut fields = FramingFields::default();
    let mut expect_continue = false;
    let mut upgrade = false;
    let count = parsed.headers.len();
    for (header, span) in parsed.headers.iter().zip(spans.iter_mut()) {
        let name = header.name.as_bytes();
        let noted = match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => fields.note_length(header.value),
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                fields.note_transfer_encoding(header.value);
                Ok(())
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                fields.note_connection(header.value);
                Ok(())
            }
            6 if name.eq_ignore_ascii_case(b"expect") => {
                if !header
                    .value
                    .trim_ascii()
                    .eq_ignore_ascii_case(b"100-continue")
                {
                    return Err(Refusal {
                        status: StatusCode::EXPECTATION_FAILED,
                        why: "an expectation other than 100-continue",
                    });
                }
                // HTTP/1.0 clients cannot ask for it (RFC 9110 §10.1.1).
                expect_continue = version == Version::HTTP_11;
                Ok(())
            }
            7 if name.eq_ignore_ascii_case(b"upgrade") => {
                upgrade = true;
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(e) = noted {
            return bad(e.0);
        }
        let [name_start, name_end] = span_of(buf, name);
        let [value_start, value_end] = span_of(buf, header.value);
        *span = [name_start, name_end, value_start, value_end];
    }
    let framing = match fields.request_framing(version) {
        Ok(framing) => framing,
        Err(RequestFramingError::Ambiguous(why)) => return bad(why),
        Err(RequestFramingError::UnknownCoding) => {
            return Err(Refusal {
                status: StatusCode::NOT_IMPLEMENTED,
                why: "a transfer coding other than chunked",
            })
        }
    };
    Ok(Some(ParsedHead {
        len,
        method,
        target,
        version,
        count,
        framing,
        keep_alive: fields.keep_alive(version),
        expect_continue: expect_continue && framing != BodyFraming::Length(0),
        // An upgrade is granted to a bodiless HTTP/1.1 request that names it in both
        // `Upgrade` and `Connection`.
        upgrade: upgrade
            && fields.upgrade
            && version == Version::HTTP_11
            && framing == BodyFraming::Length(0),
    }))
}

/// `part`'s position in `buf`, which it is a slice of (as httparse's results are).
pub(super) fn span_of(buf: &[u8], part: &[u8]) -> [u32; 2] {
    let start = (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize);
    // Heads are bounded by `max_header_bytes`, far below u32::MAX.
    [start as u32, (start + part.len()) as u32]
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_bytes: 8192,
        max_headers: 32,
        added_fields: 0,
    };

    /// What `parse_head` makes of `buf`, as comparable text.
    fn outcome(buf: &[u8]) -> String {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; 32];
        let mut spans = [[0u32; 4]; 32];
        match parse_head(buf, &mut slots, &mut spans, LIMITS) {
            Ok(None) => "partial".into(),
            Ok(Some(head)) => format!(
                "head {} {} {:?} {:?} {:?} {} {}",
                head.len,
                head.method,
                head.version,
                head.framing,
                &spans[..head.count],
                head.keep_alive,
                head.expect_continue
            ),
            Err(refusal) => format!("refused {}", refusal.status),
        }
    }

    /// A request head built from generated parts: methods, targets, framing fields in
    /// odd cases and spacing, repeated and conflicting.
    fn head() -> impl Strategy<Value = Vec<u8>> {
        let method = prop::sample::select(vec!["GET", "POST", "HEAD", "PUT", "OPTIONS", "G\tT"]);
        let target = prop::sample::select(vec!["/", "/a?b=c", "http://x/y", "*", "/%00", "/a b"]);
        let version = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 "]);
        let field = prop::sample::select(vec![
            "Host: x",
            "Content-Length: 5",
            "content-length: 05",
            "Content-Length: 6",
            "Content-Length: 5, 5",
            "Content-Length: +5",
            "Transfer-Encoding: chunked",
            "transfer-encoding: CHUNKED",
            "Transfer-Encoding: gzip, chunked",
            "Transfer-Encoding: chunked, gzip",
            "Transfer-Encoding : chunked",
            " Transfer-Encoding: chunked",
            "Transfer-Encoding:\tchunked",
            "Connection: close",
            "Connection: keep-alive, Upgrade",
            "Upgrade: websocket",
            "Expect: 100-continue",
            "Expect: nothing",
            "X-A: \u{7f}",
        ]);
        (method, target, version, prop::collection::vec(field, 0..6)).prop_map(
            |(method, target, version, fields)| {
                let mut head = format!("{method} {target} {version}\r\n");
                for field in fields {
                    head.push_str(field);
                    head.push_str("\r\n");
                }
                head.push_str("\r\n");
                head.into_bytes()
            },
        )
    }

    /// A head, then up to four bytes replaced, inserted or removed.
    fn mangled() -> impl Strategy<Value = Vec<u8>> {
        let edits = prop::collection::vec(
            (
                any::<prop::sample::Index>(),
                0u8..3,
                prop::sample::select(b"\r\n:; \t\0\x7fa-,".to_vec()),
            ),
            0..4,
        );
        (head(), edits).prop_map(|(mut head, edits)| {
            for (at, kind, byte) in edits {
                let at = at.index(head.len());
                match kind {
                    0 => head[at] = byte,
                    1 => head.insert(at, byte),
                    _ => {
                        head.remove(at);
                    }
                }
            }
            head
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Every input ends in a head, a refusal or a wait for more bytes, never a
        /// panic; every prefix of it waits or ends the same way; and a head taken
        /// agrees with httparse on where it ends and what its fields are.
        #[test]
        fn a_request_head_has_one_reading(buf in mangled()) {
            let whole = outcome(&buf);
            for end in 0..buf.len() {
                let prefix = outcome(&buf[..end]);
                prop_assert!(
                    prefix == "partial" || prefix == whole,
                    "prefix {end} of {:?}: {prefix} against {whole}", String::from_utf8_lossy(&buf)
                );
            }
            if let Some(rest) = whole.strip_prefix("head ") {
                let mut fields = [httparse::EMPTY_HEADER; 32];
                let mut request = httparse::Request::new(&mut fields);
                let status = request.parse(&buf);
                let Ok(httparse::Status::Complete(len)) = status else {
                    panic!("taken here, not by httparse: {:?}", String::from_utf8_lossy(&buf));
                };
                let same_end = rest.starts_with(&format!("{len} "));
                prop_assert!(same_end, "ends differ from httparse's {len}: {rest}");
                // A head with framing fields is read one way: chunked alone, or one
                // agreed length.
                let te = request.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding")).count();
                let cl = request.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("content-length")).count();
                prop_assert!(!(te > 0 && cl > 0), "both framings taken: {:?}", String::from_utf8_lossy(&buf));
            }
        }
    }
}
