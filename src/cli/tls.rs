//! The TLS flags of every subcommand that connects: `--source-ca`, `--source-cert`,
//! `--source-key`, `--source-tls-server-name` and their `--target-…` twins.

use std::path::PathBuf;

use clap::Args;
use ferry::net::TlsOptions;

/// TLS settings of the source, for a `rediss://` URL.
#[derive(Debug, Clone, Default, Args)]
pub struct SourceTls {
    /// PEM bundle of the CAs that sign the source's certificate (replaces the default roots:
    /// the system's store and the public webpki roots).
    #[arg(long, value_name = "FILE", env = "FERRY_SOURCE_CA")]
    source_ca: Option<PathBuf>,
    /// PEM client certificate for a source that requires mutual TLS (with --source-key).
    #[arg(long, value_name = "FILE", requires = "source_key")]
    source_cert: Option<PathBuf>,
    /// PEM private key of --source-cert.
    #[arg(long, value_name = "FILE", requires = "source_cert")]
    source_key: Option<PathBuf>,
    /// The name the source's certificate must hold (and the SNI), when the URL reaches it by
    /// IP address or another name.
    #[arg(long, value_name = "NAME")]
    source_tls_server_name: Option<String>,
}

impl SourceTls {
    pub fn options(&self) -> TlsOptions {
        TlsOptions::new(
            self.source_ca.clone(),
            self.source_cert.clone(),
            self.source_key.clone(),
            self.source_tls_server_name.clone(),
        )
    }
}

/// TLS settings of the target, for a `rediss://` URL.
#[derive(Debug, Clone, Default, Args)]
pub struct TargetTls {
    /// PEM bundle of the CAs that sign the target's certificate (replaces the default roots:
    /// the system's store and the public webpki roots).
    #[arg(long, value_name = "FILE", env = "FERRY_TARGET_CA")]
    target_ca: Option<PathBuf>,
    /// PEM client certificate for a target that requires mutual TLS (with --target-key).
    #[arg(long, value_name = "FILE", requires = "target_key")]
    target_cert: Option<PathBuf>,
    /// PEM private key of --target-cert.
    #[arg(long, value_name = "FILE", requires = "target_cert")]
    target_key: Option<PathBuf>,
    /// The name the target's certificate must hold (and the SNI), when the URL reaches it by
    /// IP address or another name.
    #[arg(long, value_name = "NAME")]
    target_tls_server_name: Option<String>,
}

impl TargetTls {
    pub fn options(&self) -> TlsOptions {
        TlsOptions::new(
            self.target_ca.clone(),
            self.target_cert.clone(),
            self.target_key.clone(),
            self.target_tls_server_name.clone(),
        )
    }
}

/// The default plan's inputs for one side's TLS flags (`FERRY_SOURCE_CA`, …): how `ferry
/// migrate`, `capture` and `replay` hand them to `scripts/ferry/default.lua`.
pub fn plan_inputs(side: &str, tls: &TlsOptions) -> Vec<(String, String)> {
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    [
        ("CA", path(&tls.ca)),
        ("CERT", path(&tls.cert)),
        ("KEY", path(&tls.key)),
        ("TLS_SERVER_NAME", tls.server_name.clone()),
    ]
    .into_iter()
    .map(|(name, v)| (format!("FERRY_{side}_{name}"), v.unwrap_or_default()))
    .collect()
}
