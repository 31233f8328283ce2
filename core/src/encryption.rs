//! Encryption at rest of Secrets: what the registry writes for a Secret is
//! AES-256-GCM ciphertext (ring), with the store key as associated data so
//! that a value cannot be moved to another key. Stored values carry a
//! prefix naming the scheme; values without it are plain JSON (objects of
//! other kinds, and Secrets written before a key was configured, which are
//! encrypted on their next write).
//!
//! Keys: the control plane is given a key-encryption key (`orchd` derives
//! it from the cluster's join token, see ARCHITECTURE.md). Secrets are
//! sealed with the primary data key of a [`Keyring`] kept in the store at
//! [`KEYRING_KEY`], itself sealed with the key-encryption key, so every
//! master that holds the token reads the same data keys. Values sealed
//! with a data key say which one (`v2:<id>:`); values of clusters that
//! never rotated are sealed with the key-encryption key itself (`v1`).
//! Rotation adds a new primary data key, rewrites every Secret with it and
//! drops the keys no Secret uses any more (`Registry::rotate_secret_key`).

use std::collections::BTreeMap;
use std::sync::RwLock;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// What a value sealed with the key-encryption key starts with.
pub const PREFIX: &[u8] = b"orch:enc:aes256gcm:v1:";

/// What a value sealed with a data key starts with (then `<id>:`).
pub const PREFIX_V2: &[u8] = b"orch:enc:aes256gcm:v2:";

/// Where the keyring lives in the store.
pub const KEYRING_KEY: &str = "/orch/secrets/keyring";

/// A key for Secrets at rest.
pub struct SecretCipher {
    key: LessSafeKey,
}

impl std::fmt::Debug for SecretCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretCipher(<key>)")
    }
}

impl SecretCipher {
    /// A cipher with the 256-bit `key`.
    pub fn new(key: [u8; 32]) -> Self {
        SecretCipher {
            key: LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, &key).expect("a 32-byte key fits AES-256"),
            ),
        }
    }

    /// `plain` sealed for store key `store_key`: prefix, nonce, ciphertext
    /// and tag.
    pub fn seal(&self, store_key: &[u8], plain: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut data = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(store_key),
                &mut data,
            )
            .expect("sealing cannot fail for in-memory data");
        let mut out = Vec::with_capacity(PREFIX.len() + NONCE_LEN + data.len());
        out.extend_from_slice(PREFIX);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        out
    }

    /// Opens what [`seal`](Self::seal) made for `store_key`.
    pub fn open(&self, store_key: &[u8], sealed: &[u8]) -> Result<Vec<u8>, ApiError> {
        let body = sealed
            .strip_prefix(PREFIX)
            .ok_or_else(|| ApiError::internal("a stored value is not sealed"))?;
        self.open_body(store_key, body)
    }

    /// Seals `plain` as [`seal`](Self::seal) does, with `prefix` instead
    /// of [`PREFIX`].
    fn seal_with_prefix(&self, prefix: &[u8], store_key: &[u8], plain: &[u8]) -> Vec<u8> {
        let sealed = self.seal(store_key, plain);
        let mut out = prefix.to_vec();
        out.extend_from_slice(&sealed[PREFIX.len()..]);
        out
    }

    /// Opens nonce, ciphertext and tag.
    fn open_body(&self, store_key: &[u8], body: &[u8]) -> Result<Vec<u8>, ApiError> {
        if body.len() < NONCE_LEN {
            return Err(ApiError::internal("a sealed value is too short"));
        }
        let (nonce, data) = body.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| ApiError::internal("a sealed value has a bad nonce"))?;
        let mut data = data.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(store_key), &mut data)
            .map_err(|_| {
                ApiError::internal(format!(
                    "the stored value of {} cannot be decrypted with this master's key",
                    String::from_utf8_lossy(store_key)
                ))
            })?;
        Ok(plain.to_vec())
    }
}

/// Whether a stored value is sealed.
pub fn is_sealed(value: &[u8]) -> bool {
    value.starts_with(PREFIX) || value.starts_with(PREFIX_V2)
}

/// The data key a sealed value was sealed with (`None`: the
/// key-encryption key, or not sealed).
pub fn key_id_of(value: &[u8]) -> Option<&str> {
    let rest = value.strip_prefix(PREFIX_V2)?;
    let end = rest.iter().position(|b| *b == b':')?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// The data keys of Secrets: ids to 256-bit keys, and the primary one new
/// values are sealed with.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Keyring {
    /// The key new values are sealed with.
    pub primary: String,
    /// Every key, by id (base64).
    pub keys: BTreeMap<String, String>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("primary", &self.primary)
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Keyring {
    /// This keyring with a new random key, made primary; returns its id.
    pub fn add_primary(&mut self) -> String {
        use base64::Engine;
        let id = format!("k{}", hex_id());
        let key: [u8; 32] = rand::random();
        self.keys.insert(
            id.clone(),
            base64::engine::general_purpose::STANDARD.encode(key),
        );
        self.primary = id.clone();
        id
    }

    fn cipher(&self, id: &str) -> Option<SecretCipher> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(self.keys.get(id)?)
            .ok()?;
        Some(SecretCipher::new(bytes.try_into().ok()?))
    }
}

fn hex_id() -> String {
    let bytes: [u8; 6] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The keys of one master: the key-encryption key and the keyring as last
/// read from the store (with the revision it was read at).
pub struct SecretKeys {
    kek: SecretCipher,
    ring: RwLock<(Option<Keyring>, i64)>,
}

impl std::fmt::Debug for SecretKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKeys(<keys>)")
    }
}

impl SecretKeys {
    /// Keys with key-encryption key `kek` and no keyring loaded yet.
    pub fn new(kek: [u8; 32]) -> Self {
        SecretKeys {
            kek: SecretCipher::new(kek),
            ring: RwLock::new((None, 0)),
        }
    }

    /// The keyring loaded and the mod revision of its store key (0: none).
    pub fn ring(&self) -> (Option<Keyring>, i64) {
        self.ring.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Takes the stored keyring value (`None`: there is none) at mod
    /// revision `revision`, unless a newer one is loaded.
    pub fn load(&self, value: Option<&[u8]>, revision: i64) -> Result<(), ApiError> {
        let ring = match value {
            Some(v) => {
                let plain = self.kek.open(KEYRING_KEY.as_bytes(), v)?;
                Some(serde_json::from_slice::<Keyring>(&plain).map_err(|e| {
                    ApiError::internal(format!("the stored Secrets keyring is not valid: {e}"))
                })?)
            }
            None => None,
        };
        let mut current = self.ring.write().unwrap_or_else(|e| e.into_inner());
        if revision >= current.1 {
            *current = (ring, revision);
        }
        Ok(())
    }

    /// The stored value of `ring`: sealed with the key-encryption key.
    pub fn seal_ring(&self, ring: &Keyring) -> Vec<u8> {
        let plain = serde_json::to_vec(ring).expect("a keyring serializes");
        self.kek.seal(KEYRING_KEY.as_bytes(), &plain)
    }

    /// `plain` sealed for `store_key` with the primary data key (the
    /// key-encryption key if there is no keyring), and the keyring
    /// revision that decided it (a write must fail if the keyring changed
    /// since).
    pub fn seal(&self, store_key: &[u8], plain: &[u8]) -> (Vec<u8>, i64) {
        let (ring, revision) = self.ring();
        match ring
            .as_ref()
            .and_then(|r| Some((r.primary.clone(), r.cipher(&r.primary)?)))
        {
            Some((id, cipher)) => {
                let mut prefix = PREFIX_V2.to_vec();
                prefix.extend_from_slice(id.as_bytes());
                prefix.push(b':');
                (cipher.seal_with_prefix(&prefix, store_key, plain), revision)
            }
            None => (self.kek.seal(store_key, plain), revision),
        }
    }

    /// Opens a value sealed by [`seal`](Self::seal) (with any key of the
    /// keyring, or the key-encryption key).
    pub fn open(&self, store_key: &[u8], sealed: &[u8]) -> Result<Vec<u8>, ApiError> {
        let Some(id) = key_id_of(sealed) else {
            return self.kek.open(store_key, sealed);
        };
        let cipher = self.ring().0.and_then(|r| r.cipher(id)).ok_or_else(|| {
            ApiError::internal(format!(
                "{} is sealed with key {id}, which this master's keyring does not hold",
                String::from_utf8_lossy(store_key)
            ))
        })?;
        let body = &sealed[PREFIX_V2.len() + id.len() + 1..];
        cipher.open_body(store_key, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_place() {
        let cipher = SecretCipher::new([7; 32]);
        let sealed = cipher.seal(b"/registry/secrets/default/a", b"{\"data\":1}");
        assert!(is_sealed(&sealed));
        assert!(
            !sealed.windows(b"data".len()).any(|w| w == b"data"),
            "the plain text does not show"
        );
        assert_eq!(
            cipher
                .open(b"/registry/secrets/default/a", &sealed)
                .unwrap(),
            b"{\"data\":1}"
        );
        assert!(cipher
            .open(b"/registry/secrets/default/b", &sealed)
            .is_err());
        assert!(SecretCipher::new([8; 32])
            .open(b"/registry/secrets/default/a", &sealed)
            .is_err());
        assert_ne!(
            sealed,
            cipher.seal(b"/registry/secrets/default/a", b"{\"data\":1}"),
            "a fresh nonce each time"
        );
    }

    #[test]
    fn a_keyring_seals_with_its_primary_and_opens_every_key_it_holds() {
        let keys = SecretKeys::new([1; 32]);
        let (legacy, rev) = keys.seal(b"/s/a", b"one");
        assert_eq!(rev, 0);
        assert_eq!(key_id_of(&legacy), None);
        let mut ring = Keyring::default();
        let first = ring.add_primary();
        keys.load(Some(&keys.seal_ring(&ring)), 5).unwrap();
        let (sealed, rev) = keys.seal(b"/s/a", b"two");
        assert_eq!(rev, 5);
        assert_eq!(key_id_of(&sealed), Some(first.as_str()));
        let second = ring.add_primary();
        keys.load(Some(&keys.seal_ring(&ring)), 9).unwrap();
        let (newer, _) = keys.seal(b"/s/a", b"three");
        assert_eq!(key_id_of(&newer), Some(second.as_str()));
        assert_eq!(keys.open(b"/s/a", &legacy).unwrap(), b"one");
        assert_eq!(keys.open(b"/s/a", &sealed).unwrap(), b"two");
        assert_eq!(keys.open(b"/s/a", &newer).unwrap(), b"three");
        assert!(keys.open(b"/s/b", &newer).is_err(), "bound to its place");
        // An older keyring does not replace a newer one.
        keys.load(None, 7).unwrap();
        assert_eq!(keys.ring().1, 9);
        ring.keys.remove(&first);
        keys.load(Some(&keys.seal_ring(&ring)), 10).unwrap();
        assert!(
            keys.open(b"/s/a", &sealed).is_err(),
            "a dropped key opens nothing"
        );
    }
}
