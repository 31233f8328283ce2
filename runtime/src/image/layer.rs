//! Unpacking one layer into its own directory, in the form overlayfs reads as
//! a lower layer: an AUFS-style whiteout file `.wh.NAME` becomes a character
//! device 0/0 named `NAME`, and an opaque marker `DIR/.wh..wh..opq` becomes the
//! xattr `trusted.overlay.opaque=y` on `DIR`.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use flate2::read::MultiGzDecoder;
use rustix::fs::{FileType, Mode, XattrFlags, CWD};

use super::blob::HashingReader;
use super::error::{ImageError, Result};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The xattr overlayfs reads to mark a directory opaque.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Unpacks the layer blob at `blob` (plain or gzip tar) into `dest` (an
/// existing, empty directory) and returns the digest of the uncompressed tar
/// (the layer's diff id), for the caller to check against the image config.
pub fn unpack(blob: &Path, dest: &Path, diff_id: &str) -> Result<String> {
    let layer_err = |reason: String| ImageError::Layer {
        diff_id: diff_id.to_string(),
        reason,
    };
    let file =
        File::open(blob).map_err(|e| layer_err(format!("opening {}: {e}", blob.display())))?;
    let mut buffered = BufReader::with_capacity(256 * 1024, file);
    let head = buffered
        .fill_buf()
        .map_err(|e| layer_err(format!("reading {}: {e}", blob.display())))?;
    let reader: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(MultiGzDecoder::new(buffered))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(ImageError::Unsupported(format!(
            "layer {diff_id} is zstd-compressed; only plain and gzip layers are supported"
        )));
    } else {
        Box::new(buffered)
    };
    let mut archive = tar::Archive::new(HashingReader::new(reader));
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);

    let entries = archive
        .entries()
        .map_err(|e| layer_err(format!("reading the tar stream: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| layer_err(format!("reading the tar stream: {e}")))?;
        let raw = entry
            .path()
            .map_err(|e| layer_err(format!("bad entry name: {e}")))?
            .into_owned();
        let rel = clean_path(&raw)
            .ok_or_else(|| layer_err(format!("entry {} escapes the layer root", raw.display())))?;
        let Some(name) = rel.file_name().map(|n| n.as_bytes().to_vec()) else {
            // The root directory itself: its attributes are not applied.
            continue;
        };
        if name == OPAQUE_MARKER.as_bytes() {
            let dir = dest.join(rel.parent().unwrap_or(Path::new("")));
            ensure_dirs(dest, rel.parent().unwrap_or(Path::new(""))).map_err(|reason| {
                layer_err(format!("opaque marker {}: {reason}", raw.display()))
            })?;
            rustix::fs::lsetxattr(&dir, OPAQUE_XATTR, b"y", XattrFlags::empty())
                .map_err(|e| layer_err(format!("marking {} opaque: {e}", dir.display())))?;
        } else if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if hidden.is_empty() || hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                return Err(layer_err(format!(
                    "invalid whiteout entry {}",
                    raw.display()
                )));
            }
            let parent = rel.parent().unwrap_or(Path::new(""));
            ensure_dirs(dest, parent)
                .map_err(|reason| layer_err(format!("whiteout {}: {reason}", raw.display())))?;
            let target = dest.join(parent).join(OsStr::from_bytes(hidden));
            remove_any(&target)
                .map_err(|e| layer_err(format!("replacing {}: {e}", target.display())))?;
            rustix::fs::mknodat(
                CWD,
                &target,
                FileType::CharacterDevice,
                Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
            .map_err(|e| layer_err(format!("creating whiteout {}: {e}", target.display())))?;
        } else {
            // overlayfs' own xattrs (redirects, metacopy, opaque) carried in
            // a layer would change how the overlay reads it: they are dropped.
            let overlay_xattrs = overlay_xattrs(&mut entry);
            // `unpack_in` refuses `..` and paths through symlinks that leave `dest`.
            let unpacked = entry
                .unpack_in(dest)
                .map_err(|e| layer_err(format!("{}: {}", raw.display(), error_chain(&e))))?;
            if !unpacked {
                return Err(layer_err(format!(
                    "entry {} escapes the layer root",
                    raw.display()
                )));
            }
            for name in overlay_xattrs {
                let _ = rustix::fs::lremovexattr(dest.join(&rel), name.as_str());
            }
        }
    }
    let (digest, _) = archive
        .into_inner()
        .finish()
        .map_err(|e| layer_err(format!("reading the tar stream: {e}")))?;
    // The layer root is the overlay's lowest directory: readable by everyone.
    fs::set_permissions(dest, fs::Permissions::from_mode(0o755))
        .map_err(|e| layer_err(format!("chmod {}: {e}", dest.display())))?;
    Ok(digest)
}

/// A tar entry name as a relative path with no `.`/`..`/root parts; `None`
/// when it would leave the layer root.
fn clean_path(raw: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Creates the directories of `rel` under `root`, refusing to go through a
/// symlink or a non-directory.
fn ensure_dirs(root: &Path, rel: &Path) -> Result<(), String> {
    let mut at = root.to_path_buf();
    for part in rel.components() {
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_dir() => {}
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(format!("{} is a symlink", at.display()))
            }
            Ok(_) => return Err(format!("{} is not a directory", at.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir(&at).map_err(|e| format!("mkdir {}: {e}", at.display()))?;
                fs::set_permissions(&at, fs::Permissions::from_mode(0o755))
                    .map_err(|e| format!("chmod {}: {e}", at.display()))?;
            }
            Err(e) => return Err(format!("{}: {e}", at.display())),
        }
    }
    Ok(())
}

/// Removes whatever is at `path` (file, link, device or directory tree).
fn remove_any(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// An error with its sources, as tar's errors hide the cause in them.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The `trusted.overlay.*` xattrs a tar entry would set (as PAX records).
fn overlay_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Vec<String> {
    const PREFIX: &str = "SCHILY.xattr.";
    let Ok(Some(extensions)) = entry.pax_extensions() else {
        return Vec::new();
    };
    extensions
        .filter_map(|ext| ext.ok())
        .filter_map(|ext| ext.key().ok().map(str::to_string))
        .filter_map(|key| key.strip_prefix(PREFIX).map(str::to_string))
        .filter(|name| name.starts_with("trusted.overlay."))
        .collect()
}
