//! The host a request is for (RFC 9112 §3.2): the target's authority (HTTP/2, absolute
//! form) or the one `Host` field. An HTTP/1.1 request with no `Host`, two of them or
//! one that is not `host[:port]` is refused (400) rather than routed on a guess.

use http::{header, HeaderMap, HeaderValue, Uri, Version};

/// Why the request's host was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("HTTP/1.1 request without a Host header")]
    Missing,
    #[error("request with more than one Host header")]
    Repeated,
    #[error("Host header is not host[:port]")]
    Invalid,
    #[error("request target has userinfo (user@host)")]
    Userinfo,
}

/// The client's host, and whether it must replace the request's `Host` header
/// upstream (it came from the target, or the header was not the one given).
#[derive(Debug, Clone)]
pub struct ClientHost {
    pub value: Option<HeaderValue>,
    pub replace_header: bool,
}

pub fn client_host(
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<ClientHost, HostError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(HostError::Repeated);
    }
    if let Some(header) = header {
        if !is_host_port(header.as_bytes()) {
            return Err(HostError::Invalid);
        }
    }
    if let Some(authority) = uri.authority() {
        let authority = authority.as_str();
        if authority.contains('@') {
            return Err(HostError::Userinfo);
        }
        if !is_host_port(authority.as_bytes()) {
            return Err(HostError::Invalid);
        }
        if version == Version::HTTP_11 && header.is_none() {
            return Err(HostError::Missing);
        }
        return Ok(ClientHost {
            value: HeaderValue::from_str(authority).ok(),
            replace_header: true,
        });
    }
    if version == Version::HTTP_11 && header.is_none() {
        return Err(HostError::Missing);
    }
    Ok(ClientHost {
        value: header.cloned(),
        replace_header: false,
    })
}

/// Bytes of a reg-name (RFC 3986): letters, digits, `-._~`, sub-delims and `%`.
static REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    table
};

/// `uri-host [ ":" port ]` (RFC 3986): a bracketed IP literal or a reg-name (letters,
/// digits, `-._~`, sub-delims, escapes), then digits after a colon. Empty is allowed
/// (RFC 9112 §3.2: a target with no authority).
fn is_host_port(value: &[u8]) -> bool {
    let (host, port) = if value.first() == Some(&b'[') {
        let Some(close) = value.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &value[1..close];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        (&value[..0], &value[close + 1..])
    } else {
        match value.iter().position(|&b| b == b':') {
            Some(colon) => (&value[..colon], &value[colon..]),
            None => (value, &value[..0]),
        }
    };
    let host_ok = host.iter().all(|&b| REG_NAME[b as usize]);
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    host_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_of(version: Version, target: &str, hosts: &[&str]) -> Result<ClientHost, HostError> {
        let uri: Uri = target.parse().unwrap();
        let mut headers = HeaderMap::new();
        for h in hosts {
            headers.append(header::HOST, HeaderValue::from_str(h).unwrap());
        }
        client_host(version, &uri, &headers)
    }

    #[test]
    fn valid_hosts_are_taken_from_the_header_or_the_target() {
        for host in [
            "example.com",
            "example.com:8080",
            "127.0.0.1:1",
            "[::1]:443",
            "[::1]",
            "a_b-c~d",
            "",
        ] {
            let found =
                host_of(Version::HTTP_11, "/", &[host]).unwrap_or_else(|e| panic!("{host}: {e}"));
            assert_eq!(found.value.unwrap(), host);
            assert!(!found.replace_header);
        }
        let found = host_of(Version::HTTP_11, "http://app:81/x", &["other"]).unwrap();
        assert_eq!(found.value.unwrap(), "app:81");
        assert!(found.replace_header);
        // HTTP/1.0 and HTTP/2 may go without a Host field.
        assert!(host_of(Version::HTTP_10, "/", &[]).unwrap().value.is_none());
        assert_eq!(
            host_of(Version::HTTP_2, "https://app/x", &[])
                .unwrap()
                .value
                .unwrap(),
            "app"
        );
    }

    #[test]
    fn missing_repeated_and_invalid_hosts_are_refused() {
        assert_eq!(
            host_of(Version::HTTP_11, "/", &[]).err(),
            Some(HostError::Missing)
        );
        assert_eq!(
            host_of(Version::HTTP_11, "http://app/", &[]).err(),
            Some(HostError::Missing)
        );
        assert_eq!(
            host_of(Version::HTTP_11, "/", &["a", "a"]).err(),
            Some(HostError::Repeated)
        );
        assert_eq!(
            host_of(Version::HTTP_10, "/", &["a", "b"]).err(),
            Some(HostError::Repeated)
        );
        for bad in [
            "a/../x", "a b", "a:b", "a:123456", "a@b", "[::1", "[zz]", "a:80:80", "a\"b", "a/b",
        ] {
            assert_eq!(
                host_of(Version::HTTP_11, "/", &[bad]).err(),
                Some(HostError::Invalid),
                "{bad}"
            );
        }
        assert_eq!(
            host_of(Version::HTTP_11, "http://user:pw@app/", &["app"]).err(),
            Some(HostError::Userinfo)
        );
    }
}
