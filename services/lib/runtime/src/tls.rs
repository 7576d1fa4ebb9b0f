//! TLS for gRPC links (rustls): certificates and keys from PEM files. A server with
//! `cert_file` + `key_file` serves TLS; with `ca_file` too, it requires client certificates
//! signed by that CA (mutual TLS). A client with `ca_file` verifies the server against it and,
//! with `cert_file` + `key_file`, presents its own certificate.
//!
//! Mutual TLS is the default: a service refuses to start without all three files unless
//! `insecure_plaintext = true` says, by name, that its gRPC may run unencrypted and
//! unauthenticated (and then it warns at start). Nobody ends up on plaintext by leaving a
//! section out.

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
    /// Run gRPC without TLS. Off by default; with it on, no file may be set.
    pub insecure_plaintext: bool,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    // The error names the file, never its content (it may be a private key).
    std::fs::read(path)
        .map_err(|e| Error::invalid_argument(format!("tls.{what}: {}: {e}", path.display())))
}

impl TlsFiles {
    /// Plaintext, asked for by name (tests and `--insecure-plaintext` swarms on loopback).
    pub fn insecure_plaintext() -> Self {
        Self {
            insecure_plaintext: true,
            ..Self::default()
        }
    }

    /// Mutual TLS with all three files, or plaintext asked for by name: nothing in between.
    /// Checks presence only; the files are read when the service starts serving.
    pub fn validate(&self) -> Result<()> {
        let set: Vec<&str> = [
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
            ("ca_file", &self.ca_file),
        ]
        .into_iter()
        .filter_map(|(name, file)| file.as_ref().map(|_| name))
        .collect();
        if self.insecure_plaintext {
            if !set.is_empty() {
                return Err(Error::invalid_argument(format!(
                    "tls.insecure_plaintext = true and tls.{} set: choose mutual TLS or plaintext",
                    set.join(", tls.")
                )));
            }
            return Ok(());
        }
        if set.len() < 3 {
            return Err(Error::invalid_argument(
                "tls: gRPC is mutual TLS by default, which needs tls.cert_file, tls.key_file and tls.ca_file; set them, or set tls.insecure_plaintext = true to run unencrypted and unauthenticated",
            ));
        }
        Ok(())
    }

    /// `url` (the config field `field`) speaks what this config does: `https://` under mutual
    /// TLS, `http://` with `insecure_plaintext`.
    pub fn check_scheme(&self, field: &str, url: &str) -> Result<()> {
        let scheme = if self.insecure_plaintext {
            "http://"
        } else {
            "https://"
        };
        if url.starts_with(scheme) {
            return Ok(());
        }
        Err(Error::invalid_argument(format!(
            "{field} ({url}) must start with {scheme} when tls.insecure_plaintext is {}",
            self.insecure_plaintext
        )))
    }

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

    /// An endpoint for `url`, with TLS when the URL is `https://` (not yet connected: a
    /// caller may connect it lazily).
    pub fn endpoint(&self, url: &str) -> Result<tonic::transport::Endpoint> {
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
        Ok(endpoint)
    }

    /// A channel to `url`, with TLS when the URL is `https://`.
    pub async fn connect(&self, url: &str) -> Result<tonic::transport::Channel> {
        self.endpoint(url)?.connect().await.map_err(|e| {
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
        assert!(TlsFiles::insecure_plaintext().server().unwrap().is_none());
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

    #[test]
    fn mutual_tls_unless_plaintext_is_asked_for_by_name() {
        let err = TlsFiles::default().validate().unwrap_err().to_string();
        assert!(err.contains("tls.insecure_plaintext = true"), "{err}");
        let server_only = TlsFiles {
            cert_file: Some("c.pem".into()),
            key_file: Some("k.pem".into()),
            ..TlsFiles::default()
        };
        assert!(
            server_only.validate().is_err(),
            "TLS without client certificates"
        );
        let mutual = TlsFiles {
            ca_file: Some("ca.pem".into()),
            ..server_only
        };
        mutual.validate().unwrap();
        TlsFiles::insecure_plaintext().validate().unwrap();
        let both = TlsFiles {
            insecure_plaintext: true,
            ..mutual
        };
        let err = both.validate().unwrap_err().to_string();
        assert!(
            err.contains("tls.cert_file, tls.key_file, tls.ca_file set"),
            "{err}"
        );
    }
}
