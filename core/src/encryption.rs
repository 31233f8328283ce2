//! Encryption at rest of Secrets: what the registry writes for a Secret is
//! AES-256-GCM ciphertext (ring), with the store key as associated data so
//! that a value cannot be moved to another key. Stored values carry a
//! prefix naming the scheme; values without it are plain JSON (objects of
//! other kinds, and Secrets written before a key was configured, which are
//! encrypted on their next write).
//!
//! The key comes from whoever runs the control plane (`orchd` derives it
//! from the cluster's join token, see ARCHITECTURE.md).

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

use crate::error::ApiError;

/// What an encrypted value starts with.
pub const PREFIX: &[u8] = b"orch:enc:aes256gcm:v1:";

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
            .filter(|b| b.len() >= NONCE_LEN)
            .ok_or_else(|| ApiError::internal("a stored value is not sealed"))?;
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
    value.starts_with(PREFIX)
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
}
