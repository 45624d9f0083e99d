//! The crypto service: JWS signature checks (RFC 7515/7518) in native code with ring,
//! for plugins, whose own WebAssembly copies of these algorithms are 100x slower. The
//! key is a JWK whose type must fit the algorithm, so a token cannot choose how its
//! key is used (an HS256 tag "signed" with an RSA public key is an error here).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey, VerificationAlgorithm};
use serde_json::Value;

/// Largest JWK text, message and signature taken (a token is at most a few KB).
pub const MAX_KEY_BYTES: usize = 16 * 1024;
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
pub const MAX_SIGNATURE_BYTES: usize = 1024;
/// HMAC keys shorter than this are guessable (RFC 7518 §3.2 asks for the hash size).
const MIN_HMAC_KEY_BYTES: usize = 32;

/// The JWS algorithms checked here: the WIT enum.
pub use crate::bindings::sluice::plugin::crypto::SignatureAlgorithm;

/// The JWS name (`"RS256"`).
fn name(alg: SignatureAlgorithm) -> &'static str {
    use SignatureAlgorithm::*;
    match alg {
        Rs256 => "RS256",
        Rs384 => "RS384",
        Rs512 => "RS512",
        Ps256 => "PS256",
        Ps384 => "PS384",
        Ps512 => "PS512",
        Es256 => "ES256",
        Es384 => "ES384",
        Eddsa => "EdDSA",
        Hs256 => "HS256",
        Hs384 => "HS384",
        Hs512 => "HS512",
    }
}

/// Whether `signature` is `alg`'s signature of `message` under the JWK `key`.
/// `Err` for a key that is malformed or does not fit `alg`, or inputs over the limits.
pub fn verify_signature(
    alg: SignatureAlgorithm,
    key: &str,
    message: &[u8],
    signature: &[u8],
) -> Result<bool, String> {
    if key.len() > MAX_KEY_BYTES {
        return Err(format!("key over {MAX_KEY_BYTES} bytes"));
    }
    if message.len() > MAX_MESSAGE_BYTES || signature.len() > MAX_SIGNATURE_BYTES {
        return Err("message or signature over the limit".into());
    }
    let jwk: Value = serde_json::from_str(key).map_err(|e| format!("key is not JSON: {e}"))?;
    let field = |name: &str| jwk.get(name).and_then(Value::as_str);
    let bytes = |name: &str| -> Result<Vec<u8>, String> {
        let text = field(name).ok_or_else(|| format!("key has no {name:?}"))?;
        URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .map_err(|e| format!("key's {name:?} is not base64url: {e}"))
    };
    if let Some(own) = field("alg") {
        if own != name(alg) {
            return Err(format!("key is for {own}, not {}", name(alg)));
        }
    }
    let kty = field("kty").unwrap_or("");
    let crv = field("crv").unwrap_or("");
    use SignatureAlgorithm::*;
    let expected = match alg {
        Rs256 | Rs384 | Rs512 | Ps256 | Ps384 | Ps512 => ("RSA", ""),
        Es256 => ("EC", "P-256"),
        Es384 => ("EC", "P-384"),
        Eddsa => ("OKP", "Ed25519"),
        Hs256 | Hs384 | Hs512 => ("oct", ""),
    };
    if kty != expected.0 || (!expected.1.is_empty() && crv != expected.1) {
        return Err(format!("a {kty} {crv} key cannot check {}", name(alg)));
    }
    match alg {
        Rs256 | Rs384 | Rs512 | Ps256 | Ps384 | Ps512 => {
            let n = bytes("n")?;
            let e = bytes("e")?;
            let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            if bits < 2048 {
                return Err("RSA key under 2048 bits".into());
            }
            let params: &signature::RsaParameters = match alg {
                Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
                Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
                _ => &signature::RSA_PSS_2048_8192_SHA512,
            };
            Ok(RsaPublicKeyComponents { n, e }
                .verify(params, message, signature)
                .is_ok())
        }
        Es256 | Es384 => {
            let (x, y) = (bytes("x")?, bytes("y")?);
            let (size, algorithm): (usize, &dyn VerificationAlgorithm) = if alg == Es256 {
                (32, &signature::ECDSA_P256_SHA256_FIXED)
            } else {
                (48, &signature::ECDSA_P384_SHA384_FIXED)
            };
            if x.len() != size || y.len() != size {
                return Err(format!("{crv} coordinates must be {size} bytes"));
            }
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Ok(UnparsedPublicKey::new(algorithm, point)
                .verify(message, signature)
                .is_ok())
        }
        Eddsa => {
            let x = bytes("x")?;
            if x.len() != 32 {
                return Err("Ed25519 key must be 32 bytes".into());
            }
            Ok(UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(message, signature)
                .is_ok())
        }
        Hs256 | Hs384 | Hs512 => {
            let k = bytes("k")?;
            if k.len() < MIN_HMAC_KEY_BYTES {
                return Err(format!("HMAC key under {MIN_HMAC_KEY_BYTES} bytes"));
            }
            let algorithm = match alg {
                Hs256 => ring::hmac::HMAC_SHA256,
                Hs384 => ring::hmac::HMAC_SHA384,
                _ => ring::hmac::HMAC_SHA512,
            };
            // ring compares the tags in constant time.
            Ok(
                ring::hmac::verify(&ring::hmac::Key::new(algorithm, &k), message, signature)
                    .is_ok(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn hmac_tags_verify_and_tampering_does_not() {
        let secret = [7u8; 32];
        let key = format!(r#"{{"kty":"oct","k":"{}"}}"#, b64(&secret));
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
            b"head.body",
        );
        use SignatureAlgorithm::*;
        assert_eq!(
            verify_signature(Hs256, &key, b"head.body", tag.as_ref()),
            Ok(true)
        );
        assert_eq!(
            verify_signature(Hs256, &key, b"head.bodY", tag.as_ref()),
            Ok(false)
        );
        assert_eq!(
            verify_signature(Hs384, &key, b"head.body", tag.as_ref()),
            Ok(false)
        );
        let short = format!(r#"{{"kty":"oct","k":"{}"}}"#, b64(&[7u8; 16]));
        assert!(verify_signature(Hs256, &short, b"x", b"y").is_err());
    }

    #[test]
    fn ecdsa_and_ed25519_signatures_verify_with_fitting_keys_only() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("key");
        let pair = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .expect("pair");
        let public = pair.public_key().as_ref();
        let key = format!(
            r#"{{"kty":"EC","crv":"P-256","x":"{}","y":"{}"}}"#,
            b64(&public[1..33]),
            b64(&public[33..65])
        );
        let sig = pair.sign(&rng, b"m").expect("sign");
        use SignatureAlgorithm::*;
        assert_eq!(verify_signature(Es256, &key, b"m", sig.as_ref()), Ok(true));
        assert_eq!(verify_signature(Es256, &key, b"n", sig.as_ref()), Ok(false));
        assert!(
            verify_signature(Es384, &key, b"m", sig.as_ref()).is_err(),
            "curve"
        );
        assert!(
            verify_signature(Hs256, &key, b"m", sig.as_ref()).is_err(),
            "type"
        );
        let own_alg = key.replace("\"kty\"", "\"alg\":\"ES384\",\"kty\"");
        assert!(verify_signature(Es256, &own_alg, b"m", sig.as_ref()).is_err());

        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("pair");
        let key = format!(
            r#"{{"kty":"OKP","crv":"Ed25519","x":"{}"}}"#,
            b64(pair.public_key().as_ref())
        );
        let sig = pair.sign(b"m");
        assert_eq!(verify_signature(Eddsa, &key, b"m", sig.as_ref()), Ok(true));
        assert_eq!(verify_signature(Eddsa, &key, b"m", &[0u8; 64]), Ok(false));
    }

    #[test]
    fn an_rsa_key_is_never_an_hmac_secret_and_small_ones_are_refused() {
        let n = b64(&[0xC5u8; 256]);
        let key = format!(r#"{{"kty":"RSA","n":"{n}","e":"AQAB"}}"#);
        use SignatureAlgorithm::*;
        assert!(verify_signature(Hs256, &key, b"m", &[0u8; 32]).is_err());
        assert_eq!(verify_signature(Rs256, &key, b"m", &[0u8; 256]), Ok(false));
        let small = format!(
            r#"{{"kty":"RSA","n":"{}","e":"AQAB"}}"#,
            b64(&[0xC5u8; 128])
        );
        assert!(verify_signature(Rs256, &small, b"m", &[0u8; 128]).is_err());
        assert!(verify_signature(Rs256, "not json", b"m", b"s").is_err());
        assert!(verify_signature(Rs256, &"x".repeat(MAX_KEY_BYTES + 1), b"m", b"s").is_err());
    }
}
