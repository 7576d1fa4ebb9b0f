pub mod bench;
pub mod data;
pub mod export;
pub mod generate;
pub mod model;
pub mod train;
pub mod up;
pub mod wallet;

/// Client TLS flags for the commands that call services: a certificate and key for mutual
/// TLS, and the CA to trust. Without any, `http://` URLs are plaintext.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    #[arg(long)]
    pub tls_ca: Option<std::path::PathBuf>,
}

impl TlsArgs {
    /// The TLS files for calling `urls`: plaintext only when no flag is given and every URL
    /// is `http://`.
    pub fn files(&self, urls: &[&str]) -> neuroshard_runtime::tls::TlsFiles {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (None, None, None) if urls.iter().all(|u| u.starts_with("http://")) => {
                neuroshard_runtime::tls::TlsFiles::insecure_plaintext()
            }
            (cert, key, ca) => neuroshard_runtime::tls::TlsFiles {
                cert_file: cert.clone(),
                key_file: key.clone(),
                ca_file: ca.clone(),
                insecure_plaintext: false,
            },
        }
    }
}
