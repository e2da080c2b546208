//! Recoverable keys (DESIGN §3): a copy of a key's plaintext sealed with AES-256-GCM under
//! its workspace's data key, which is itself stored sealed by the master key — a file outside
//! the database (`{data_dir}/master.key`, mode 0600, the pepper file's format). The database
//! alone opens nothing; each seal is bound to what it belongs to (the key id, the workspace
//! id, as associated data), so no copy can be moved to another key.

use crate::digest::Peppers;
use crate::secret::KeyMaterial;
use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit as _, Nonce};
use base64::Engine as _;
use rand::RngCore as _;
use std::fmt;
use std::io;
use std::path::Path;
use zeroize::Zeroizing;

/// What a sealed value starts with: the format, so another can follow.
const FORMAT: &str = "v1:";
const NONCE_LEN: usize = 12;

/// A seal that does not open: the wrong master key, or a value altered or moved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a sealed value does not open (wrong master key, or altered)")]
pub struct Unsealable;

/// The key that seals every workspace's data key. Never in the database.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// Reads the master key file, or creates it (mode 0600) with a fresh key. A file
    /// readable by group or others is refused. Its newest `vN:` line is the key.
    pub fn load_or_create(path: &Path) -> io::Result<Self> {
        let file = Peppers::load_or_create(path)?;
        file.current_secret().map(Self).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: no key in it", path.display()),
            )
        })
    }

    /// A master key of these bytes (for tests and tools).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// A new random data key for `workspace_id`, and it sealed for storing.
    pub fn new_data_key(&self, workspace_id: &str) -> (DataKey, String) {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        let sealed = seal(&self.0, &data_key_aad(workspace_id), bytes.as_ref());
        (DataKey(bytes), sealed)
    }

    /// The data key `sealed` holds for `workspace_id`.
    pub fn open_data_key(&self, workspace_id: &str, sealed: &str) -> Result<DataKey, Unsealable> {
        let bytes = open(&self.0, &data_key_aad(workspace_id), sealed)?;
        let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| Unsealable)?;
        Ok(DataKey(Zeroizing::new(bytes)))
    }
}

/// One workspace's key for its recoverable keys.
pub struct DataKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

impl DataKey {
    /// `key`'s plaintext sealed for the key `key_id`.
    pub fn seal_key(&self, key_id: &str, key: &KeyMaterial) -> String {
        seal(&self.0, &key_aad(key_id), key.expose().as_bytes())
    }

    /// The plaintext of the key `key_id` from its seal.
    pub fn open_key(&self, key_id: &str, sealed: &str) -> Result<KeyMaterial, Unsealable> {
        let bytes = open(&self.0, &key_aad(key_id), sealed)?;
        let text = String::from_utf8(bytes.to_vec()).map_err(|_| Unsealable)?;
        Ok(KeyMaterial::new(text))
    }
}

fn data_key_aad(workspace_id: &str) -> Vec<u8> {
    format!("keyward data key|{workspace_id}").into_bytes()
}

fn key_aad(key_id: &str) -> Vec<u8> {
    format!("keyward key|{key_id}").into_bytes()
}

/// `v1:` + base64(nonce ‖ AES-256-GCM(key, plaintext, aad)), with a random 96-bit nonce.
fn seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> String {
    let cipher = Aes256Gcm::new(key.into());
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    // Encryption fails only for a plaintext over 64 GiB.
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .unwrap_or_default();
    let mut bytes = Vec::with_capacity(NONCE_LEN + sealed.len());
    bytes.extend_from_slice(&nonce);
    bytes.extend_from_slice(&sealed);
    format!(
        "{FORMAT}{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

fn open(key: &[u8; 32], aad: &[u8], sealed: &str) -> Result<Zeroizing<Vec<u8>>, Unsealable> {
    let body = sealed.strip_prefix(FORMAT).ok_or(Unsealable)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| Unsealable)?;
    if bytes.len() < NONCE_LEN + 16 {
        return Err(Unsealable);
    }
    let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
    let cipher = Aes256Gcm::new(key.into());
    cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| Unsealable)
}

/// Where sealed data keys and key copies are kept (a supertrait of [`crate::Store`]).
#[async_trait::async_trait]
pub trait VaultStore: Send + Sync + 'static {
    /// The workspace's sealed data key, if it has one.
    async fn data_key(&self, workspace_id: &str) -> crate::store::StoreResult<Option<String>>;
    /// Stores `sealed` as the workspace's data key unless it has one already; returns the
    /// one it has after (the first writer's, when two race).
    async fn ensure_data_key(
        &self,
        workspace_id: &str,
        sealed: &str,
        at: time::OffsetDateTime,
    ) -> crate::store::StoreResult<String>;
    async fn insert_key_copy(
        &self,
        workspace_id: &str,
        key_id: &str,
        sealed: &str,
    ) -> crate::store::StoreResult<()>;
    async fn key_copy(
        &self,
        workspace_id: &str,
        key_id: &str,
    ) -> crate::store::StoreResult<Option<String>>;
    async fn delete_key_copy(
        &self,
        workspace_id: &str,
        key_id: &str,
    ) -> crate::store::StoreResult<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_opens_only_with_its_data_key_its_id_and_the_master_key() {
        let master = MasterKey::from_bytes([7; 32]);
        let (data, sealed_data) = master.new_data_key("ws_1");
        let key = crate::keyfmt::generate("orders");
        let sealed = data.seal_key("key_1", &key);
        assert!(sealed.starts_with("v1:"));
        assert!(!sealed.contains(key.expose()));
        assert_eq!(
            data.open_key("key_1", &sealed).expect("opens").expose(),
            key.expose()
        );
        // Two seals of one key differ (random nonces).
        assert_ne!(sealed, data.seal_key("key_1", &key));

        // Moved to another key, or altered: refused.
        assert_eq!(data.open_key("key_2", &sealed).map(|_| ()), Err(Unsealable));
        let mut altered = sealed.clone().into_bytes();
        let at = altered.len() - 5;
        altered[at] = if altered[at] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).expect("ascii");
        assert_eq!(
            data.open_key("key_1", &altered).map(|_| ()),
            Err(Unsealable)
        );
        assert_eq!(
            data.open_key("key_1", "v1:AAAA").map(|_| ()),
            Err(Unsealable)
        );
        assert_eq!(
            data.open_key("key_1", "garbage").map(|_| ()),
            Err(Unsealable)
        );

        // The data key opens with the master key, for its own workspace only.
        let again = master.open_data_key("ws_1", &sealed_data).expect("opens");
        assert_eq!(
            again.open_key("key_1", &sealed).expect("opens").expose(),
            key.expose()
        );
        assert!(master.open_data_key("ws_2", &sealed_data).is_err());
        assert!(MasterKey::from_bytes([8; 32])
            .open_data_key("ws_1", &sealed_data)
            .is_err());
        assert_eq!(
            format!("{master:?} {again:?}"),
            "MasterKey(<redacted>) DataKey(<redacted>)"
        );
    }

    #[test]
    fn the_master_key_file_is_created_0600_and_read_back() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("master.key");
        let first = MasterKey::load_or_create(&path).expect("created");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = MasterKey::load_or_create(&path).expect("read");
        let (data, sealed) = first.new_data_key("ws");
        let key = crate::keyfmt::generate("kw");
        let copy = data.seal_key("k", &key);
        let reopened = second.open_data_key("ws", &sealed).expect("the same key");
        assert_eq!(
            reopened.open_key("k", &copy).expect("opens").expose(),
            key.expose()
        );
    }
}
