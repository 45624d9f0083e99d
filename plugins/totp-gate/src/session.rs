//! Signed cookies: `payload.signature`, both base64url, the payload `kind|user|expiry|id`
//! and the signature HMAC-SHA256 under the configured secret. A session cookie also
//! needs its id in the state service (so logout ends it everywhere); a pending cookie
//! (password right, code not yet given) lives a few minutes on its signature alone.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What a token stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The password was right; the code is next.
    Pending,
    /// Both were right.
    Session,
}

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Kind::Pending => "p",
            Kind::Session => "s",
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Claims {
    pub user: String,
    pub expires_s: u64,
    pub id: String,
}

pub struct Signer {
    secret: Vec<u8>,
}

impl Signer {
    pub fn new(secret: Vec<u8>) -> Self {
        Self { secret }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        match Hmac::<Sha256>::new_from_slice(&self.secret) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts any key length"),
        }
    }

    pub fn sign(&self, kind: Kind, user: &str, expires_s: u64, id: &str) -> String {
        let payload = format!(
            "{}|{}|{expires_s}|{id}",
            kind.tag(),
            URL_SAFE_NO_PAD.encode(user)
        );
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    /// The claims of a token of `kind` that is signed by us and not expired at `now_s`.
    pub fn verify(&self, kind: Kind, token: &str, now_s: u64) -> Option<Claims> {
        let (payload, signature) = token.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let mut mac = self.mac();
        mac.update(&payload);
        // Constant-time comparison.
        mac.verify_slice(&signature).ok()?;
        let payload = String::from_utf8(payload).ok()?;
        let mut parts = payload.split('|');
        let (tag, user, expires, id) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if tag != kind.tag() || parts.next().is_some() {
            return None;
        }
        let expires_s: u64 = expires.parse().ok()?;
        if expires_s <= now_s {
            return None;
        }
        let user = String::from_utf8(URL_SAFE_NO_PAD.decode(user).ok()?).ok()?;
        Some(Claims {
            user,
            expires_s,
            id: id.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_unaltered_unexpired_and_of_their_kind() {
        let signer = Signer::new(vec![7; 32]);
        let token = signer.sign(Kind::Session, "alice", 1_000, "id1");
        assert_eq!(
            signer.verify(Kind::Session, &token, 999),
            Some(Claims {
                user: "alice".into(),
                expires_s: 1_000,
                id: "id1".into()
            })
        );
        assert_eq!(signer.verify(Kind::Session, &token, 1_000), None, "expired");
        assert_eq!(signer.verify(Kind::Pending, &token, 10), None, "kind");
        let other = Signer::new(vec![8; 32]);
        assert_eq!(other.verify(Kind::Session, &token, 10), None, "secret");
        // A payload for another user under the first signature.
        let forged = signer.sign(Kind::Session, "admin", 1_000, "id1");
        let tampered = format!(
            "{}.{}",
            forged.split('.').next().unwrap(),
            token.split('.').nth(1).unwrap()
        );
        assert_eq!(
            signer.verify(Kind::Session, &tampered, 10),
            None,
            "tampered"
        );
        assert_eq!(signer.verify(Kind::Session, "garbage", 10), None);
    }
}
