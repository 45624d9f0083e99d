//! `Cache-Control` directives (RFC 9111 §5.2), parsed leniently where that is safe
//! and conservatively where it is not: an invalid or repeated freshness value makes a
//! response stale rather than fresh for longer.

use std::time::Duration;

use http::header::{self, HeaderMap};

/// A delta-seconds directive as sent: absent, a valid number, or present but unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Seconds {
    #[default]
    Absent,
    Valid(Duration),
    /// Present but not a number (or repeated with different values): treated as 0.
    Invalid,
}

impl Seconds {
    /// The duration when present (invalid counts as zero).
    pub fn get(self) -> Option<Duration> {
        match self {
            Seconds::Absent => None,
            Seconds::Valid(d) => Some(d),
            Seconds::Invalid => Some(Duration::ZERO),
        }
    }

    fn merge(self, value: Option<&str>) -> Seconds {
        let parsed = match value.map(parse_delta) {
            Some(Some(d)) => Seconds::Valid(d),
            _ => Seconds::Invalid,
        };
        match (self, parsed) {
            (Seconds::Absent, p) => p,
            (Seconds::Valid(a), Seconds::Valid(b)) if a == b => self,
            _ => Seconds::Invalid,
        }
    }
}

/// Delta-seconds: digits only; values past 2^31 are capped there (§1.2.2).
fn parse_delta(text: &str) -> Option<Duration> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value = text.parse::<u64>().unwrap_or(u64::MAX).min(i32::MAX as u64);
    Some(Duration::from_secs(value))
}

/// The directives Sluice acts on, from every `Cache-Control` field of a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub max_age: Seconds,
    pub s_maxage: Seconds,
    pub stale_while_revalidate: Seconds,
    pub stale_if_error: Seconds,
    pub no_store: bool,
    /// Unqualified or field-qualified alike: either way the stored copy is checked
    /// with the origin before each use.
    pub no_cache: bool,
    /// Unqualified or field-qualified alike: not stored by a shared cache.
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    /// Request only: `only-if-cached`.
    pub only_if_cached: bool,
}

impl CacheControl {
    pub fn parse(headers: &HeaderMap) -> CacheControl {
        let mut cc = CacheControl::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            // A field that is not text is ignored as a whole, directives and all;
            // `no-store` and `private` cannot hide in it because the message is then
            // treated as having none (and responses need explicit freshness or a
            // default TTL to be stored).
            let Ok(text) = value.to_str() else {
                cc.no_store = true;
                continue;
            };
            for (name, value) in directives(text) {
                cc.apply(&name, value.as_deref());
            }
        }
        cc
    }

    fn apply(&mut self, name: &str, value: Option<&str>) {
        match name {
            "max-age" => self.max_age = self.max_age.merge(value),
            "s-maxage" => self.s_maxage = self.s_maxage.merge(value),
            "stale-while-revalidate" => {
                self.stale_while_revalidate = self.stale_while_revalidate.merge(value)
            }
            "stale-if-error" => self.stale_if_error = self.stale_if_error.merge(value),
            "no-store" => self.no_store = true,
            "no-cache" => self.no_cache = true,
            "private" => self.private = true,
            "public" => self.public = true,
            "must-revalidate" => self.must_revalidate = true,
            "proxy-revalidate" => self.proxy_revalidate = true,
            "only-if-cached" => self.only_if_cached = true,
            _ => {}
        }
    }
}

/// The directives of one field value: lowercase names, values unquoted.
fn directives(text: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && (bytes[i] == b',' || bytes[i] == b' ' || bytes[i] == b'\t') {
            i += 1;
        }
        let start = i;
        while i < bytes.len() && !matches!(bytes[i], b'=' | b',' | b' ' | b'\t') {
            i += 1;
        }
        if start == i {
            i += 1;
            continue;
        }
        let name = text[start..i].to_ascii_lowercase();
        while i < bytes.len() && (bytes[i] == b' ' || bytes[i] == b'\t') {
            i += 1;
        }
        let mut value = None;
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
            while i < bytes.len() && (bytes[i] == b' ' || bytes[i] == b'\t') {
                i += 1;
            }
            if i < bytes.len() && bytes[i] == b'"' {
                i += 1;
                let mut v = String::new();
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' && i + 1 < bytes.len() {
                        i += 1;
                    }
                    v.push(bytes[i] as char);
                    i += 1;
                }
                i += 1;
                value = Some(v);
            } else {
                let vstart = i;
                while i < bytes.len() && !matches!(bytes[i], b',' | b' ' | b'\t') {
                    i += 1;
                }
                value = Some(text[vstart..i].to_string());
            }
        }
        // Anything up to the next comma is not part of a directive.
        while i < bytes.len() && bytes[i] != b',' {
            i += 1;
        }
        out.push((name, value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn cc(values: &[&str]) -> CacheControl {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(header::CACHE_CONTROL, HeaderValue::from_str(v).unwrap());
        }
        CacheControl::parse(&headers)
    }

    #[test]
    fn directives_across_fields_case_and_quotes() {
        let c = cc(&[
            "Public, MAX-AGE=60",
            "s-maxage=\"120\", stale-while-revalidate=30",
        ]);
        assert!(c.public);
        assert_eq!(c.max_age, Seconds::Valid(Duration::from_secs(60)));
        assert_eq!(c.s_maxage, Seconds::Valid(Duration::from_secs(120)));
        assert_eq!(
            c.stale_while_revalidate,
            Seconds::Valid(Duration::from_secs(30))
        );
        assert!(!c.no_store && !c.private);
    }

    #[test]
    fn qualified_private_and_no_cache_count() {
        let c = cc(&["private=\"set-cookie, x-user\", no-cache=\"set-cookie\""]);
        assert!(c.private);
        assert!(c.no_cache);
    }

    #[test]
    fn invalid_or_conflicting_max_age_is_stale() {
        assert_eq!(cc(&["max-age=abc"]).max_age.get(), Some(Duration::ZERO));
        assert_eq!(cc(&["max-age=-5"]).max_age.get(), Some(Duration::ZERO));
        assert_eq!(
            cc(&["max-age=60", "max-age=3600"]).max_age.get(),
            Some(Duration::ZERO)
        );
        assert_eq!(cc(&["max-age"]).max_age.get(), Some(Duration::ZERO));
        assert_eq!(
            cc(&["max-age=60, max-age=60"]).max_age.get(),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn huge_values_are_capped() {
        assert_eq!(
            cc(&["max-age=99999999999999999999999"]).max_age.get(),
            Some(Duration::from_secs(i32::MAX as u64))
        );
    }

    #[test]
    fn non_text_field_counts_as_no_store() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::CACHE_CONTROL,
            HeaderValue::from_bytes(b"max-age=60, \xff").unwrap(),
        );
        assert!(CacheControl::parse(&headers).no_store);
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(text in "[ -~]{0,80}") {
            let _ = directives(&text);
        }
    }
}
