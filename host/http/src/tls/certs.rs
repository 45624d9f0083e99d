//! Certificate and key pairs: read from PEM, checked (the key matches, the chain
//! parses, the leaf is valid now), and chosen per handshake by SNI.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;

use sluice_config::CertificateConfig;

/// A warning is logged (and shown by `sluice check`) this long before a leaf expires.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// What is wrong with a certificate or key, naming the file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct CertError {
    pub path: PathBuf,
    pub problem: String,
}

fn problem(path: &Path, problem: impl Into<String>) -> CertError {
    CertError {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// A loaded, checked pair.
pub struct CertPair {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// DNS names of the leaf's SubjectAltName, lower case (`*.example.com` kept as is).
    pub names: Vec<String>,
    pub subject: String,
    /// Leaf validity, seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    pub key: Arc<CertifiedKey>,
}

impl CertPair {
    /// True when the leaf expires within [`EXPIRY_WARNING`] of `now`.
    pub fn expires_soon(&self, now: SystemTime) -> bool {
        let soon = now + EXPIRY_WARNING;
        unix_secs(soon) >= self.not_after
    }
}

pub fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// Reads and checks one pair; every failure names the file and the problem.
pub fn load_pair(
    config: &CertificateConfig,
    provider: &CryptoProvider,
    now: SystemTime,
) -> Result<CertPair, CertError> {
    let cert_path = &config.cert;
    let key_path = &config.key;
    let chain = read_chain(cert_path)?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
        problem(
            key_path,
            format!("no usable private key: {}", pem_error(&e)),
        )
    })?;

    let mut leaf_facts = None;
    for (i, der) in chain.iter().enumerate() {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| {
            problem(
                cert_path,
                format!("certificate #{} of the chain does not parse: {e}", i + 1),
            )
        })?;
        if i == 0 {
            leaf_facts = Some(leaf_facts_of(&cert));
        }
    }
    let Some((names, subject, not_before, not_after)) = leaf_facts else {
        return Err(problem(cert_path, "no CERTIFICATE block"));
    };
    let now_secs = unix_secs(now);
    if not_after < now_secs {
        return Err(problem(
            cert_path,
            format!("certificate expired at {}", rfc3339(not_after)),
        ));
    }
    if not_before > now_secs {
        return Err(problem(
            cert_path,
            format!("certificate is not valid before {}", rfc3339(not_before)),
        ));
    }
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => problem(
            key_path,
            format!(
                "private key does not match the certificate in {}",
                cert_path.display()
            ),
        ),
        other => problem(key_path, format!("unusable private key: {other}")),
    })?;
    Ok(CertPair {
        cert_path: cert_path.clone(),
        key_path: key_path.clone(),
        names,
        subject,
        not_before,
        not_after,
        key: Arc::new(certified),
    })
}

/// Every certificate of a PEM bundle (a CA bundle or a chain).
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| problem(path, pem_error(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(path, pem_error(&e)))?;
    if chain.is_empty() {
        return Err(problem(path, "no CERTIFICATE block"));
    }
    Ok(chain)
}

fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) => format!("cannot read: {io}"),
        rustls_pki_types::pem::Error::NoItemsFound => "no PEM block of the expected type".into(),
        other => format!("malformed PEM: {other:?}"),
    }
}

fn leaf_facts_of(
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> (Vec<String>, String, i64, i64) {
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                let dns = dns.trim_end_matches('.').to_ascii_lowercase();
                if !dns.is_empty() && !names.contains(&dns) {
                    names.push(dns);
                }
            }
        }
    }
    let validity = cert.validity();
    (
        names,
        cert.subject().to_string(),
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    )
}

/// `2026-11-22T17:14:54Z` from Unix seconds (UTC, no leap seconds).
pub fn rfc3339(secs: i64) -> String {
    let (year, month, day) = sluice_base::civil::civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The pairs serving now, indexed by name.
pub struct CertStore {
    pairs: Vec<Arc<CertPair>>,
    exact: HashMap<String, usize>,
    /// `*.example.com` is stored under `example.com`.
    wildcard: HashMap<String, usize>,
    default_for_unknown: bool,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("pairs", &self.pairs.len())
            .finish()
    }
}

impl CertStore {
    /// `pairs` in config order: on a name two pairs share, the first wins, and the first
    /// pair is the default.
    pub fn new(pairs: Vec<Arc<CertPair>>, default_for_unknown: bool) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, pair) in pairs.iter().enumerate() {
            for name in &pair.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()).or_insert(i),
                    None => exact.entry(name.clone()).or_insert(i),
                };
            }
        }
        Self {
            pairs,
            exact,
            wildcard,
            default_for_unknown,
        }
    }

    pub fn pairs(&self) -> &[Arc<CertPair>] {
        &self.pairs
    }

    /// The pair for a client's SNI: an exact name, then a wildcard covering one label,
    /// then the default (unless unknown names are refused).
    pub fn select(&self, sni: Option<&str>) -> Option<&Arc<CertPair>> {
        let found = sni.and_then(|sni| {
            let name = sni.trim_end_matches('.').to_ascii_lowercase();
            self.exact.get(&name).copied().or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent).copied()
            })
        });
        match found {
            Some(i) => self.pairs.get(i),
            None if self.default_for_unknown => self.pairs.first(),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str]) -> Arc<CertPair> {
        let provider = rustls::crypto::ring::default_provider();
        let key = rcgen_free_key(&provider);
        Arc::new(CertPair {
            cert_path: PathBuf::from(names.join(",")),
            key_path: PathBuf::new(),
            names: names.iter().map(|n| n.to_string()).collect(),
            subject: String::new(),
            not_before: 0,
            not_after: 0,
            key,
        })
    }

    /// A CertifiedKey whose certificate bytes are a placeholder (selection never reads them).
    fn rcgen_free_key(provider: &CryptoProvider) -> Arc<CertifiedKey> {
        // A fixed Ed25519 PKCS#8 key: selection tests need a key object, not a valid chain.
        const ED25519_PKCS8: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIBgCiJcpa6mb2mrwe3Nh5VRtTwQ+jUBgERPSmjKh9oNj\n-----END PRIVATE KEY-----\n";
        let key = PrivateKeyDer::from_pem_slice(ED25519_PKCS8.as_bytes()).unwrap();
        let signing = provider.key_provider.load_private_key(key).unwrap();
        Arc::new(CertifiedKey::new(
            vec![CertificateDer::from(vec![0u8])],
            signing,
        ))
    }

    fn chosen(store: &CertStore, sni: Option<&str>) -> Option<String> {
        store.select(sni).map(|p| p.cert_path.display().to_string())
    }

    #[test]
    fn exact_beats_wildcard_and_case_is_ignored() {
        let store = CertStore::new(
            vec![
                pair(&["a.test"]),
                pair(&["*.example.com"]),
                pair(&["www.example.com"]),
            ],
            true,
        );
        assert_eq!(
            chosen(&store, Some("WWW.Example.COM")).as_deref(),
            Some("www.example.com")
        );
        assert_eq!(
            chosen(&store, Some("api.example.com")).as_deref(),
            Some("*.example.com")
        );
        assert_eq!(
            chosen(&store, Some("api.example.com.")).as_deref(),
            Some("*.example.com")
        );
        // A wildcard covers exactly one label.
        assert_eq!(
            chosen(&store, Some("a.b.example.com")).as_deref(),
            Some("a.test")
        );
        assert_eq!(
            chosen(&store, Some("example.com")).as_deref(),
            Some("a.test")
        );
        assert_eq!(chosen(&store, None).as_deref(), Some("a.test"));
    }

    #[test]
    fn unknown_names_can_be_refused() {
        let store = CertStore::new(vec![pair(&["a.test"])], false);
        assert_eq!(chosen(&store, Some("a.test")).as_deref(), Some("a.test"));
        assert_eq!(chosen(&store, Some("b.test")), None);
        assert_eq!(chosen(&store, None), None);
    }

    #[test]
    fn first_pair_wins_a_shared_name() {
        let store = CertStore::new(vec![pair(&["x.test"]), pair(&["x.test", "y.test"])], true);
        assert_eq!(chosen(&store, Some("x.test")).as_deref(), Some("x.test"));
        assert_eq!(
            chosen(&store, Some("y.test")).as_deref(),
            Some("x.test,y.test")
        );
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_367_694), "2026-11-22T17:14:54Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
