//! TLS for gRPC links (rustls): certificates and keys from PEM files. A server with
//! `cert_file` + `key_file` serves TLS; with `ca_file` too, it requires client certificates
//! signed by that CA (mutual TLS). A client with `ca_file` verifies the server against it and,
//! with `cert_file` + `key_file`, presents its own certificate. Clusters turn this on through
//! the chart; without files, links are plaintext (the local swarm on loopback).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use neuroshard_common::error::{Error, Result};

/// PEM files for one process's TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsFiles {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    // The error names the file, never its content (it may be a private key).
    std::fs::read(path)
        .map_err(|e| Error::invalid_argument(format!("tls.{what}: {}: {e}", path.display())))
}

impl TlsFiles {
    fn identity(&self) -> Result<Option<Identity>> {
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Ok(Some(Identity::from_pem(
                read(cert, "cert_file")?,
                read(key, "key_file")?,
            ))),
            (None, None) => Ok(None),
            _ => Err(Error::invalid_argument(
                "tls: cert_file and key_file must be given together",
            )),
        }
    }

    fn ca(&self) -> Result<Option<Certificate>> {
        self.ca_file
            .as_deref()
            .map(|p| read(p, "ca_file").map(Certificate::from_pem))
            .transpose()
    }

    /// Server settings, or `None` for plaintext.
    pub fn server(&self) -> Result<Option<ServerTlsConfig>> {
        let Some(identity) = self.identity()? else {
            if self.ca_file.is_some() {
                return Err(Error::invalid_argument(
                    "tls: ca_file without cert_file and key_file cannot serve TLS",
                ));
            }
            return Ok(None);
        };
        let mut config = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = self.ca()? {
            config = config.client_ca_root(ca);
        }
        Ok(Some(config))
    }

    /// Client settings for `https://` peers, or `None` when no CA is configured.
    pub fn client(&self) -> Result<Option<ClientTlsConfig>> {
        let Some(ca) = self.ca()? else {
            return Ok(None);
        };
        let mut config = ClientTlsConfig::new().ca_certificate(ca);
        if let Some(identity) = self.identity()? {
            config = config.identity(identity);
        }
        Ok(Some(config))
    }

    /// A channel to `url`, with TLS when the URL is `https://`.
    pub async fn connect(&self, url: &str) -> Result<tonic::transport::Channel> {
        let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
            .map_err(|e| Error::invalid_argument(format!("endpoint `{url}`: {e}")))?;
        if url.starts_with("https://") {
            let tls = self.client()?.ok_or_else(|| {
                Error::invalid_argument(format!(
                    "endpoint `{url}` is https but tls.ca_file is not set"
                ))
            })?;
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| Error::invalid_argument(format!("tls for `{url}`: {e}")))?;
        }
        endpoint.connect().await.map_err(|e| {
            Error::new(
                neuroshard_common::ErrorKind::Unavailable,
                format!("connecting to {url}: {e}"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_configured_tls_is_refused() {
        let only_cert = TlsFiles {
            cert_file: Some("c.pem".into()),
            ..TlsFiles::default()
        };
        assert!(
            only_cert
                .server()
                .unwrap_err()
                .to_string()
                .contains("together")
        );
        let only_ca = TlsFiles {
            ca_file: Some("ca.pem".into()),
            ..TlsFiles::default()
        };
        assert!(
            only_ca
                .server()
                .unwrap_err()
                .to_string()
                .contains("cannot serve")
        );
        assert!(TlsFiles::default().server().unwrap().is_none());
        let missing = TlsFiles {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsFiles::default()
        };
        assert!(
            missing
                .client()
                .unwrap_err()
                .to_string()
                .contains("tls.ca_file: /nonexistent/ca.pem")
        );
    }
}
