//! An IP address as text on the stack, without `core::fmt`: every proxied request
//! writes its client's address into the forwarding headers and the access log, and
//! the formatting machinery cost more than the rest of those lines.

use std::io::Write as _;
use std::net::IpAddr;

/// Longest text form: an IPv6 address with an embedded IPv4 one.
const MAX_LEN: usize = 45;

pub struct IpText {
    buf: [u8; MAX_LEN],
    len: usize,
}

impl IpText {
    pub fn new(ip: IpAddr) -> Self {
        let mut text = Self {
            buf: [0; MAX_LEN],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b'.');
                    }
                    if octet >= 100 {
                        text.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        text.push(b'0' + octet / 10 % 10);
                    }
                    text.push(b'0' + octet % 10);
                }
            }
            // Rare enough for the standard formatting (and its zero compression).
            IpAddr::V6(v6) => {
                let mut cursor = std::io::Cursor::new(&mut text.buf[..]);
                let _ = write!(cursor, "{v6}");
                text.len = cursor.position() as usize;
            }
        }
        text
    }

    fn push(&mut self, byte: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = byte;
            self.len += 1;
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The address as a header value; made once per connection, its clones share it.
    pub fn to_header_value(&self) -> http::HeaderValue {
        // Digits, dots and colons only: always a valid value.
        http::HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(self.as_bytes()))
            .unwrap_or_else(|_| http::HeaderValue::from_static("-"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_text_form() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "255.255.255.255",
            "9.99.100.199",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.128",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(
                std::str::from_utf8(IpText::new(parsed).as_bytes()).unwrap(),
                parsed.to_string(),
                "{ip}"
            );
        }
    }
}
