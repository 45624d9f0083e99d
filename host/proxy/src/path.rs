//! One canonical request path, computed once before routing: the router, every plugin
//! and the upstream all see it, so a guard on `/admin/` cannot be walked around with
//! `/public/../admin/`, `/%61dmin/` or `//admin/`.
//!
//! Rules (RFC 3986 §6.2.2, with nginx's `merge_slashes` and HAProxy's `normalize-uri`
//! as references):
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded; every
//!   other escape is kept, with upper-case hex digits;
//! - runs of `/` become one `/` (unless `merge_slashes` is off);
//! - `.` and `..` segments are removed (also when written `%2E`);
//! - refused (400): `..` above the root, NUL or control bytes (raw or encoded), a raw
//!   `\`, a broken escape, an encoded `/` or `\` (`%2F`, `%5C`) unless the route
//!   allows them (they are kept encoded, never turned into separators), and a `.` or
//!   `..` segment with a `;` parameter (`/public/..;/admin`), which Java servers
//!   (Tomcat, Spring) resolve as a dot segment after the proxy has routed the path.

/// Why a path was refused; the client gets 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path does not start with \"/\"")]
    NotAbsolute,
    #[error("path climbs above the root with \"..\"")]
    AboveRoot,
    #[error("path contains a control or NUL byte")]
    ControlByte,
    #[error("path contains a backslash")]
    Backslash,
    #[error("path contains a malformed percent-escape")]
    BadEscape,
    #[error("path has a parameter on a dot segment (\"..;\")")]
    DotSegmentParameter,
    #[error("normalized path is not a valid request target: {0}")]
    Unparsable(String),
}

/// A normalized path, and whether it kept an encoded `/` or `\` (which only routes
/// with `allow_encoded_slashes` accept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath {
    pub path: String,
    pub has_encoded_slash: bool,
}

/// True when `raw` may differ from its canonical form or be refused; false for the
/// common path that is already canonical (checked without allocating).
pub fn needs_normalizing(raw: &str, merge_slashes: bool) -> bool {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return true;
    }
    let mut previous = 0u8;
    for (i, &b) in bytes.iter().enumerate() {
        let suspicious = match b {
            b'%' | b'\\' => true,
            b'/' => merge_slashes && previous == b'/',
            // A segment that starts with a dot may be `.` or `..` (or `..;x`).
            b'.' => previous == b'/' && matches!(bytes.get(i + 1), None | Some(b'/' | b'.' | b';')),
            _ => is_control(b),
        };
        if suspicious {
            return true;
        }
        previous = b;
    }
    false
}

pub fn normalize(raw: &str, merge_slashes: bool) -> Result<CanonicalPath, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let mut has_encoded_slash = false;
    // Decoded segments (escapes that stay encoded are kept as text).
    let mut segments: Vec<String> = Vec::new();
    let body = &raw[1..];
    let parts: Vec<&str> = body.split('/').collect();
    let last = parts.len() - 1;
    for (i, part) in parts.iter().enumerate() {
        let segment = decode_segment(part, &mut has_encoded_slash)?;
        if is_dot_with_parameter(&segment) {
            return Err(PathError::DotSegmentParameter);
        }
        let is_last = i == last;
        match segment.as_str() {
            "." => {
                if is_last {
                    segments.push(String::new());
                }
            }
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                // `/a/b/..` is `/a/`: an empty segment keeps the trailing slash. An
                // empty segment popped above (from `//`) counts as one level.
                if is_last {
                    segments.push(String::new());
                }
            }
            "" if merge_slashes && !is_last => {}
            _ => segments.push(segment),
        }
    }
    let mut path = String::with_capacity(raw.len());
    for segment in &segments {
        path.push('/');
        path.push_str(segment);
    }
    if path.is_empty() {
        path.push('/');
    }
    Ok(CanonicalPath {
        path,
        has_encoded_slash,
    })
}

fn decode_segment(part: &str, has_encoded_slash: &mut bool) -> Result<String, PathError> {
    let bytes = part.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
                let value = (hex_value(hex[0]).ok_or(PathError::BadEscape)? << 4)
                    | hex_value(hex[1]).ok_or(PathError::BadEscape)?;
                if is_control(value) {
                    return Err(PathError::ControlByte);
                }
                if is_unreserved(value) {
                    out.push(value as char);
                } else {
                    if value == b'/' || value == b'\\' {
                        *has_encoded_slash = true;
                    }
                    out.push('%');
                    out.push(HEX_UPPER[(value >> 4) as usize] as char);
                    out.push(HEX_UPPER[(value & 0xf) as usize] as char);
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            _ if is_control(b) => return Err(PathError::ControlByte),
            _ => {
                // Multi-byte UTF-8 is copied whole; `part` is a valid `str`.
                let len = utf8_len(b);
                out.push_str(part.get(i..i + len).ok_or(PathError::BadEscape)?);
                i += len;
            }
        }
    }
    Ok(out)
}

/// `.;x` or `..;x` (also with `;` encoded as `%3B`): a dot segment to a server that
/// strips path parameters before resolving dot segments.
fn is_dot_with_parameter(segment: &str) -> bool {
    let before = match (segment.find(';'), segment.find("%3B")) {
        (Some(a), Some(b)) => a.min(b),
        (Some(at), None) | (None, Some(at)) => at,
        (None, None) => return false,
    };
    matches!(&segment[..before], "." | "..")
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        normalize(raw, true)
            .map(|c| c.path)
            .unwrap_or_else(|e| panic!("{raw}: {e}"))
    }

    #[test]
    fn canonical_forms() {
        for (raw, want) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("/public/../admin/secret", "/admin/secret"),
            ("/%61dmin/secret", "/admin/secret"),
            ("//admin/secret", "/admin/secret"),
            ("/a//b///c", "/a/b/c"),
            ("/a/./b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a/%2e%2E/admin", "/admin"),
            ("/a/.%2e/admin", "/admin"),
            ("/%7euser/%41%42", "/~user/AB"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/café", "/café"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            // Parameters on ordinary segments are left alone.
            ("/a;v=1/b", "/a;v=1/b"),
            ("/...;x/b", "/...;x/b"),
            ("/.a;x", "/.a;x"),
        ] {
            assert_eq!(ok(raw), want, "{raw}");
        }
    }

    #[test]
    fn refused() {
        for (raw, want) in [
            ("/..", PathError::AboveRoot),
            ("/a/../..", PathError::AboveRoot),
            ("/%2e%2e/etc/passwd", PathError::AboveRoot),
            ("/a%00b", PathError::ControlByte),
            ("/a%0d%0aSet-Cookie", PathError::ControlByte),
            ("/a%7f", PathError::ControlByte),
            ("/a\\..\\admin", PathError::Backslash),
            ("/a%zz", PathError::BadEscape),
            ("/a%4", PathError::BadEscape),
            ("/a%", PathError::BadEscape),
            ("*", PathError::NotAbsolute),
            ("/public/..;/admin", PathError::DotSegmentParameter),
            (
                "/public/..;jsessionid=1/admin",
                PathError::DotSegmentParameter,
            ),
            ("/public/.;/admin", PathError::DotSegmentParameter),
            ("/public/%2e%2e;/admin", PathError::DotSegmentParameter),
            ("/public/..%3b/admin", PathError::DotSegmentParameter),
            ("/public/..;", PathError::DotSegmentParameter),
        ] {
            assert_eq!(normalize(raw, true), Err(want), "{raw}");
        }
    }

    #[test]
    fn encoded_slashes_are_kept_encoded_and_flagged() {
        let c = normalize("/a%2fb/%5c..", true).unwrap();
        assert_eq!(c.path, "/a%2Fb/%5C..");
        assert!(c.has_encoded_slash);
        assert!(!normalize("/a/b", true).unwrap().has_encoded_slash);
    }

    #[test]
    fn merge_slashes_off_keeps_empty_segments() {
        assert_eq!(normalize("//a//b", false).unwrap().path, "//a//b");
        assert_eq!(normalize("/a//../b", false).unwrap().path, "/a/b");
    }

    #[test]
    fn fast_path_agrees_with_normalize() {
        for raw in [
            "/",
            "/a/b",
            "/a/b/",
            "/a.b/c",
            "/.well-known/x",
            "/a/.",
            "/a/..",
            "/a//b",
            "/a%41",
            "/a\\b",
            "/..",
            "/a/...",
            "/a/.b",
            "/a/..;/b",
            "/.;",
            "/caf\u{e9}",
            "/a\u{1}",
        ] {
            for merge in [true, false] {
                let canonical = normalize(raw, merge).ok().map(|c| c.path);
                if !needs_normalizing(raw, merge) {
                    assert_eq!(canonical.as_deref(), Some(raw), "{raw} merge={merge}");
                }
            }
        }
        assert!(!needs_normalizing("/api/v1/users", true));
        assert!(needs_normalizing("/api/../admin", true));
    }

    #[test]
    fn never_panics_on_odd_input() {
        for raw in [
            "/%", "/%%", "/%e9", "/\u{7f}", "/é%", "/////", "/./../", "/%c3",
        ] {
            let _ = normalize(raw, true);
            let _ = normalize(raw, false);
        }
    }
}
