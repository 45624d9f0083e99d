//! RFC 6238 time-based one-time codes: HMAC-SHA-1, 6 digits, 30-second steps; base32
//! secrets (RFC 4648) as authenticator apps take them.

use hmac::{Hmac, Mac};
use sha1::Sha1;

pub const STEP_S: u64 = 30;

/// A base32 secret (any case, spaces and `=` padding ignored) as bytes.
pub fn base32_decode(text: &str) -> Result<Vec<u8>, String> {
    let mut bits: u64 = 0;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.chars().filter(|c| !c.is_whitespace() && *c != '=') {
        let value = match c.to_ascii_uppercase() {
            c @ 'A'..='Z' => c as u64 - 'A' as u64,
            c @ '2'..='7' => c as u64 - '2' as u64 + 26,
            other => return Err(format!("{other:?} is not a base32 character")),
        };
        bits = (bits << 5) | value;
        count += 5;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Ok(out)
}

/// The 6-digit code for step `counter`.
pub fn code(secret: &[u8], counter: u64) -> u32 {
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret) else {
        return u32::MAX;
    };
    mac.update(&counter.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = (digest[19] & 0x0f) as usize;
    let value = u32::from_be_bytes([
        digest[offset] & 0x7f,
        digest[offset + 1],
        digest[offset + 2],
        digest[offset + 3],
    ]);
    value % 1_000_000
}

/// The step `given` is the code of, among the steps one before, at and one after
/// `now_s`'s.
pub fn matching_step(secret: &[u8], given: &str, now_s: u64) -> Option<u64> {
    if given.len() != 6 || !given.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let given: u32 = given.parse().ok()?;
    let now = now_s / STEP_S;
    // Every candidate is computed, so timing does not say which step matched.
    let mut found = None;
    for step in [now.saturating_sub(1), now, now + 1] {
        if code(secret, step) == given && found.is_none() {
            found = Some(step);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_6238_vectors() {
        // RFC 6238 appendix B, SHA-1 secret "12345678901234567890", last 6 digits.
        let secret = b"12345678901234567890";
        for (t, expected) in [
            (59u64, 287_082u32),
            (1_111_111_109, 81_804),
            (1_111_111_111, 50_471),
            (1_234_567_890, 5_924),
            (2_000_000_000, 279_037),
        ] {
            assert_eq!(code(secret, t / STEP_S), expected, "t = {t}");
        }
    }

    #[test]
    fn base32_secrets_decode() {
        assert_eq!(
            base32_decode("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ").unwrap(),
            b"12345678901234567890"
        );
        assert_eq!(base32_decode("gezd gnbv").unwrap(), b"12345");
        assert!(base32_decode("GEZ1").is_err());
    }

    #[test]
    fn one_step_either_way_is_accepted() {
        let secret = b"12345678901234567890";
        let now = 1_111_111_111;
        let at = |step: u64| format!("{:06}", code(secret, step));
        let step = now / STEP_S;
        assert_eq!(matching_step(secret, &at(step), now), Some(step));
        assert_eq!(matching_step(secret, &at(step - 1), now), Some(step - 1));
        assert_eq!(matching_step(secret, &at(step + 1), now), Some(step + 1));
        assert_eq!(matching_step(secret, &at(step - 2), now), None);
        assert_eq!(matching_step(secret, "12345", now), None);
        assert_eq!(matching_step(secret, "12345a", now), None);
    }
}
