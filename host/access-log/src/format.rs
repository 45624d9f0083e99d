//! One access-log line, written straight into a byte buffer: no per-request string
//! building beyond the line itself, timestamps formatted once per second.

use std::cell::RefCell;
use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use sluice_base::civil::civil_from_days;

/// Line format of the access log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// nginx/Apache "combined" plus the request time, upstream and plugin decisions.
    #[default]
    Combined,
    /// NCSA common log format, exactly.
    Common,
    /// One JSON object per line.
    Json,
}

/// What a finished request leaves in the log.
pub struct Record<'a> {
    /// The client's address as text (formatted once per request, for the
    /// forwarding headers too).
    pub client: &'a [u8],
    pub method: &'a str,
    /// The request target as the client sent it (path and query).
    pub target: &'a str,
    pub version: &'a str,
    pub status: u16,
    pub body_bytes: u64,
    pub referer: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
    pub duration: Duration,
    /// Upstream name and server, when the request went upstream.
    pub upstream: Option<(&'a str, &'a str)>,
    pub plugins: &'a str,
}

/// Appends `record` as one line (ending in `\n`) to `out`.
pub fn write_line(out: &mut Vec<u8>, format: Format, record: &Record<'_>, now: SystemTime) {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match format {
        Format::Common | Format::Combined => {
            out.extend_from_slice(record.client);
            out.extend_from_slice(b" - - [");
            with_time(secs, |t| out.extend_from_slice(t.clf.as_bytes()));
            out.extend_from_slice(b"] \"");
            escape_text(out, record.method.as_bytes());
            out.push(b' ');
            escape_text(out, record.target.as_bytes());
            out.push(b' ');
            out.extend_from_slice(record.version.as_bytes());
            out.extend_from_slice(b"\" ");
            write_number(out, u64::from(record.status));
            out.push(b' ');
            write_number(out, record.body_bytes);
            if format == Format::Combined {
                out.extend_from_slice(b" \"");
                escape_text(out, record.referer.unwrap_or(b"-"));
                out.extend_from_slice(b"\" \"");
                escape_text(out, record.user_agent.unwrap_or(b"-"));
                out.extend_from_slice(b"\" ");
                write_number(out, record.duration.as_secs());
                let millis = record.duration.subsec_millis();
                out.extend_from_slice(&[
                    b'.',
                    b'0' + (millis / 100) as u8,
                    b'0' + (millis / 10 % 10) as u8,
                    b'0' + (millis % 10) as u8,
                    b' ',
                ]);
                write_upstream(out, record.upstream);
                out.extend_from_slice(b" \"");
                escape_text(out, record.plugins.as_bytes());
                out.push(b'"');
            }
        }
        Format::Json => {
            out.extend_from_slice(b"{\"time\":\"");
            with_time(secs, |t| out.extend_from_slice(t.iso.as_bytes()));
            out.extend_from_slice(b"\",\"client\":\"");
            out.extend_from_slice(record.client);
            out.extend_from_slice(b"\",\"method\":");
            escape_json(out, record.method.as_bytes());
            out.extend_from_slice(b",\"target\":");
            escape_json(out, record.target.as_bytes());
            let _ = write!(
                out,
                ",\"version\":\"{}\",\"status\":{},\"body_bytes\":{},\"duration_us\":{},\"referer\":",
                record.version,
                record.status,
                record.body_bytes,
                record.duration.as_micros()
            );
            escape_json_opt(out, record.referer);
            out.extend_from_slice(b",\"user_agent\":");
            escape_json_opt(out, record.user_agent);
            out.extend_from_slice(b",\"upstream\":");
            match record.upstream {
                Some(_) => {
                    out.push(b'"');
                    write_upstream(out, record.upstream);
                    out.push(b'"');
                }
                None => out.extend_from_slice(b"null"),
            }
            out.extend_from_slice(b",\"plugins\":");
            escape_json(out, record.plugins.as_bytes());
            out.push(b'}');
        }
    }
    out.push(b'\n');
}

fn write_number(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `name/server` (both from the config, never from the client), or `-`.
fn write_upstream(out: &mut Vec<u8>, upstream: Option<(&str, &str)>) {
    match upstream {
        Some((name, server)) => {
            out.extend_from_slice(name.as_bytes());
            out.push(b'/');
            out.extend_from_slice(server.as_bytes());
        }
        None => out.push(b'-'),
    }
}

/// Bytes a client controls (target, headers) cannot forge a line or a field: quotes,
/// backslashes, control and non-ASCII bytes are written as `\xHH`, as nginx does.
fn escape_text(out: &mut Vec<u8>, bytes: &[u8]) {
    // Short values (a method, `/`, `-`) go byte by byte: a copy call costs more.
    if bytes.len() <= 8 {
        for &b in bytes {
            escape_byte(out, b);
        }
        return;
    }
    // Longer ones (user agents, targets) copy their clean stretches whole.
    let mut rest = bytes;
    while let Some(at) = rest.iter().position(|&b| needs_escape(b)) {
        out.extend_from_slice(&rest[..at]);
        escape_byte(out, rest[at]);
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
}

fn needs_escape(b: u8) -> bool {
    b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b)
}

fn escape_byte(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if needs_escape(b) {
        out.extend_from_slice(&[
            b'\\',
            b'x',
            HEX[usize::from(b >> 4)],
            HEX[usize::from(b & 15)],
        ]);
    } else {
        out.push(b);
    }
}

fn escape_json(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    for &b in bytes {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            // Non-ASCII is escaped byte by byte so invalid UTF-8 still gives valid JSON.
            0x20..=0x7e => out.push(b),
            _ => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
    }
    out.push(b'"');
}

fn escape_json_opt(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(bytes) => escape_json(out, bytes),
        None => out.extend_from_slice(b"null"),
    }
}

/// One second's timestamps, formatted once.
struct Timestamps {
    secs: u64,
    /// `22/Nov/2026:14:20:07 +0000`
    clf: String,
    /// `2026-11-22T14:20:07Z`
    iso: String,
}

thread_local! {
    static TIME: RefCell<Option<Timestamps>> = const { RefCell::new(None) };
}

fn with_time(secs: u64, f: impl FnOnce(&Timestamps)) {
    TIME.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.as_ref().map(|t| t.secs) != Some(secs) {
            *cached = Some(timestamps(secs));
        }
        if let Some(t) = cached.as_ref() {
            f(t);
        }
    });
}

fn timestamps(secs: u64) -> Timestamps {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let (h, m, s) = ((secs % 86_400) / 3600, (secs % 3600) / 60, secs % 60);
    Timestamps {
        secs,
        clf: format!(
            "{day:02}/{}/{year}:{h:02}:{m:02}:{s:02} +0000",
            MONTHS[(month - 1) as usize]
        ),
        iso: format!("{year}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(target: &'a str, ua: Option<&'a [u8]>) -> Record<'a> {
        Record {
            client: b"203.0.113.7",
            method: "GET",
            target,
            version: "HTTP/1.1",
            status: 200,
            body_bytes: 6,
            referer: None,
            user_agent: ua,
            duration: Duration::from_micros(1_234),
            upstream: Some(("app", "127.0.0.1:8080")),
            plugins: "",
        }
    }

    fn line(format: Format, r: &Record<'_>) -> String {
        let mut out = Vec::new();
        let t = UNIX_EPOCH + Duration::from_secs(1_795_357_207); // 2026-11-22T14:20:07Z
        write_line(&mut out, format, r, t);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn formats() {
        let r = record("/a?b=1", Some(b"curl/8.0"));
        assert_eq!(
            line(Format::Common, &r),
            "203.0.113.7 - - [22/Nov/2026:14:20:07 +0000] \"GET /a?b=1 HTTP/1.1\" 200 6\n"
        );
        assert_eq!(
            line(Format::Combined, &r),
            "203.0.113.7 - - [22/Nov/2026:14:20:07 +0000] \"GET /a?b=1 HTTP/1.1\" 200 6 \"-\" \"curl/8.0\" 0.001 app/127.0.0.1:8080 \"\"\n"
        );
        let json: serde_json::Value = serde_json::from_str(&line(Format::Json, &r)).unwrap();
        assert_eq!(json["time"], "2026-11-22T14:20:07Z");
        assert_eq!(json["target"], "/a?b=1");
        assert_eq!(json["status"], 200);
        assert_eq!(json["duration_us"], 1234);
        assert_eq!(json["referer"], serde_json::Value::Null);
    }

    #[test]
    fn client_bytes_cannot_forge_lines_or_fields() {
        let r = record("/x\"y", Some(b"evil\"\n1.2.3.4 - - [fake]\xff"));
        let text = line(Format::Combined, &r);
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(text.contains("/x\\x22y"), "{text}");
        assert!(text.contains("evil\\x22\\x0A1.2.3.4"), "{text}");
        assert!(text.contains("[fake]\\xFF\""), "{text}");
        let json = line(Format::Json, &r);
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["target"], "/x\"y");
        let r = record("/\\\x7f\x01end", None);
        let text = line(Format::Combined, &r);
        assert!(
            text.contains("\"GET /\\x5C\\x7F\\x01end HTTP/1.1\""),
            "{text}"
        );
    }
}
