//! Test certificates made with `openssl` (a private CA, server and client certificates, an
//! expired one, a second CA), and the redis-rs clients that fixtures, the workload and the
//! oracle use to reach TLS servers: redis-rs's own TLS, independent of ferry's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use redis::{ConnectionAddr, IntoConnectionInfo};
use tempfile::TempDir;

/// A private PKI in a temp dir. Every certificate is for `localhost` and `127.0.0.1`.
pub struct Pki {
    dir: TempDir,
}

impl Default for Pki {
    fn default() -> Pki {
        Pki::new()
    }
}

impl Pki {
    /// Generates the CA, the server, client and expired certificates, and another CA.
    pub fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("ferry-pki-")
            .tempdir()
            .unwrap();
        let pki = Pki { dir };
        pki.ca("ca");
        pki.ca("other-ca");
        pki.leaf("server", "ca", "serverAuth", None);
        pki.leaf("client", "ca", "clientAuth", None);
        pki.leaf(
            "expired",
            "ca",
            "serverAuth",
            Some(("20200101000000Z", "20200201000000Z")),
        );
        pki.leaf("other-client", "other-ca", "clientAuth", None);
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// `name.pem` and `name.key`.
    pub fn pair(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key")),
        )
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("openssl (make deps installs it)");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    }

    fn ca(&self, name: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=ferry test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    /// A certificate signed by `ca`; `dates` (notBefore, notAfter) makes an expired one.
    fn leaf(&self, name: &str, ca: &str, usage: &str, dates: Option<(&str, &str)>) {
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        self.openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            &key,
            "-out",
            &csr,
        ]);
        let ext = format!("{name}.ext");
        std::fs::write(
            self.path(&ext),
            format!(
                "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage={usage}\n"
            ),
        )
        .unwrap();
        match dates {
            None => self.openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &pem,
            ]),
            Some((start, end)) => {
                // `openssl x509` cannot date a certificate in the past; `openssl ca` can.
                let conf = format!("{name}-ca.cnf");
                std::fs::write(
                    self.path(&conf),
                    format!(
                        "[ca]\ndefault_ca=d\n[d]\ndir=.\ndatabase={name}-index.txt\n\
                         new_certs_dir=.\nserial={name}.srl\ndefault_md=sha256\n\
                         policy=p\ncopy_extensions=none\n[p]\ncommonName=supplied\n"
                    ),
                )
                .unwrap();
                std::fs::write(self.path(&format!("{name}-index.txt")), "").unwrap();
                std::fs::write(self.path(&format!("{name}.srl")), "1000\n").unwrap();
                self.openssl(&[
                    "ca",
                    "-batch",
                    "-config",
                    &conf,
                    "-cert",
                    &format!("{ca}.pem"),
                    "-keyfile",
                    &format!("{ca}.key"),
                    "-in",
                    &csr,
                    "-out",
                    &pem,
                    "-notext",
                    "-startdate",
                    start,
                    "-enddate",
                    end,
                    "-extfile",
                    &ext,
                ]);
            }
        }
    }
}

/// How a test server speaks TLS (see [`super::ServerOptions::tls`]).
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The server's certificate and key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA that signs client certificates (and, for the fixtures' own clients, the server's).
    pub ca: PathBuf,
    /// `tls-auth-clients yes`: a client certificate is required.
    pub auth_clients: bool,
    /// The client certificate and key the fixtures use when `auth_clients`.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl ServerTls {
    /// A server with `pki`'s server certificate; with `mutual`, clients need a certificate.
    pub fn from_pki(pki: &Pki, mutual: bool) -> ServerTls {
        let (cert, key) = pki.pair("server");
        ServerTls {
            cert,
            key,
            ca: pki.ca_pem(),
            auth_clients: mutual,
            client: mutual.then(|| pki.pair("client")),
        }
    }
}

/// The TLS files the fixtures' clients use, by TLS port.
static CLIENTS: Mutex<Option<HashMap<u16, ServerTls>>> = Mutex::new(None);

/// Makes [`client`] reach the TLS server on `port` with `tls`.
pub fn register(port: u16, tls: &ServerTls) {
    CLIENTS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(port, tls.clone());
}

/// A redis-rs client for `info`: for a `rediss://` URL of a registered test server, with its CA
/// and client certificate (redis-rs's TLS, not ferry's); otherwise a plain `Client::open`.
pub fn client(info: impl IntoConnectionInfo) -> redis::RedisResult<redis::Client> {
    let info = info.into_connection_info()?;
    let port = match info.addr() {
        ConnectionAddr::TcpTls { port, .. } => Some(*port),
        _ => None,
    };
    let tls = port.and_then(|p| CLIENTS.lock().unwrap().as_ref()?.get(&p).cloned());
    let Some(tls) = tls else {
        return redis::Client::open(info);
    };
    ferry::net::install_crypto_provider();
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    redis::Client::build_with_tls(
        info,
        redis::TlsCertificates {
            client_tls: tls.client.as_ref().map(|(c, k)| redis::ClientTlsConfig {
                client_cert: read(c),
                client_key: read(k),
            }),
            root_cert: Some(read(&tls.ca)),
        },
    )
}
