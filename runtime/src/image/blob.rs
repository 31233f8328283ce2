//! Content-addressed blobs: `blobs/sha256/<hex>`, written through a staging
//! file that is hashed, checked against the expected digest and renamed into
//! place, so a blob under its name always has that content.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::{ImageError, Result};

/// Checks that `digest` is `sha256:<64 lowercase hex>` and returns the hex part.
pub fn digest_hex(digest: &str) -> Result<&str> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| ImageError::InvalidDigest(digest.to_string()))?;
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ImageError::InvalidDigest(digest.to_string()));
    }
    Ok(hex)
}

/// The `sha256:<hex>` digest of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A reader that hashes what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Reads the rest of the stream (so the digest covers all of it) and
    /// returns `(digest, bytes read)`.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.count,
        ))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// The blob area of a store.
#[derive(Debug, Clone)]
pub struct Blobs {
    dir: PathBuf,
    tmp: PathBuf,
}

impl Blobs {
    /// Blobs under `dir` (…/blobs/sha256), staging files under `tmp`.
    pub fn new(dir: PathBuf, tmp: PathBuf) -> Self {
        Blobs { dir, tmp }
    }

    /// Where the blob with `digest` lives (whether or not it exists).
    pub fn path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.dir.join(digest_hex(digest)?))
    }

    /// Whether the blob is present.
    pub fn contains(&self, digest: &str) -> bool {
        self.path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    /// Reads a whole (small) blob, e.g. a manifest or config.
    pub fn read(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.path(digest)?;
        fs::read(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                ImageError::BlobMissing {
                    digest: digest.to_string(),
                    place: "the image store".to_string(),
                }
            } else {
                ImageError::io(format!("reading {}", path.display()))(e)
            }
        })
    }

    /// A new staging file (in the same filesystem as the blobs).
    pub fn staging_file(&self) -> Result<tempfile::NamedTempFile> {
        tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&self.tmp)
            .map_err(ImageError::io(format!(
                "creating a staging file in {}",
                self.tmp.display()
            )))
    }

    /// Hashes a finished staging file, checks it against `expected` (when
    /// given) and moves it into place. Returns the digest.
    pub fn commit(
        &self,
        staged: tempfile::NamedTempFile,
        expected: Option<&str>,
    ) -> Result<String> {
        if let Some(expected) = expected {
            digest_hex(expected)?;
        }
        let file = File::open(staged.path()).map_err(ImageError::io(format!(
            "reading {}",
            staged.path().display()
        )))?;
        let (actual, _) =
            HashingReader::new(BufReader::new(file))
                .finish()
                .map_err(ImageError::io(format!(
                    "hashing {}",
                    staged.path().display()
                )))?;
        if let Some(expected) = expected {
            if expected != actual {
                return Err(ImageError::DigestMismatch {
                    expected: expected.to_string(),
                    actual,
                });
            }
        }
        staged
            .as_file()
            .sync_all()
            .map_err(ImageError::io("syncing a blob"))?;
        let dest = self.path(&actual)?;
        if !dest.exists() {
            staged
                .persist(&dest)
                .map_err(|e| ImageError::io(format!("storing blob {}", dest.display()))(e.error))?;
        }
        Ok(actual)
    }

    /// Copies a stream into the store, verifying `expected` when given.
    pub fn write_from(&self, mut src: impl Read, expected: Option<&str>) -> Result<String> {
        if let Some(expected) = expected {
            if self.contains(expected) {
                return Ok(expected.to_string());
            }
        }
        let mut staged = self.staging_file()?;
        io::copy(&mut src, staged.as_file_mut()).map_err(ImageError::io("writing a blob"))?;
        self.commit(staged, expected)
    }

    /// Stores `bytes`, verifying `expected` when given.
    pub fn write_bytes(&self, bytes: &[u8], expected: Option<&str>) -> Result<String> {
        let actual = sha256_digest(bytes);
        if let Some(expected) = expected {
            digest_hex(expected)?;
            if expected != actual {
                return Err(ImageError::DigestMismatch {
                    expected: expected.to_string(),
                    actual,
                });
            }
        }
        let dest = self.path(&actual)?;
        if dest.exists() {
            return Ok(actual);
        }
        let mut staged = self.staging_file()?;
        staged
            .as_file_mut()
            .write_all(bytes)
            .map_err(ImageError::io("writing a blob"))?;
        self.commit(staged, Some(&actual))
    }

    /// Copies the blob `digest` from the file at `src`, verifying it.
    pub fn copy_file(&self, src: &Path, digest: &str) -> Result<String> {
        if self.contains(digest) {
            return Ok(digest.to_string());
        }
        let file = File::open(src).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                ImageError::BlobMissing {
                    digest: digest.to_string(),
                    place: src.parent().unwrap_or(src).display().to_string(),
                }
            } else {
                ImageError::io(format!("reading {}", src.display()))(e)
            }
        })?;
        self.write_from(BufReader::new(file), Some(digest))
    }
}
