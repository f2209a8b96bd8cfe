//! TLS on the gateway listener: the shell side of `server.tls_cert` and `server.tls_key`.
//!
//! [`load`] reads the two PEM files and checks them: at least one certificate, a private key
//! rustls can sign with, and that key belonging to the first certificate (the server's own;
//! the rest of the file is its chain). `reload::load_file` runs it inside every validation
//! (`check`, `serve`, a reload), so its problems are reported at the keys' places in the file.
//!
//! The listener takes its certificate from a [`GatewayCert`], rustls's certificate resolver,
//! not from the files: a reload that validates swaps the new pair in for the next handshakes,
//! and connections already up keep theirs. Whether the listener speaks TLS at all is fixed
//! at start (it is one socket with one acceptor).
//!
//! HTTP/1.1 only: ALPN offers `http/1.1`. Pingora could offer h2 with one call, but the
//! proxy's large-body replay and Pingora's h2-downstream issues (notes, #935) are untested
//! together.
//!
//! Nothing here logs or returns any content of the files; messages name a file by its path.

use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::ALPN;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};

use crate::engine::config::{TlsFiles, TlsPart, TlsProblem};

/// A PEM certificate chain or key is a few KiB; a larger file is not one (and `/dev/zero` must
/// not be read forever).
const MAX_PEM_BYTES: u64 = 1 << 20;

/// Read and check the pair; the certificate chain with its signing key, or every problem.
pub fn load(files: &TlsFiles) -> Result<Arc<CertifiedKey>, Vec<TlsProblem>> {
    let mut problems = Vec::new();
    let mut problem = |part, message| problems.push(TlsProblem { part, message });
    let certs = match read_pem(&files.cert) {
        Ok(text) => match certificates(&text, &files.cert) {
            Ok(c) => Some(c),
            Err(m) => {
                problem(TlsPart::Cert, m);
                None
            }
        },
        Err(m) => {
            problem(TlsPart::Cert, m);
            None
        }
    };
    let key = match read_pem(&files.key) {
        Ok(text) => match private_key(&text, &files.key) {
            Ok(k) => Some(k),
            Err(m) => {
                problem(TlsPart::Key, m);
                None
            }
        },
        Err(m) => {
            problem(TlsPart::Key, m);
            None
        }
    };
    let (Some(certs), Some(key)) = (certs, key) else {
        return Err(problems);
    };
    // Pingora's provider (ring). `from_der` also compares the key's public half with the
    // first certificate's.
    let provider = rustls::crypto::ring::default_provider();
    match CertifiedKey::from_der(certs, key, &provider) {
        Ok(k) => Ok(Arc::new(k)),
        Err(e) => Err(vec![mismatch(e, files)]),
    }
}

/// What `CertifiedKey::from_der` refused, said about the file it concerns.
fn mismatch(e: rustls::Error, files: &TlsFiles) -> TlsProblem {
    match e {
        rustls::Error::InconsistentKeys(_) => TlsProblem {
            part: TlsPart::Key,
            message: format!(
                "{} does not belong to the first certificate in {} (the server's own \
                 certificate comes first, then its chain)",
                files.key.display(),
                files.cert.display()
            ),
        },
        rustls::Error::InvalidCertificate(e) => TlsProblem {
            part: TlsPart::Cert,
            message: format!(
                "the first certificate in {} is not a valid X.509 certificate ({e})",
                files.cert.display()
            ),
        },
        // rustls's messages about a key name its type, never its bytes.
        e => TlsProblem {
            part: TlsPart::Key,
            message: format!(
                "{} is not a private key rustls can sign with (RSA, ECDSA P-256/P-384 or \
                 Ed25519): {e}",
                files.key.display()
            ),
        },
    }
}

/// The file's bytes, at most [`MAX_PEM_BYTES`].
fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    let cannot = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(format!(
            "{} is larger than 1 MiB, which no PEM certificate chain or key is",
            path.display()
        ));
    }
    Ok(bytes)
}

/// Every certificate of a PEM chain, in file order.
fn certificates(text: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| not_pem(&e, path))?;
    if certs.is_empty() {
        let swapped = PrivateKeyDer::from_pem_slice(text).is_ok();
        return Err(format!(
            "{} holds no certificate (a \"BEGIN CERTIFICATE\" PEM block){}",
            path.display(),
            if swapped {
                " but a private key: are tls_cert and tls_key swapped?"
            } else {
                ""
            }
        ));
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC).
fn private_key(text: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    match PrivateKeyDer::from_pem_slice(text) {
        Ok(k) => Ok(k),
        Err(pem::Error::NoItemsFound) if contains(text, b"BEGIN ENCRYPTED PRIVATE KEY") => {
            Err(format!(
                "{} holds an encrypted private key; the gateway needs it unencrypted \
                 (`openssl pkey -in KEY -out PLAIN`), in a file only its user can read",
                path.display()
            ))
        }
        Err(pem::Error::NoItemsFound) => Err(format!(
            "{} holds no private key (a \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \
             \"BEGIN EC PRIVATE KEY\" PEM block)",
            path.display()
        )),
        Err(e) => Err(not_pem(&e, path)),
    }
}

/// A PEM syntax error, described without quoting the file (its lines may be key material).
fn not_pem(e: &pem::Error, path: &Path) -> String {
    let what = match e {
        pem::Error::MissingSectionEnd { .. } => "a BEGIN line has no matching END line",
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a block is not valid base64",
        pem::Error::SectionTooLarge => "a block is too large",
        _ => "it cannot be parsed",
    };
    format!("{} is not valid PEM: {what}", path.display())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The gateway listener's certificate and key, swapped whole by a reload.
pub struct GatewayCert {
    current: ArcSwap<CertifiedKey>,
}

impl GatewayCert {
    pub fn new(key: Arc<CertifiedKey>) -> Arc<GatewayCert> {
        Arc::new(GatewayCert {
            current: ArcSwap::new(key),
        })
    }

    /// Serve `key` from the next handshake on.
    pub fn replace(&self, key: Arc<CertifiedKey>) {
        self.current.store(key);
    }

    /// Pingora's TLS settings for the gateway listener: TLS 1.2 and 1.3 (Pingora's choice),
    /// this resolver's certificate, ALPN `http/1.1`.
    pub fn settings(self: &Arc<Self>) -> Result<TlsSettings, String> {
        let mut s = TlsSettings::intermediate("", "")
            .map_err(|e| format!("cannot set up TLS on the gateway listener: {e}"))?;
        s.set_cert_resolver(self.clone());
        s.set_alpn(ALPN::H1);
        Ok(s)
    }
}

impl ResolvesServerCert for GatewayCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Never the key, not even its type.
impl fmt::Debug for GatewayCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GatewayCert")
    }
}

/// The readiness probe of a TLS listener: one TLS handshake with it (a bare TCP connect that
/// closes would make Pingora log a failed handshake at every start). It trusts exactly the
/// certificate the listener should serve, sends no request and closes cleanly.
pub async fn handshakes(cert: &Arc<GatewayCert>, addr: SocketAddr) -> bool {
    use tokio::io::AsyncWriteExt;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(Pinned {
        cert: cert.clone(),
        provider: provider.clone(),
    });
    let Ok(builder) =
        ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()
    else {
        return false;
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let connector = pingora::tls::TlsConnector::from(Arc::new(config));
    match connector
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
    {
        Ok(mut tls) => {
            let _ = tls.shutdown().await;
            true
        }
        Err(_) => false,
    }
}

/// Trusts one certificate: the one the gateway listener serves now.
#[derive(Debug)]
struct Pinned {
    cert: Arc<GatewayCert>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let served = self.cert.current.load();
        match served.end_entity_cert() {
            Ok(ours) if ours == end_entity => Ok(ServerCertVerified::assertion()),
            _ => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encrypted_key_is_named_as_such() {
        let pem = b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0w\n\
                    -----END ENCRYPTED PRIVATE KEY-----\n";
        let e = private_key(pem, Path::new("k.pem")).unwrap_err();
        assert!(e.starts_with("k.pem holds an encrypted private key"), "{e}");
    }

    #[test]
    fn a_pem_syntax_error_never_quotes_the_file() {
        let pem = b"-----BEGIN PRIVATE KEY hunter2-secret\nAAAA\n";
        let e = private_key(pem, Path::new("k.pem")).unwrap_err();
        assert_eq!(e, "k.pem is not valid PEM: a BEGIN line is malformed");
        let e =
            certificates(b"-----BEGIN CERTIFICATE-----\nAAAA\n", Path::new("c.pem")).unwrap_err();
        assert_eq!(
            e,
            "c.pem is not valid PEM: a BEGIN line has no matching END line"
        );
    }

    #[test]
    fn a_file_over_1_mib_is_not_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (small, big) = (dir.path().join("small"), dir.path().join("big"));
        std::fs::write(&small, vec![b'a'; MAX_PEM_BYTES as usize]).unwrap();
        std::fs::write(&big, vec![b'a'; MAX_PEM_BYTES as usize + 1]).unwrap();
        assert_eq!(read_pem(&small).map(|b| b.len()), Ok(1 << 20));
        let e = read_pem(&big).unwrap_err();
        assert!(e.ends_with("big is larger than 1 MiB, which no PEM certificate chain or key is"));
    }
}
