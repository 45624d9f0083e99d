//! Password checks for plugins (basic-auth, a login gate): argon2 and bcrypt PHC
//! strings verified in native code on blocking threads, a bounded number at once. A
//! hash is slow by design (argon2id at OWASP's minimum takes ~19 MiB and tens of
//! milliseconds), far over a plugin's memory cap and CPU deadline, and a flood of
//! logins must not take the workers that serve every other route: checks beyond the
//! slots wait at most `password_wait_ms`, then fail as busy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::Semaphore;

/// Longest password checked; longer ones never match (and cost nothing).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Longest hash string taken.
const MAX_HASH_BYTES: usize = 512;
/// The most a hash may ask for: a config (or a stolen state key) with a 4 GiB argon2
/// memory cost must not take the host down.
const MAX_ARGON2_MEMORY_KIB: u32 = 256 * 1024;
const MAX_ARGON2_PASSES: u32 = 16;
const MAX_ARGON2_LANES: u32 = 8;
const MAX_BCRYPT_COST: u32 = 15;

/// Why a password was not checked.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("{0}")]
    Unsupported(String),
    #[error("all password check slots are busy")]
    Busy,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PasswordLabels {
    pub result: &'static str,
}

/// The checking slots and their counters.
pub struct PasswordChecks {
    slots: Arc<Semaphore>,
    wait: Duration,
    /// Checks by result: `match`, `mismatch`, `busy`, `unsupported`.
    pub checks: Family<PasswordLabels, Counter>,
    /// Time of the checks that ran (not the wait for a slot).
    pub seconds: Histogram,
}

impl PasswordChecks {
    /// `slots` checks at once (0: half the cores, at least 1); a check waits at most
    /// `wait` for one.
    pub fn new(slots: u32, wait: Duration) -> Self {
        let slots = match slots {
            0 => std::thread::available_parallelism()
                .map(|n| n.get() / 2)
                .unwrap_or(1)
                .max(1),
            n => n as usize,
        };
        Self {
            slots: Arc::new(Semaphore::new(slots)),
            wait,
            checks: Family::default(),
            seconds: Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
        }
    }

    /// Whether `password` matches `hash`.
    pub async fn verify(&self, hash: String, password: Vec<u8>) -> Result<bool, PasswordError> {
        let outcome = self.verify_uncounted(hash, password).await;
        let result = match &outcome {
            Ok(true) => "match",
            Ok(false) => "mismatch",
            Err(PasswordError::Busy) => "busy",
            Err(PasswordError::Unsupported(_)) => "unsupported",
        };
        self.checks.get_or_create(&PasswordLabels { result }).inc();
        outcome
    }

    async fn verify_uncounted(
        &self,
        hash: String,
        password: Vec<u8>,
    ) -> Result<bool, PasswordError> {
        let scheme = Scheme::of(&hash)?;
        if password.len() > MAX_PASSWORD_BYTES {
            return Ok(false);
        }
        let permit = tokio::time::timeout(self.wait, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| PasswordError::Busy)?
            .map_err(|_| PasswordError::Busy)?;
        let started = Instant::now();
        let outcome = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            scheme.verify(&hash, &password)
        })
        .await
        .map_err(|e| PasswordError::Unsupported(format!("check failed: {e}")))?;
        self.seconds.observe(started.elapsed().as_secs_f64());
        outcome
    }
}

/// The hash schemes taken, each checked against the cost bounds before it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    Argon2,
    Bcrypt,
}

impl Scheme {
    fn of(hash: &str) -> Result<Self, PasswordError> {
        let unsupported = |why: &str| Err(PasswordError::Unsupported(why.to_string()));
        if hash.len() > MAX_HASH_BYTES {
            return unsupported("hash string too long");
        }
        if hash.starts_with("$argon2") {
            let parsed = PasswordHash::new(hash).map_err(|e| {
                PasswordError::Unsupported(format!("not an argon2 PHC string: {e}"))
            })?;
            let param = |name: &str| {
                parsed.params.get_decimal(name).ok_or_else(|| {
                    PasswordError::Unsupported(format!("argon2 hash without {name}"))
                })
            };
            let (m, t, p) = (param("m")?, param("t")?, param("p")?);
            if m > MAX_ARGON2_MEMORY_KIB || t > MAX_ARGON2_PASSES || p > MAX_ARGON2_LANES {
                return unsupported("argon2 cost over the bounds (m 256 MiB, t 16, p 8)");
            }
            return Ok(Scheme::Argon2);
        }
        let bcrypt_cost = ["$2a$", "$2b$", "$2y$"]
            .iter()
            .find_map(|prefix| hash.strip_prefix(prefix))
            .and_then(|rest| rest.get(..2))
            .and_then(|cost| cost.parse::<u32>().ok());
        match bcrypt_cost {
            Some(cost) if cost <= MAX_BCRYPT_COST => Ok(Scheme::Bcrypt),
            Some(_) => unsupported("bcrypt cost over 15"),
            None => unsupported("not an argon2 ($argon2id$...) or bcrypt ($2b$...) hash"),
        }
    }

    fn verify(self, hash: &str, password: &[u8]) -> Result<bool, PasswordError> {
        match self {
            Scheme::Argon2 => {
                let parsed = PasswordHash::new(hash)
                    .map_err(|e| PasswordError::Unsupported(e.to_string()))?;
                Ok(Argon2::default().verify_password(password, &parsed).is_ok())
            }
            // bcrypt reads at most 72 bytes; a longer password must not match a hash
            // of its first 72.
            Scheme::Bcrypt if password.len() > 72 => Ok(false),
            Scheme::Bcrypt => bcrypt::verify(password, hash)
                .map_err(|e| PasswordError::Unsupported(format!("bcrypt: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, SaltString};
    use argon2::{Algorithm, Params, Version};

    fn argon2id(password: &str, m: u32, t: u32) -> String {
        let salt = SaltString::from_b64("c2FsdHNhbHRzYWx0c2FsdA").expect("salt");
        Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(m, t, 1, None).expect("params"),
        )
        .hash_password(password.as_bytes(), &salt)
        .expect("hash")
        .to_string()
    }

    #[tokio::test]
    async fn argon2_and_bcrypt_hashes_verify() {
        let checks = PasswordChecks::new(1, Duration::from_secs(5));
        let hash = argon2id("hunter2", 1024, 1);
        assert_eq!(
            checks.verify(hash.clone(), b"hunter2".to_vec()).await,
            Ok(true)
        );
        assert_eq!(checks.verify(hash, b"hunter3".to_vec()).await, Ok(false));
        let hash = bcrypt::hash("hunter2", 4).expect("bcrypt");
        assert_eq!(
            checks.verify(hash.clone(), b"hunter2".to_vec()).await,
            Ok(true)
        );
        assert_eq!(checks.verify(hash, b"Hunter2".to_vec()).await, Ok(false));
    }

    #[tokio::test]
    async fn costly_or_unknown_hashes_are_refused_before_running() {
        let checks = PasswordChecks::new(1, Duration::from_secs(5));
        let huge = "$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert!(matches!(
            checks.verify(huge.into(), b"x".to_vec()).await,
            Err(PasswordError::Unsupported(_))
        ));
        let costly = "$2b$31$abcdefghijklmnopqrstuuAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert!(checks.verify(costly.into(), b"x".to_vec()).await.is_err());
        for hash in ["plain", "$1$md5$x", "{SHA}abc", ""] {
            assert!(
                checks.verify(hash.into(), b"x".to_vec()).await.is_err(),
                "{hash}"
            );
        }
    }

    #[tokio::test]
    async fn a_long_password_never_matches_a_bcrypt_hash_of_its_start() {
        let checks = PasswordChecks::new(1, Duration::from_secs(5));
        let start = "a".repeat(72);
        let hash = bcrypt::hash(&start, 4).expect("bcrypt");
        let longer = format!("{start}tail");
        assert_eq!(checks.verify(hash, longer.into_bytes()).await, Ok(false));
    }

    #[tokio::test]
    async fn when_every_slot_is_taken_a_check_fails_busy_after_the_wait() {
        let checks = Arc::new(PasswordChecks::new(1, Duration::from_millis(50)));
        let held = checks.slots.clone().acquire_owned().await.expect("slot");
        let hash = bcrypt::hash("pw", 4).expect("bcrypt");
        assert_eq!(
            checks.verify(hash.clone(), b"pw".to_vec()).await,
            Err(PasswordError::Busy)
        );
        drop(held);
        assert_eq!(checks.verify(hash, b"pw".to_vec()).await, Ok(true));
    }
}
