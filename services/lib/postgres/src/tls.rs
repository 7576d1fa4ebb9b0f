//! The PostgreSQL connection pool with the TLS `[database_tls]` asks for (rustls, ring).
//! libpq's modes: `disable` speaks plaintext; `prefer` and `require` encrypt without checking
//! who answers (as libpq does without a root certificate); `verify-full` checks the server's
//! certificate against `root_cert_file` and its name against the host in `database_url`.

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use neuroshard_common::{Error, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::{DatabaseTls, SslMode};

/// Connections the pool keeps at most.
const POOL_SIZE: usize = 16;

/// A pool for `database_url` (a libpq-style string) secured as `tls` says. Connects lazily:
/// the first query reports an unreachable server or a failed handshake.
pub fn pool(database_url: &str, tls: &DatabaseTls) -> Result<Pool> {
    let mut config: tokio_postgres::Config = database_url
        .parse()
        .map_err(|_| Error::invalid_argument("database_url: not a valid connection string"))?;
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match tls.sslmode {
        SslMode::Disable => {
            config.ssl_mode(PgSslMode::Disable);
            Manager::from_config(config, NoTls, manager_config)
        }
        mode => {
            config.ssl_mode(if mode == SslMode::Prefer {
                PgSslMode::Prefer
            } else {
                PgSslMode::Require
            });
            let client = client_config(tls)?;
            Manager::from_config(config, MakeRustlsConnect::new(client), manager_config)
        }
    };
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .build()
        .map_err(|e| Error::internal(format!("database pool: {e}")))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(tls: &DatabaseTls) -> Result<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("database_tls: {e}")))?;
    let config = match (&tls.sslmode, &tls.root_cert_file) {
        (SslMode::VerifyFull, Some(path)) => {
            let shown = path.display();
            let mut roots = RootCertStore::empty();
            let certificates = CertificateDer::pem_file_iter(path).map_err(|e| {
                Error::invalid_argument(format!("database_tls.root_cert_file: {shown}: {e}"))
            })?;
            for certificate in certificates {
                let certificate = certificate.map_err(|e| {
                    Error::invalid_argument(format!("database_tls.root_cert_file: {shown}: {e}"))
                })?;
                roots.add(certificate).map_err(|e| {
                    Error::invalid_argument(format!("database_tls.root_cert_file: {shown}: {e}"))
                })?;
            }
            if roots.is_empty() {
                return Err(Error::invalid_argument(format!(
                    "database_tls.root_cert_file: {shown} holds no certificate"
                )));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        (SslMode::VerifyFull, None) => {
            return Err(Error::invalid_argument(
                "database_tls.root_cert_file is required with sslmode = \"verify-full\"",
            ));
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider())))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// `prefer` and `require`: the link is encrypted and the handshake signature is checked
/// against the presented certificate, but the certificate itself is not (libpq's behaviour
/// without a root certificate). Only `verify-full` authenticates the server.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_certificate_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let tls = |root: &std::path::Path| DatabaseTls {
            sslmode: SslMode::VerifyFull,
            root_cert_file: Some(root.to_path_buf()),
        };
        let err = client_config(&tls(&empty)).unwrap_err();
        assert!(err.message.contains("holds no certificate"), "{err}");
        let err = client_config(&tls(&dir.path().join("missing.pem"))).unwrap_err();
        assert!(err.message.contains("root_cert_file"), "{err}");
        let prefer = DatabaseTls::default();
        client_config(&prefer).unwrap();
        pool("host=127.0.0.1 port=1 user=u dbname=d", &prefer).unwrap();
        assert!(pool("not a connection string ===", &prefer).is_err());
    }
}
