use std::borrow::Cow;

/// Anything usable as a header value or body: text or raw bytes.
///
/// Owned values (`String`, `Vec<u8>`) are moved, not copied.
pub trait IntoBytes {
    /// Converts into the byte vector sent to the host.
    fn into_vec(self) -> Vec<u8>;
}

impl IntoBytes for Vec<u8> {
    fn into_vec(self) -> Vec<u8> {
        self
    }
}
impl IntoBytes for &Vec<u8> {
    fn into_vec(self) -> Vec<u8> {
        self.clone()
    }
}
impl IntoBytes for &[u8] {
    fn into_vec(self) -> Vec<u8> {
        self.to_vec()
    }
}
impl<const N: usize> IntoBytes for &[u8; N] {
    fn into_vec(self) -> Vec<u8> {
        self.to_vec()
    }
}
impl IntoBytes for String {
    fn into_vec(self) -> Vec<u8> {
        self.into_bytes()
    }
}
impl IntoBytes for &String {
    fn into_vec(self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}
impl IntoBytes for &str {
    fn into_vec(self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}
impl IntoBytes for Cow<'_, str> {
    fn into_vec(self) -> Vec<u8> {
        self.into_owned().into_bytes()
    }
}
impl IntoBytes for Cow<'_, [u8]> {
    fn into_vec(self) -> Vec<u8> {
        self.into_owned()
    }
}

/// An ordered list of header fields. Names are matched case-insensitively and stored
/// lowercase; values are raw bytes (usually, but not always, UTF-8). A name may repeat.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, Vec<u8>)>);

impl Headers {
    /// An empty header list.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Wraps the host's list as is (names are already lowercase).
    pub fn from_vec(raw: Vec<(String, Vec<u8>)>) -> Self {
        Self(raw)
    }

    /// The underlying list, moved out.
    pub fn into_vec(self) -> Vec<(String, Vec<u8>)> {
        self.0
    }

    /// First value of `name` as text; `None` when absent or not UTF-8.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// First value of `name` as raw bytes.
    pub fn get_bytes(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// Replaces every value of `name` with `value` (kept at the first one's position),
    /// or adds it at the end.
    pub fn set(&mut self, name: &str, value: impl IntoBytes) {
        let value = value.into_vec();
        match self
            .0
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(first) => {
                self.0[first].1 = value;
                let mut i = 0;
                self.0.retain(|(n, _)| {
                    let keep = i <= first || !n.eq_ignore_ascii_case(name);
                    i += 1;
                    keep
                });
            }
            None => self.0.push((lowercase(name), value)),
        }
    }

    /// Adds a value for `name` at the end, keeping existing ones.
    pub fn append(&mut self, name: &str, value: impl IntoBytes) {
        self.0.push((lowercase(name), value.into_vec()));
    }

    /// Removes every value of `name`; returns whether there was any.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.0.len();
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.0.len() != before
    }

    /// All fields in order, as (lowercase name, raw value).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// Whether `name` is a valid field name (an RFC 9110 token). Check names taken from
    /// config in `Plugin::new`: the host drops or rejects invalid ones.
    pub fn is_valid_name(name: &str) -> bool {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    }

    /// Whether `value` is a valid field value: no control characters other than tab
    /// (so no CR, LF or NUL), and no leading or trailing whitespace.
    pub fn is_valid_value(value: &[u8]) -> bool {
        let ws = |b: &u8| *b == b' ' || *b == b'\t';
        value
            .iter()
            .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
            && !value.first().is_some_and(ws)
            && !value.last().is_some_and(ws)
    }

    /// Number of fields (a repeated name counts each time).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn lowercase(name: &str) -> String {
    // The host sends lowercase names; keep what plugins add consistent with that.
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        name.to_ascii_lowercase()
    } else {
        name.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Headers {
        Headers::from_vec(vec![
            ("host".into(), b"example.com".to_vec()),
            ("accept".into(), b"a".to_vec()),
            ("x-bin".into(), vec![0xff, 0xfe]),
            ("accept".into(), b"b".to_vec()),
        ])
    }

    #[test]
    fn get_is_case_insensitive_and_first() {
        let h = sample();
        assert_eq!(h.get("Accept"), Some("a"));
        assert_eq!(h.get_all("ACCEPT").collect::<Vec<_>>(), [b"a", b"b"]);
        assert_eq!(h.get("missing"), None);
    }

    #[test]
    fn non_utf8_only_as_bytes() {
        let h = sample();
        assert_eq!(h.get("x-bin"), None);
        assert_eq!(h.get_bytes("x-bin"), Some(&[0xff, 0xfe][..]));
    }

    #[test]
    fn set_replaces_all_in_place() {
        let mut h = sample();
        h.set("Accept", "c");
        let names: Vec<_> = h.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["host", "accept", "x-bin"]);
        assert_eq!(h.get("accept"), Some("c"));
        h.set("X-New", String::from("v"));
        assert_eq!(h.iter().last(), Some(("x-new", &b"v"[..])));
    }

    #[test]
    fn validity() {
        assert!(Headers::is_valid_name("x-api-key"));
        assert!(!Headers::is_valid_name("x api"));
        assert!(!Headers::is_valid_name(""));
        assert!(!Headers::is_valid_name("x:y"));
        assert!(Headers::is_valid_value(b"a b\tc"));
        assert!(Headers::is_valid_value(b""));
        assert!(Headers::is_valid_value(&[0x80, 0xff]));
        assert!(!Headers::is_valid_value(b"a\r\nb: c"));
        assert!(!Headers::is_valid_value(b" a"));
        assert!(!Headers::is_valid_value(b"a\0"));
    }

    #[test]
    fn append_and_remove() {
        let mut h = sample();
        h.append("Set-Cookie", "a=1");
        h.append("set-cookie", "b=2");
        assert_eq!(h.get_all("set-cookie").count(), 2);
        assert!(h.remove("SET-COOKIE"));
        assert!(!h.remove("set-cookie"));
        assert!(!h.contains("set-cookie"));
        assert_eq!(h.len(), 4);
    }
}
