//! Header rules of a reverse proxy: hop-by-hop stripping, forwarding headers,
//! and moving headers across the plugin boundary.

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

pub(crate) use sluice_http::protocol::wire::framing::HOP_BY_HOP_TEXT;
/// The same, as names. A static, not a const: a const array would be built and
/// dropped again at every use.
static HOP_BY_HOP: [HeaderName; 6] = [
    HeaderName::from_static(HOP_BY_HOP_TEXT[0]),
    HeaderName::from_static(HOP_BY_HOP_TEXT[1]),
    HeaderName::from_static(HOP_BY_HOP_TEXT[2]),
    HeaderName::from_static(HOP_BY_HOP_TEXT[3]),
    HeaderName::from_static(HOP_BY_HOP_TEXT[4]),
    HeaderName::from_static(HOP_BY_HOP_TEXT[5]),
];
/// Where `header::CONNECTION` is in `HOP_BY_HOP`.
const CONNECTION_INDEX: usize = 0;
/// Bit `n` is set when some hop-by-hop name is `n` bytes long.
const HOP_BY_HOP_LENGTHS: u32 = {
    let mut bits = 0;
    let mut i = 0;
    while i < HOP_BY_HOP_TEXT.len() {
        bits |= 1 << HOP_BY_HOP_TEXT[i].len();
        i += 1;
    }
    bits
};

/// Where `name` is in `HOP_BY_HOP`. Runs for every header of every message: most
/// names are none of these, and their length says so before any comparison.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    let text = name.as_str();
    let length_matches = text.len() < 32 && HOP_BY_HOP_LENGTHS & (1 << text.len()) != 0;
    if !length_matches {
        return None;
    }
    HOP_BY_HOP_TEXT.iter().position(|h| *h == text)
}

fn is_proxy_header(name: &HeaderName) -> bool {
    let name = name.as_str();
    name == "proxy" || name.starts_with("proxy-")
}

/// True for headers the host owns: plugins cannot set or remove them.
pub fn is_host_owned(name: &HeaderName) -> bool {
    hop_by_hop_index(name).is_some() || name == header::CONTENT_LENGTH || is_proxy_header(name)
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
/// With `upgrade` set, `Upgrade` survives and `Connection: upgrade` is restored.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One pass over the headers notes which are there: most messages carry nothing to
    // remove, or only `Connection: keep-alive`, and each removal costs a hash lookup.
    let mut present = 0u8;
    // Names outside the fixed list (`Proxy-*`, or named by `Connection`): rare, so
    // the list allocates only when there are some.
    let mut others: Vec<HeaderName> = Vec::new();
    for (name, value) in headers.iter() {
        match hop_by_hop_index(name) {
            Some(i) => {
                present |= 1 << i;
                if i == CONNECTION_INDEX {
                    connection_names(value, &mut others);
                }
            }
            None if is_proxy_header(name) => others.push(name.clone()),
            None => {}
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        let kept = upgrade && name == header::UPGRADE;
        if present & (1 << i) != 0 && !kept {
            headers.remove(name);
        }
    }
    for name in &others {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Adds the header names a `Connection` value lists, other than fixed-list ones
/// (the usual `keep-alive`, `upgrade`), which are dealt with by name.
fn connection_names(value: &HeaderValue, names: &mut Vec<HeaderName>) {
    for token in value
        .as_bytes()
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
    {
        let listed = HOP_BY_HOP_TEXT
            .iter()
            .any(|h| h.as_bytes().eq_ignore_ascii_case(token));
        if token.is_empty() || listed {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(token) {
            names.push(name);
        }
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// How many headers `add_forwarding` may add.
pub const FORWARDING_HEADERS: usize = 4;

/// What the seed's nginx config gives an app: X-Real-IP, X-Forwarded-For (appended),
/// X-Forwarded-Proto, X-Forwarded-Host.
pub fn add_forwarding(
    headers: &mut HeaderMap,
    client_ip: &HeaderValue,
    scheme: &'static str,
    client_host: Option<&HeaderValue>,
) {
    let ip = client_ip.as_bytes();
    // Room for all of them at once: the map grows (and rehashes) at most once.
    let _ = headers.try_reserve(FORWARDING_HEADERS);
    // One lookup for X-Forwarded-For, whether it is new or appended to.
    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Vacant(entry) => {
            entry.insert(client_ip.clone());
        }
        Entry::Occupied(mut entry) => {
            let mut list = Vec::new();
            let earlier = entry
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty());
            for v in earlier {
                list.extend_from_slice(v.as_bytes());
                list.extend_from_slice(b", ");
            }
            list.extend_from_slice(ip);
            if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(list)) {
                entry.insert(v);
            }
        }
    }
    headers.insert(X_REAL_IP.clone(), client_ip.clone());
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));
    match client_host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_base::ip_text::IpText;
    use std::net::IpAddr;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn the_hop_by_hop_lists_agree() {
        for (name, text) in HOP_BY_HOP.iter().zip(HOP_BY_HOP_TEXT) {
            assert_eq!(name.as_str(), text);
            assert!(is_host_owned(name), "{text}");
        }
        assert_eq!(HOP_BY_HOP[CONNECTION_INDEX], header::CONNECTION);
    }

    #[test]
    fn connection_named_headers_are_stripped() {
        let mut h = map(&[
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "5"),
            ("te", "trailers"),
            ("proxy-authorization", "x"),
            ("x-keep", "1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn connection_tokens_are_matched_without_regard_to_case_or_spacing() {
        let mut h = map(&[
            ("connection", "Keep-Alive ,X-Secret,,close"),
            ("connection", "TE"),
            ("x-secret", "1"),
            ("close", "1"),
            ("te", "trailers"),
            ("proxy", "x"),
            ("x-keep", "1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-keep"));

        // With an upgrade, only `Upgrade` survives of what `Connection` names.
        let mut h = map(&[
            ("connection", "upgrade, x-secret"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
    }

    #[test]
    fn upgrade_survives_only_for_upgrades() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty());
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = map(&[("x-forwarded-for", "10.0.0.1"), ("x-real-ip", "6.6.6.6")]);
        add_forwarding(
            &mut h,
            &IpText::new("127.0.0.1".parse().unwrap()).to_header_value(),
            "http",
            Some(&HeaderValue::from_static("a.com")),
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.1, 127.0.0.1");
        assert_eq!(h.get("x-real-ip").unwrap(), "127.0.0.1");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "a.com");
    }

    #[test]
    fn forwarding_headers_for_a_first_hop_repeated_headers_and_the_longest_address() {
        let mut h = map(&[]);
        add_forwarding(
            &mut h,
            &IpText::new("10.1.2.3".parse().unwrap()).to_header_value(),
            "https",
            None,
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.1.2.3");
        assert_eq!(h.get("x-real-ip").unwrap(), "10.1.2.3");
        assert!(h.get("x-forwarded-host").is_none());

        let mut h = map(&[
            ("x-forwarded-for", " 1.1.1.1 "),
            ("x-forwarded-for", ""),
            ("x-forwarded-for", "2.2.2.2, 3.3.3.3"),
        ]);
        let longest: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
            .parse()
            .unwrap();
        add_forwarding(
            &mut h,
            &IpText::new(longest).to_header_value(),
            "http",
            None,
        );
        let ip = longest.to_string();
        assert_eq!(
            h.get("x-forwarded-for").unwrap(),
            format!("1.1.1.1, 2.2.2.2, 3.3.3.3, {ip}").as_str()
        );
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h.get("x-real-ip").unwrap(), ip.as_str());
    }

    #[test]
    fn plugins_cannot_touch_framing_headers() {
        let mut h = map(&[("content-length", "5"), ("x-a", "1")]);
        sluice_plugin::convert::apply_headers(
            &mut h,
            vec![
                ("content-length".into(), b"99".to_vec()),
                ("transfer-encoding".into(), b"chunked".to_vec()),
                ("proxy-authorization".into(), b"x".to_vec()),
                ("x-b".into(), b"2".to_vec()),
            ],
            is_host_owned,
        )
        .unwrap();
        assert!(h.get("transfer-encoding").is_none());
        assert!(h.get("proxy-authorization").is_none());
        assert_eq!(h.get("content-length").unwrap(), "5");
        assert!(h.get("x-a").is_none());
        assert_eq!(h.get("x-b").unwrap(), "2");
    }
}
