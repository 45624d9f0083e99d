//! Route lookup: host first (exact, then the longest wildcard, then host-less
//! routes), then the longest matching path prefix within that host group.

use std::collections::HashMap;

/// Routes of one host group, longest path first.
#[derive(Debug, Default)]
struct PathTable {
    entries: Vec<(String, usize)>,
}

impl PathTable {
    fn insert(&mut self, path: &str, route: usize) {
        self.entries.push((path.to_string(), route));
        self.entries.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
    }

    fn lookup(&self, path: &str) -> Option<usize> {
        self.entries
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, route)| *route)
    }
}

/// Maps (host, path) to a route index.
#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<String, PathTable>,
    /// Suffixes like ".example.com", longest first.
    wildcard: Vec<(String, PathTable)>,
    any_host: PathTable,
}

impl Router {
    /// `host` is `None`, `"example.com"` or `"*.example.com"`.
    pub fn add(&mut self, host: Option<&str>, path: &str, route: usize) {
        match host.map(str::to_ascii_lowercase) {
            None => self.any_host.insert(path, route),
            Some(host) => match host.strip_prefix('*') {
                Some(suffix) => match self.wildcard.iter_mut().find(|(s, _)| s == suffix) {
                    Some((_, table)) => table.insert(path, route),
                    None => {
                        let mut table = PathTable::default();
                        table.insert(path, route);
                        self.wildcard.push((suffix.to_string(), table));
                        self.wildcard.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
                    }
                },
                None => self.exact.entry(host).or_default().insert(path, route),
            },
        }
    }

    /// `host` must already be normalized (see [`normalize_host`]).
    pub fn lookup(&self, host: &str, path: &str) -> Option<usize> {
        if let Some(route) = self.exact.get(host).and_then(|t| t.lookup(path)) {
            return Some(route);
        }
        for (suffix, table) in &self.wildcard {
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                if let Some(route) = table.lookup(path) {
                    return Some(route);
                }
            }
        }
        self.any_host.lookup(path)
    }
}

/// Lowercase host without port or trailing dot; `[::1]:80` becomes `[::1]`.
pub fn normalize_host(authority: &str) -> std::borrow::Cow<'_, str> {
    // One pass over the bytes: where the host ends (the port's `:`, or just past an
    // IPv6 literal's `]`) and whether it has upper case (most clients send none).
    let bytes = authority.as_bytes();
    let bracketed = bytes.first() == Some(&b'[');
    let mut end = bytes.len();
    let mut upper = false;
    for (i, &b) in bytes.iter().enumerate() {
        if bracketed && b == b']' {
            end = i + 1;
            break;
        }
        if !bracketed && b == b':' {
            end = i;
            break;
        }
        upper |= b.is_ascii_uppercase();
    }
    // `end` is at an ASCII byte or the end: a char boundary.
    let host = authority[..end].trim_end_matches('.');
    if upper {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        let mut r = Router::default();
        r.add(None, "/", 0);
        r.add(None, "/api/", 1);
        r.add(Some("static.example.com"), "/", 2);
        r.add(Some("*.example.com"), "/", 3);
        r.add(Some("*.img.example.com"), "/", 4);
        r
    }

    #[test]
    fn longest_prefix_wins() {
        assert_eq!(router().lookup("x", "/api/users"), Some(1));
        assert_eq!(router().lookup("x", "/apix"), Some(0));
    }

    #[test]
    fn exact_host_beats_wildcard() {
        assert_eq!(router().lookup("static.example.com", "/a"), Some(2));
        assert_eq!(router().lookup("www.example.com", "/a"), Some(3));
    }

    #[test]
    fn longer_wildcard_beats_shorter() {
        assert_eq!(router().lookup("a.img.example.com", "/"), Some(4));
    }

    #[test]
    fn wildcard_does_not_match_bare_domain() {
        assert_eq!(router().lookup("example.com", "/api/x"), Some(1));
    }

    #[test]
    fn host_group_without_matching_path_falls_back() {
        let mut r = Router::default();
        r.add(Some("a.com"), "/only/", 0);
        r.add(None, "/", 1);
        assert_eq!(r.lookup("a.com", "/other"), Some(1));
        assert_eq!(Router::default().lookup("a.com", "/"), None);
    }

    #[test]
    fn host_normalization_strips_port_case_and_dot() {
        assert_eq!(
            normalize_host("Static.Example.COM:8080"),
            "static.example.com"
        );
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("[FE80::A]:443"), "[fe80::a]");
        assert_eq!(normalize_host("[::1"), "[::1");
        assert_eq!(normalize_host("A.com.:80"), "a.com");
        assert_eq!(normalize_host(":80"), "");
        assert_eq!(normalize_host(""), "");
    }
}
