//! TLS settings of an endpoint (CA bundle, client certificate, server name, `#insecure`), the
//! one rustls client configuration built from them, and handshake failures worded as the
//! problem an operator can fix.
//!
//! Every connection ferry opens (control, `MONITOR`, replay, snapshot, verify, backup, reverse
//! sync) gets its TLS from here, through [`super::connect`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Serialize;

/// TLS settings of one side, from `--source-ca`/`--source-cert`/… or a plan's `tls = { … }`.
///
/// ## Behavior
/// - `ca`: a PEM bundle of the CAs that may sign the server's certificate. Given, it replaces
///   the default roots (the system's store and webpki's public roots), so a private CA is all
///   that is trusted for that endpoint.
/// - `cert` and `key`: a PEM client certificate (chain) and its private key, for servers that
///   require mutual TLS (`tls-auth-clients yes`). One without the other is refused.
/// - `server_name`: the name the server's certificate must hold, when the URL reaches it by IP
///   address or by another name (an SSH tunnel, a load balancer). It is also the SNI sent.
///
/// File contents are read once per endpoint and never logged; only the paths are shown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TlsOptions {
    /// PEM bundle of trusted CAs.
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// The name the server's certificate is checked against (and the SNI).
    pub server_name: Option<String>,
}

impl TlsOptions {
    /// Settings from their parts (the CLI's flags, a plan's `tls` table).
    pub fn new(
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        server_name: Option<String>,
    ) -> TlsOptions {
        TlsOptions {
            ca,
            cert,
            key,
            server_name,
        }
    }

    /// No setting given: a `rediss://` URL then uses the default roots and its own host name.
    pub fn is_empty(&self) -> bool {
        *self == TlsOptions::default()
    }

    /// `self` with every setting that `other` gives replaced by it (a flag over a plan field).
    pub fn or(&self, other: &TlsOptions) -> TlsOptions {
        TlsOptions {
            ca: other.ca.clone().or_else(|| self.ca.clone()),
            cert: other.cert.clone().or_else(|| self.cert.clone()),
            key: other.key.clone().or_else(|| self.key.clone()),
            server_name: other
                .server_name
                .clone()
                .or_else(|| self.server_name.clone()),
        }
    }
}

/// A built client configuration and the name the server is checked against.
#[derive(Clone)]
pub(crate) struct TlsSetup {
    pub(crate) config: Arc<rustls::ClientConfig>,
    pub(crate) server_name: ServerName<'static>,
    /// Whether a client certificate is offered (to word a refusal by the server).
    pub(crate) client_cert: bool,
}

/// Why the TLS settings cannot be used; the endpoint is added by the caller.
pub(crate) type SetupError = String;

/// Builds the rustls configuration for `host` with `opts`; `insecure` is the URL's `#insecure`.
pub(crate) fn setup(host: &str, insecure: bool, opts: &TlsOptions) -> Result<TlsSetup, SetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(insecure::AcceptAny(provider)))
    } else {
        let roots = match &opts.ca {
            Some(path) => ca_roots(path)?,
            None => default_roots(),
        };
        builder.with_root_certificates(roots)
    };
    let config = match (&opts.cert, &opts.key) {
        (Some(cert), Some(key)) => {
            let chain = certificates(cert, "client certificate")?;
            let key = private_key(key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("the client certificate and key do not go together: {e}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => {
            return Err("a client certificate was given without its key (tls.key)".into());
        }
        (None, Some(_)) => {
            return Err("a client key was given without its certificate (tls.cert)".into());
        }
    };
    let name = opts.server_name.as_deref().unwrap_or(host);
    // A bracketed IPv6 host from a URL is an IP address without its brackets.
    let name = name.trim_start_matches('[').trim_end_matches(']');
    let server_name = ServerName::try_from(name.to_string())
        .map_err(|_| format!("'{name}' is not a valid TLS server name"))?;
    Ok(TlsSetup {
        config: Arc::new(config),
        server_name,
        client_cert: opts.cert.is_some(),
    })
}

/// The system's store plus webpki's public roots: what a `rediss://` URL trusts by default.
/// Loaded once per process: every endpoint parse would otherwise read the system store again.
fn default_roots() -> rustls::RootCertStore {
    static ROOTS: std::sync::OnceLock<rustls::RootCertStore> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            // An unreadable system store leaves the public roots; a private CA goes in
            // `tls.ca`.
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            roots
        })
        .clone()
}

fn ca_roots(path: &Path) -> Result<rustls::RootCertStore, SetupError> {
    let mut roots = rustls::RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certificates(path, "CA bundle")?);
    if added == 0 {
        return Err(format!(
            "no usable CA certificate in the CA bundle {} ({ignored} could not be parsed)",
            path.display()
        ));
    }
    Ok(roots)
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, SetupError> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, SetupError> {
    let pem = read(path, what)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the {what} {} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in the {what} {}",
            path.display()
        ));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, SetupError> {
    let pem = read(path, "client key")?;
    // The parse error never quotes the file: it holds the key.
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|_| format!("the client key {} is not valid PEM", path.display()))?
        .ok_or_else(|| format!("no PEM private key in the client key {}", path.display()))
}

/// The problem behind a failed TLS handshake or a connection the server closed with a TLS
/// alert, worded for the operator; `None` when `e` carries no TLS error.
pub(crate) fn describe_io(e: &std::io::Error, setup: &TlsSetup) -> Option<String> {
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(describe(tls, setup))
}

/// One line naming what went wrong and what to do about it.
pub(crate) fn describe(e: &rustls::Error, setup: &TlsSetup) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let name = match &setup.server_name {
        ServerName::DnsName(n) => n.as_ref().to_string(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    };
    match e {
        E::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "unknown issuer: the server's certificate is not signed by a trusted CA (give its CA bundle with --source-ca/--target-ca or tls.ca)".into(),
            C::Expired | C::ExpiredContext { .. } => "certificate expired: the server's certificate is past its notAfter date (renew it on the server)".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => "certificate not valid yet: the server's certificate starts in the future (check both clocks)".into(),
            C::NotValidForName | C::NotValidForNameContext { .. } => format!(
                "name mismatch: the server's certificate is not valid for '{name}' (reach it by a name it holds, or set --source-tls-server-name/--target-tls-server-name or tls.server_name)"
            ),
            C::BadSignature => "bad certificate signature: the server's certificate chain does not verify".into(),
            other => format!("invalid server certificate: {other:?}"),
        },
        E::AlertReceived(A::CertificateRequired) => "client certificate required: the server requires mutual TLS (give a client certificate and key with --source-cert/--source-key, --target-cert/--target-key or tls.cert/tls.key)".into(),
        E::AlertReceived(A::HandshakeFailure) if !setup.client_cert => "the server refused the handshake (HandshakeFailure): it may require a client certificate (give one with tls.cert/tls.key)".into(),
        E::AlertReceived(a @ (A::UnknownCA | A::BadCertificate | A::CertificateUnknown | A::UnsupportedCertificate | A::CertificateExpired | A::CertificateRevoked | A::AccessDenied)) => format!(
            "the server refused ferry's client certificate ({a:?}): it must be signed by a CA in the server's tls-ca-cert-file and be valid now"
        ),
        E::InvalidMessage(_) => "the server did not answer TLS (is this a plain-text port? use redis:// for it)".into(),
        other => other.to_string(),
    }
}

/// The `#insecure` URL fragment: the user explicitly turned certificate checks off.
mod insecure {
    use rustls::DigitallySignedStruct;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use std::sync::Arc;

    #[derive(Debug)]
    pub(super) struct AcceptAny(pub Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{Endpoint, NetError};

    #[test]
    fn flags_override_plan_fields_one_by_one() {
        let plan = TlsOptions::new(Some("a.pem".into()), None, None, Some("n".into()));
        let flags = TlsOptions::new(Some("b.pem".into()), None, None, None);
        let both = plan.or(&flags);
        assert_eq!(both.ca.as_deref(), Some(Path::new("b.pem")));
        assert_eq!(both.server_name.as_deref(), Some("n"));
        assert!(TlsOptions::default().is_empty() && !both.is_empty());
    }

    #[test]
    fn unusable_settings_are_refused_before_connecting() {
        let ca = TlsOptions::new(Some("/nonexistent/ca.pem".into()), None, None, None);
        let e = Endpoint::parse_with_tls("rediss://:hunter2@h:1", &ca).unwrap_err();
        assert!(matches!(e, NetError::TlsConfig { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("cannot read the CA bundle /nonexistent/ca.pem"),
            "{msg}"
        );
        assert!(!msg.contains("hunter2"), "{msg}");
        let e = Endpoint::parse_with_tls("redis://h:1", &ca).unwrap_err();
        assert!(e.to_string().contains("use rediss://"), "{e}");
        let half = TlsOptions::new(None, Some("c.pem".into()), None, None);
        let e = Endpoint::parse_with_tls("rediss://h:1", &half).unwrap_err();
        assert!(e.to_string().contains("without its key"), "{e}");
        // Defaults: a `rediss://` URL needs nothing more, a plain one gets no TLS.
        assert!(Endpoint::parse("rediss://h:1").unwrap().tls.is_some());
        assert!(Endpoint::parse("redis://h:1").unwrap().tls.is_none());
    }
}
