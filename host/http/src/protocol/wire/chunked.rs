//! Chunked transfer coding (RFC 9112 §7.1): a decoder fed from a growing buffer in
//! reads of any size, and the encoder's size lines and trailer section.

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue};

use super::FramingError;

/// Longest chunk-size line (size, extensions).
pub const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Largest trailer section.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// Where a chunked body's decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    SizeLine,
    Data(u64),
    DataEnd,
    Trailers,
}

pub enum Decoded {
    Data(Bytes),
    /// The last chunk and the trailer section (if any) were read.
    End(Option<HeaderMap>),
    /// A piece of framing was consumed; decode on.
    Again,
    NeedMore,
}

/// Decodes what `buf` holds of a chunked body from state `chunk`.
pub fn decode(buf: &mut BytesMut, chunk: &mut Chunk) -> Result<Decoded, FramingError> {
    match chunk {
        Chunk::SizeLine => {
            let Some(end) = buf.iter().take(MAX_CHUNK_LINE).position(|&b| b == b'\n') else {
                return if buf.len() >= MAX_CHUNK_LINE {
                    Err(FramingError("chunk size line too long"))
                } else {
                    Ok(Decoded::NeedMore)
                };
            };
            let size = parse_chunk_size(&buf[..end])?;
            let _ = buf.split_to(end + 1);
            *chunk = if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(size)
            };
            Ok(Decoded::Again)
        }
        Chunk::Data(remaining) => {
            if buf.is_empty() {
                return Ok(Decoded::NeedMore);
            }
            let take = (*remaining).min(buf.len() as u64) as usize;
            let data = buf.split_to(take).freeze();
            *remaining -= take as u64;
            if *remaining == 0 {
                *chunk = Chunk::DataEnd;
            }
            Ok(Decoded::Data(data))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(Decoded::NeedMore);
            }
            if &buf[..2] != b"\r\n" {
                return Err(FramingError("chunk data not followed by CRLF"));
            }
            let _ = buf.split_to(2);
            *chunk = Chunk::SizeLine;
            Ok(Decoded::Again)
        }
        Chunk::Trailers => {
            if buf.starts_with(b"\r\n") {
                let _ = buf.split_to(2);
                return Ok(Decoded::End(None));
            }
            let mut fields = [httparse::EMPTY_HEADER; 32];
            let parsed = httparse::parse_headers(buf, &mut fields)
                .map_err(|_| FramingError("invalid trailer section"))?;
            match parsed {
                httparse::Status::Partial if buf.len() >= MAX_TRAILERS => {
                    Err(FramingError("trailer section too large"))
                }
                httparse::Status::Partial => Ok(Decoded::NeedMore),
                // One read can bring more than the limit: a whole section is held to it too.
                httparse::Status::Complete((len, _)) if len > MAX_TRAILERS => {
                    Err(FramingError("trailer section too large"))
                }
                httparse::Status::Complete((len, fields)) => {
                    let mut trailers = HeaderMap::with_capacity(fields.len());
                    for field in fields.iter() {
                        let (Ok(name), Ok(value)) = (
                            HeaderName::from_bytes(field.name.as_bytes()),
                            HeaderValue::from_bytes(field.value),
                        ) else {
                            return Err(FramingError("invalid trailer field"));
                        };
                        trailers.append(name, value);
                    }
                    let _ = buf.split_to(len);
                    Ok(Decoded::End(Some(trailers)))
                }
            }
        }
    }
}

/// The size in a chunk-size line (without its LF): hex digits, then optional
/// whitespace and extensions, then CR.
fn parse_chunk_size(line: &[u8]) -> Result<u64, FramingError> {
    let invalid = FramingError("invalid chunk size line");
    let Some(line) = line.strip_suffix(b"\r") else {
        return Err(invalid);
    };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(invalid);
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest.starts_with(b";")) {
        return Err(invalid);
    }
    // Extensions are skipped, never passed on; control bytes in them (a bare CR that
    // another parser would end the line at) are refused.
    if rest.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(invalid);
    }
    let size = line[..digits].iter().fold(0u64, |n, &d| {
        let value = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        (n << 4) | u64::from(value)
    });
    Ok(size)
}

/// Trailer fields the response declared in `Trailer`, minus those that may not be
/// trailers (framing, routing and the like).
pub fn encode_trailers(out: &mut Vec<u8>, trailers: &HeaderMap, declared: &[HeaderName]) {
    for (name, value) in trailers {
        let forbidden = matches!(
            *name,
            header::CONTENT_LENGTH
                | header::TRANSFER_ENCODING
                | header::CONTENT_TYPE
                | header::CONTENT_ENCODING
                | header::CONTENT_RANGE
                | header::HOST
                | header::TRAILER
                | header::TE
                | header::CONNECTION
                | header::AUTHORIZATION
                | header::SET_COOKIE
        );
        if forbidden || !declared.contains(name) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// A chunk-size line: the length in hex and CRLF.
pub fn chunk_size_line(len: usize) -> HexLine {
    let mut line = HexLine {
        bytes: [0; 18],
        len: 0,
    };
    let digits = if len == 0 {
        1
    } else {
        (usize::BITS - len.leading_zeros()).div_ceil(4) as usize
    };
    for i in 0..digits {
        let nibble = (len >> (4 * (digits - 1 - i))) & 0xf;
        line.bytes[i] = b"0123456789abcdef"[nibble];
    }
    line.bytes[digits] = b'\r';
    line.bytes[digits + 1] = b'\n';
    line.len = digits + 2;
    line
}

pub struct HexLine {
    bytes: [u8; 18],
    len: usize,
}

impl HexLine {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunked body decoded from `wire` fed in pieces of `step` bytes: its data, its
    /// trailers and how many bytes fed were left unread; `None` if `wire` ran out first.
    type Decodes = Result<Option<(Vec<u8>, Option<HeaderMap>, usize)>, FramingError>;

    fn decode_in_reads(wire: &[u8], step: usize) -> Decodes {
        let mut buf = BytesMut::new();
        let mut chunk = Chunk::SizeLine;
        let mut data = Vec::new();
        let mut fed = 0;
        // Each turn consumes input or feeds it: bounded by twice the bytes, plus slack.
        for _ in 0..4 * wire.len() + 16 {
            match decode(&mut buf, &mut chunk)? {
                Decoded::Data(d) => data.extend_from_slice(&d),
                Decoded::End(trailers) => return Ok(Some((data, trailers, buf.len()))),
                Decoded::Again => {}
                Decoded::NeedMore if fed == wire.len() => return Ok(None),
                Decoded::NeedMore => {
                    let end = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
        panic!(
            "the decoder went round without consuming: {:?}",
            String::from_utf8_lossy(wire)
        );
    }

    /// Decodes a whole body, which `wire` is exactly: the data and the trailers.
    fn decode_all(wire: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), FramingError> {
        let (data, trailers, unread) =
            decode_in_reads(wire, step)?.expect("decoder wants more than the body");
        assert_eq!(unread, 0, "nothing after the body is consumed");
        Ok((data, trailers))
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let wire = b"5\r\nhello\r\nA;name=value\r\n0123456789\r\n0\r\nx-sum: 42\r\n\r\n";
        for step in [1, 2, 3, 7, wire.len()] {
            let (data, trailers) = decode_all(wire, step).unwrap();
            assert_eq!(data, b"hello0123456789");
            let trailers = trailers.expect("trailers");
            assert_eq!(trailers.get("x-sum").unwrap(), "42");
        }
        let (data, trailers) = decode_all(b"3\r\nabc\r\n0\r\n\r\n", 1).unwrap();
        assert_eq!((data.as_slice(), trailers), (&b"abc"[..], None));
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        for bad in [
            &b"x\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"-5\r\nhello\r\n",
            b"5 x\r\nhello\r\n",
            b"11111111111111111\r\n",
            b"5;a\rb\r\nhello\r\n0\r\n\r\n",
            b"5;a\x00\r\nhello\r\n0\r\n\r\n",
        ] {
            assert!(
                decode_all(bad, 4).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = vec![b'0'; MAX_CHUNK_LINE + 10];
        assert!(decode_all(&long, 1024).is_err());
    }

    #[test]
    fn a_trailer_section_over_its_limit_is_refused_however_it_arrives() {
        let mut wire = b"0\r\nx-big: ".to_vec();
        wire.resize(wire.len() + MAX_TRAILERS, b'a');
        wire.extend_from_slice(b"\r\n\r\n");
        // In small reads it is refused as it grows; in one read (reads reach 64 KiB),
        // whole.
        for step in [1024, wire.len()] {
            assert!(decode_all(&wire, step).is_err(), "step {step}");
        }
    }

    #[test]
    fn chunk_size_lines_are_lowercase_hex() {
        for (len, line) in [
            (0, "0\r\n"),
            (5, "5\r\n"),
            (255, "ff\r\n"),
            (4096, "1000\r\n"),
        ] {
            assert_eq!(chunk_size_line(len).as_bytes(), line.as_bytes());
        }
        let max = chunk_size_line(usize::MAX);
        assert_eq!(max.as_bytes(), format!("{:x}\r\n", usize::MAX).as_bytes());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// A chunked body from generated chunks (with extensions) and trailers.
    fn body() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
        let chunk = (
            prop::collection::vec(any::<u8>(), 1..300),
            prop::sample::select(vec!["", ";a=b", "; x", ";q=\"v\""]),
            any::<bool>(),
        );
        let trailer = prop::sample::select(vec!["", "x-sum: 1\r\n", "x-a: 1\r\nx-b: 2\r\n"]);
        (prop::collection::vec(chunk, 0..6), trailer).prop_map(|(chunks, trailer)| {
            let mut wire = Vec::new();
            let mut data = Vec::new();
            for (bytes, ext, upper) in chunks {
                let size = if upper {
                    format!("{:X}", bytes.len())
                } else {
                    format!("{:x}", bytes.len())
                };
                wire.extend_from_slice(format!("{size}{ext}\r\n").as_bytes());
                wire.extend_from_slice(&bytes);
                wire.extend_from_slice(b"\r\n");
                data.extend_from_slice(&bytes);
            }
            wire.extend_from_slice(format!("0\r\n{trailer}\r\n").as_bytes());
            (wire, data)
        })
    }

    /// Decodes `wire` fed in reads of `steps` (cycled): the data, the end (`Some` with
    /// the bytes left over) or `None` when it wants more, or the error.
    fn decode_in(wire: &[u8], steps: &[usize]) -> Result<(Vec<u8>, Option<usize>), FramingError> {
        let mut buf = BytesMut::new();
        let mut chunk = Chunk::SizeLine;
        let mut data = Vec::new();
        let mut fed = 0;
        let mut turn = 0;
        // Each turn consumes input or feeds it: bounded by the bytes, plus slack.
        for _ in 0..4 * wire.len() + 16 {
            match decode(&mut buf, &mut chunk)? {
                Decoded::Data(d) => data.extend_from_slice(&d),
                Decoded::End(_) => return Ok((data, Some(buf.len() + wire.len() - fed))),
                Decoded::Again => {}
                Decoded::NeedMore if fed == wire.len() => return Ok((data, None)),
                Decoded::NeedMore => {
                    let step = steps[turn % steps.len()].max(1);
                    turn += 1;
                    let end = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
        panic!("the decoder went round without consuming");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// A well-formed body decodes to its data, consuming exactly itself, whatever
        /// the read boundaries.
        #[test]
        fn chunked_bodies_decode_whole_in_reads_of_any_size(
            (wire, data) in body(),
            steps in prop::collection::vec(1usize..64, 1..8),
        ) {
            let mut with_next = wire.clone();
            with_next.extend_from_slice(b"GET /next");
            let (decoded, left) = decode_in(&with_next, &steps).expect("a valid body");
            prop_assert_eq!(decoded, data);
            prop_assert_eq!(left, Some(9), "the next message is left alone");
        }

        /// A mangled body ends in data, an error or a wait, never a panic, and the
        /// read boundaries never change which.
        #[test]
        fn mangled_chunked_bodies_have_one_reading(
            (wire, _) in body(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, prop::sample::select(b"\r\n;0aF \t\0".to_vec())), 1..4),
            steps in prop::collection::vec(1usize..16, 1..6),
        ) {
            let mut wire = wire;
            for (at, kind, byte) in edits {
                let at = at.index(wire.len());
                match kind {
                    0 => wire[at] = byte,
                    1 => wire.insert(at, byte),
                    _ => {
                        wire.remove(at);
                    }
                }
            }
            let whole = decode_in(&wire, &[wire.len().max(1)]);
            let split = decode_in(&wire, &steps);
            match (&whole, &split) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                (Err(_), Err(_)) => {}
                _ => prop_assert!(false, "{whole:?} against {split:?} for {:?}", String::from_utf8_lossy(&wire)),
            }
        }
    }
}
