//! The local swarm's certificates: a CA made for one run and a certificate per process, so
//! every gRPC link on the machine is mutual TLS by default. The CA's private key only lives in
//! memory while the certificates are issued, and is then dropped: nothing on disk can issue
//! another certificate this swarm would trust. Each process gets its own pair (a worker's
//! sessions belong to the certificate that opened them, so one process cannot pose as
//! another), with `127.0.0.1` and `localhost` as names.

use std::path::{Path, PathBuf};

use neuroshard_runtime::tls::TlsFiles;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

use crate::service::write_private;
use crate::{LocalError, Result};

/// The certificates of one run, under one directory.
#[derive(Debug, Clone)]
pub struct LocalPki {
    dir: PathBuf,
    ca_file: PathBuf,
}

fn tls_error(what: &str, e: impl std::fmt::Display) -> LocalError {
    LocalError(format!(
        "issuing the local swarm's certificates ({what}): {e}"
    ))
}

impl LocalPki {
    /// A new CA in `dir` (created if missing; certificates of an earlier run are replaced)
    /// and one certificate per name in `names`.
    pub fn issue(dir: &Path, names: &[&str]) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| LocalError(format!("creating {}: {e}", dir.display())))?;
        let ca_key = KeyPair::generate().map_err(|e| tls_error("CA key", e))?;
        let mut ca_params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| tls_error("CA", e))?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "NeuroShard local swarm CA");
        let ca = ca_params
            .self_signed(&ca_key)
            .map_err(|e| tls_error("CA", e))?;
        let ca_file = dir.join("ca.crt");
        write_file(&ca_file, ca.pem().as_bytes())?;
        for name in names {
            let key = KeyPair::generate().map_err(|e| tls_error(name, e))?;
            let mut params =
                CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                    .map_err(|e| tls_error(name, e))?;
            params.distinguished_name.push(DnType::CommonName, *name);
            let cert = params
                .signed_by(&key, &ca, &ca_key)
                .map_err(|e| tls_error(name, e))?;
            write_file(&dir.join(format!("{name}.crt")), cert.pem().as_bytes())?;
            write_private(&dir.join(format!("{name}.key")), &key.serialize_pem())?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            ca_file,
        })
    }

    /// The files process `name` serves and dials with.
    pub fn files(&self, name: &str) -> TlsFiles {
        TlsFiles {
            cert_file: Some(self.dir.join(format!("{name}.crt"))),
            key_file: Some(self.dir.join(format!("{name}.key"))),
            ca_file: Some(self.ca_file.clone()),
            insecure_plaintext: false,
        }
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| LocalError(format!("writing {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_process_gets_its_own_pair_under_one_ca_and_keys_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let pki = LocalPki::issue(dir.path(), &["registry", "worker-0"]).unwrap();
        let registry = pki.files("registry");
        let worker = pki.files("worker-0");
        assert_eq!(registry.ca_file, worker.ca_file);
        let cert = |f: &TlsFiles| std::fs::read_to_string(f.cert_file.as_ref().unwrap()).unwrap();
        assert!(cert(&registry).starts_with("-----BEGIN CERTIFICATE-----"));
        assert_ne!(cert(&registry), cert(&worker));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(worker.key_file.as_ref().unwrap())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "a private key readable by others");
        }
        // The CA's key is not kept.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with("ca.") && n.ends_with(".key")),
            "{names:?}"
        );
    }
}
