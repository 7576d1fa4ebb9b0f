//! Node and service identity: a secp256k1 key kept in a file readable only by its owner.
//! `node_id` = hex of the first 20 bytes of SHA-256 of the compressed public key. Keys are
//! generated from the OS's randomness, never derived from a string, and never printed.

use std::path::Path;

use k256::ecdsa::{SigningKey, VerifyingKey};
use k256::elliptic_curve::rand_core::OsRng;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Length of a SEC1 compressed public key.
pub const PUBLIC_KEY_LEN: usize = 33;

/// A private key with its public identity. `Debug` shows only the node id.
pub struct NodeKey {
    signing: SigningKey,
    node_id: String,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl NodeKey {
    /// A fresh key from the operating system's randomness.
    pub fn generate() -> Self {
        Self::from_signing(SigningKey::random(&mut OsRng))
    }

    fn from_signing(signing: SigningKey) -> Self {
        let node_id = node_id_of(&signing.verifying_key().to_encoded_point(true).to_bytes());
        Self { signing, node_id }
    }

    /// Loads the key at `path`, or creates it (mode 0600) if the file does not exist.
    /// Refuses a key file that others can read.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        match std::fs::metadata(path) {
            Ok(_) => Self::load(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                key.save(path)?;
                Ok(key)
            }
            Err(e) => Err(Error::internal(format!("key file {}: {e}", path.display()))),
        }
    }

    /// Loads a key file (hex of the 32-byte secret), which must not be readable by others.
    pub fn load(path: &Path) -> Result<Self> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|e| Error::internal(format!("key file {}: {e}", path.display())))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(Error::failed_precondition(format!(
                    "key file {} has mode {:o}; it must be readable by its owner only (chmod 600)",
                    path.display(),
                    mode & 0o777
                )));
            }
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::internal(format!("key file {}: {e}", path.display())))?;
        Self::from_file_contents(&text).map_err(|e| {
            Error::new(
                e.kind,
                format!("key file {}: {}", path.display(), e.message),
            )
        })
    }

    /// A key from what a key file holds (hex of the 32-byte secret), wherever it was kept
    /// (a Kubernetes Secret, say). The error never includes the text.
    pub fn from_file_contents(text: &str) -> Result<Self> {
        let bytes =
            hex::decode(text.trim()).map_err(|_| Error::invalid_argument("the key is not hex"))?;
        let signing = SigningKey::from_slice(&bytes)
            .map_err(|_| Error::invalid_argument("the key is not a valid secp256k1 key"))?;
        Ok(Self::from_signing(signing))
    }

    /// What a key file holds (hex of the secret), to keep it somewhere else than a file (a
    /// Kubernetes Secret). It is the private key: never log or print it.
    pub fn to_file_contents(&self) -> String {
        hex::encode(self.signing.to_bytes())
    }

    /// Writes the key to `path` with mode 0600, atomically; refuses to overwrite.
    pub fn save(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        let io = |e: std::io::Error| Error::internal(format!("key file {}: {e}", path.display()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(io)?;
        file.write_all(self.to_file_contents().as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(io)
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// SEC1 compressed public key (33 bytes).
    pub fn public_key(&self) -> [u8; PUBLIC_KEY_LEN] {
        let point = self.signing.verifying_key().to_encoded_point(true);
        let mut out = [0u8; PUBLIC_KEY_LEN];
        out.copy_from_slice(point.as_bytes());
        out
    }

    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.signing
    }
}

/// Node id of a compressed public key: hex(SHA-256(key)[..20]).
pub fn node_id_of(compressed_public_key: &[u8]) -> String {
    hex::encode(&Sha256::digest(compressed_public_key)[..20])
}

/// Whether `id` has the form of a node id (also a wallet address): 40 lowercase hex digits,
/// as [`node_id_of`] writes it.
pub fn is_node_id(id: &str) -> bool {
    id.len() == 40
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses a SEC1 compressed public key.
pub fn parse_public_key(bytes: &[u8]) -> Result<VerifyingKey> {
    if bytes.len() != PUBLIC_KEY_LEN {
        return Err(Error::unauthenticated(format!(
            "signer: {} bytes, expected a {PUBLIC_KEY_LEN}-byte compressed public key",
            bytes.len()
        )));
    }
    VerifyingKey::from_sec1_bytes(bytes)
        .map_err(|_| Error::unauthenticated("signer: not a valid secp256k1 public key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_have_one_form() {
        let key = NodeKey::generate();
        assert!(is_node_id(key.node_id()));
        for bad in [
            "",
            "AB".repeat(20).as_str(),
            &"a".repeat(39),
            &"g".repeat(40),
            &"a".repeat(41),
        ] {
            assert!(!is_node_id(bad), "{bad}");
        }
    }

    #[test]
    fn keys_round_trip_through_0600_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let key = NodeKey::load_or_create(&path).unwrap();
        let again = NodeKey::load_or_create(&path).unwrap();
        assert_eq!(key.node_id(), again.node_id());
        assert_eq!(key.node_id().len(), 40);
        assert_eq!(key.node_id(), node_id_of(&key.public_key()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert!(key.save(&path).is_err(), "never overwrites a key");
        assert_ne!(NodeKey::generate().node_id(), key.node_id());
    }

    #[cfg(unix)]
    #[test]
    fn refuses_readable_key_files_without_leaking_them() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let key = NodeKey::load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = NodeKey::load(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        let secret = std::fs::read_to_string(&path).unwrap();
        assert!(!err.contains(secret.trim()));
        assert!(!format!("{key:?}").contains(secret.trim()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "zz-not-hex").unwrap();
        assert!(
            NodeKey::load(&path)
                .unwrap_err()
                .to_string()
                .contains("not hex")
        );
    }
}
