//! A response head's fields kept as the upstream sent them. When nothing reads or
//! rewrites a response's headers (no on-response plugin, and the own HTTP/1.1 server
//! writes the response), building a `HeaderMap` only to write it out again is the
//! largest cost left on the plain path. The fields are classified here instead, and the
//! server copies the ones that go on in a few runs of bytes.
//!
//! What goes on is what the header map would have carried after `strip_hop_by_hop`:
//! hop-by-hop and `Proxy-*` fields, and the framing (`Content-Length`, which the server
//! writes itself), stay behind. A head this cannot say the same of (a `Connection`
//! that names other fields, more runs than kept inline) is put in a map as before.

use bytes::Bytes;

use super::wire::framing::FramingFields;
use super::wire::FramingError;

/// How a caller wants a response head's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldsWanted {
    /// All in the response's header map: plugins, HTTP/2 and upgrades read it.
    Map,
    /// As sent, as `RawFields` the response body carries, where the head allows: for
    /// the own HTTP/1.1 server, which writes them out as they are.
    Raw,
}

/// Where a field's name and value lie (start and end of each) in the buffer that
/// starts at `base` and holds it.
pub fn field_span(base: usize, header: &httparse::Header<'_>) -> FieldSpan {
    let name = header.name.as_ptr() as usize - base;
    let value = header.value.as_ptr() as usize - base;
    (
        name as u32,
        (name + header.name.len()) as u32,
        value as u32,
        (value + header.value.len()) as u32,
    )
}

/// A field's name start and end, and its value's, in its head.
pub type FieldSpan = (u32, u32, u32, u32);

/// Most runs of consecutive lines kept inline; a head that needs more takes the map.
const MAX_RUNS: usize = 6;

/// Header fields a response carries as the upstream sent them, after (and besides) its
/// header map's. Carried by the response body, and only when asked for.
#[derive(Debug)]
pub struct RawFields {
    head: Bytes,
    /// Byte ranges of `head`, each a run of whole field lines without its last CRLF.
    runs: [(u32, u32); MAX_RUNS],
    count: usize,
    has_date: bool,
}

impl RawFields {
    /// Writes the fields, each line ending in CRLF.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        for &(start, end) in &self.runs[..self.count] {
            out.extend_from_slice(&self.head[start as usize..end as usize]);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Whether one of the fields is `Date`.
    pub fn has_date(&self) -> bool {
        self.has_date
    }
}

/// What a field does in a response head on its way to the client.
#[derive(Debug, PartialEq, Eq)]
enum Role {
    /// Goes on as it is.
    Kept,
    /// `Date`: goes on, and the server adds none.
    Date,
    ContentLength,
    TransferEncoding,
    Connection,
    /// Hop-by-hop or `Proxy-*`: stripped, as `strip_hop_by_hop` strips it from a map.
    Dropped,
}

fn role(name: &[u8]) -> Role {
    let is = |text: &str| is_name(name, text);
    match name.len() {
        2 if is("te") => Role::Dropped,
        4 if is("date") => Role::Date,
        5 if is("proxy") => Role::Dropped,
        7 if is("upgrade") || is("trailer") => Role::Dropped,
        10 if is("connection") => Role::Connection,
        10 if is("keep-alive") => Role::Dropped,
        14 if is("content-length") => Role::ContentLength,
        17 if is("transfer-encoding") => Role::TransferEncoding,
        len if len > 6 && is_name(&name[..6], "proxy-") => Role::Dropped,
        _ => Role::Kept,
    }
}

/// Whether a field name or value, as httparse checked it (no control characters but
/// tab), is `lower` (lowercase letters and `-`) in any case. Setting bit 5 lowercases a
/// letter and leaves `-` as it is; only CR, which httparse refused, would turn into `-`.
fn is_name(name: &[u8], lower: &str) -> bool {
    name.len() == lower.len()
        && name
            .iter()
            .zip(lower.as_bytes())
            .all(|(&n, &l)| n | 0x20 == l)
}

/// Classifies the fields of a parsed head (`fields`: name start and end, value start
/// and end, in `head`), with what the framing ones say. `Ok(None)`: the head needs a
/// header map.
pub fn classify(
    head: &Bytes,
    fields: &[FieldSpan],
) -> Result<Option<(RawFields, FramingFields)>, FramingError> {
    let mut framing = FramingFields::default();
    let mut raw = RawFields {
        head: head.clone(),
        runs: [(0, 0); MAX_RUNS],
        count: 0,
        has_date: false,
    };
    // The run the previous field extended, if it was kept.
    let mut open_run = false;
    for &(name_start, name_end, value_start, value_end) in fields {
        let name = &head[name_start as usize..name_end as usize];
        let value = &head[value_start as usize..value_end as usize];
        let kept = match role(name) {
            Role::Kept => true,
            Role::Date => {
                raw.has_date = true;
                true
            }
            Role::ContentLength => {
                framing.note_length(value)?;
                false
            }
            Role::TransferEncoding => {
                framing.note_transfer_encoding(value);
                false
            }
            Role::Connection => {
                // A field it names would have to go too: that takes the map.
                if framing.note_connection(value) {
                    return Ok(None);
                }
                false
            }
            Role::Dropped => false,
        };
        if !kept {
            open_run = false;
            continue;
        }
        if open_run && ends_line(&head[raw.runs[raw.count - 1].1 as usize..name_start as usize]) {
            raw.runs[raw.count - 1].1 = value_end;
            continue;
        }
        if raw.count == MAX_RUNS {
            return Ok(None);
        }
        raw.runs[raw.count] = (name_start, value_end);
        raw.count += 1;
        open_run = true;
    }
    Ok(Some((raw, framing)))
}

/// Whether the bytes between a field's value and the next field's name are just the
/// end of a line (optional whitespace, CRLF): a bare LF starts a new run, written
/// with CRLF.
fn ends_line(between: &[u8]) -> bool {
    between
        .strip_suffix(b"\r\n")
        .is_some_and(|spaces| spaces.iter().all(|&b| b == b' ' || b == b'\t'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spans httparse gives for `text`'s fields, and their classification.
    fn classify_text(text: &str) -> Result<Option<(String, FramingFields)>, FramingError> {
        let head = Bytes::copy_from_slice(text.as_bytes());
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut headers);
        assert!(parsed.parse(&head).expect("parses").is_complete());
        let base = head.as_ptr() as usize;
        let fields: Vec<_> = parsed.headers.iter().map(|h| field_span(base, h)).collect();
        Ok(classify(&head, &fields)?.map(|(raw, framing)| {
            let mut out = Vec::new();
            raw.write_to(&mut out);
            (String::from_utf8(out).expect("text"), framing)
        }))
    }

    #[test]
    fn kept_fields_go_on_as_sent_in_runs_and_the_rest_stays_behind() {
        let (out, framing) = classify_text(
            "HTTP/1.1 200 OK\r\nServer: origin\r\nDate: Thu, 03 Dec 2026 10:00:00 GMT\r\n\
             Content-Length: 5\r\nX-Id:  7 \r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
             Proxy-Authenticate: Basic\r\nTrailer: x\r\nUpgrade: h2c\r\nTE: trailers\r\nSet-Cookie: a=1\r\n\r\n",
        )
        .expect("valid")
        .expect("raw");
        assert_eq!(
            out,
            "Server: origin\r\nDate: Thu, 03 Dec 2026 10:00:00 GMT\r\nX-Id:  7\r\nSet-Cookie: a=1\r\n"
        );
        assert_eq!(framing.length, Some(5));
        assert!(framing.keep_alive && !framing.close);
    }

    #[test]
    fn framing_fields_are_noted_as_the_map_path_notes_them() {
        let (out, framing) = classify_text(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\nconnection: close\r\nx: 1\r\n\r\n",
        )
        .expect("valid")
        .expect("raw");
        assert_eq!(out, "x: 1\r\n");
        assert!(framing.transfer_encoding && framing.chunked && framing.close);
        assert!(
            classify_text("HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n")
                .is_err()
        );
    }

    #[test]
    fn heads_the_runs_cannot_say_take_the_map() {
        // A Connection that names another field: that field must go too.
        assert!(
            classify_text("HTTP/1.1 200 OK\r\nConnection: x-secret\r\nx-secret: 1\r\n\r\n")
                .expect("valid")
                .is_none()
        );
        // Seven runs (each broken by a dropped field) are more than are kept inline.
        let broken = "a: 1\r\nkeep-alive: 1\r\n".repeat(7);
        assert!(classify_text(&format!("HTTP/1.1 200 OK\r\n{broken}\r\n"))
            .expect("valid")
            .is_none());
        let six = "a: 1\r\nkeep-alive: 1\r\n".repeat(6);
        let (out, _) = classify_text(&format!("HTTP/1.1 200 OK\r\n{six}\r\n"))
            .expect("valid")
            .expect("raw");
        assert_eq!(out, "a: 1\r\n".repeat(6));
    }

    #[test]
    fn bare_line_feeds_are_written_as_crlf() {
        let (out, _) = classify_text("HTTP/1.1 200 OK\r\na: 1\nb: 2\r\nc: 3\r\n\r\n")
            .expect("valid")
            .expect("raw");
        assert_eq!(out, "a: 1\r\nb: 2\r\nc: 3\r\n");
    }
}
