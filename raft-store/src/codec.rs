//! Binary encoding used on disk and on the wire: bincode 2 over serde, with
//! big-endian fixed-width integers for keys so byte order is numeric order.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::StoreError;

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
}

/// Encodes a value with bincode.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Encoding into a Vec cannot fail for our types (no maps with non-string
    // keys that serde refuses, no I/O).
    bincode::serde::encode_to_vec(value, config()).expect("bincode encoding into a Vec")
}

/// Decodes a value with bincode; `context` names what was decoded for the error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], context: &str) -> Result<T, StoreError> {
    let (value, read) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| StoreError::corrupt(context, e))?;
    if read != bytes.len() {
        return Err(StoreError::corrupt(
            context,
            format!("{} trailing bytes", bytes.len() - read),
        ));
    }
    Ok(value)
}

/// A u64 as 8 big-endian bytes.
pub fn u64_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// Reads an 8-byte big-endian u64.
pub fn read_u64_key(bytes: &[u8], context: &str) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::corrupt(context, format!("key of {} bytes", bytes.len())))?;
    Ok(u64::from_be_bytes(arr))
}
