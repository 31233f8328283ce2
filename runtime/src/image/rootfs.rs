//! A container's root filesystem: an overlayfs mount whose lower directories
//! are the image's unpacked layers (shared by every container of the image,
//! never written) and whose upper and work directories belong to the container.
//!
//! Layout under a container directory `C`:
//! `C/rootfs` (the mount point), `C/upper` (the container's changes),
//! `C/work` (overlayfs' scratch space).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};

use super::error::{ImageError, Result};

/// overlayfs' mount data must fit in one page.
const MAX_MOUNT_DATA: usize = 4095;

/// A container's rootfs: its directories, mounted or not. It does not unmount
/// on drop: the agent decides when a container's rootfs goes away (and may
/// re-adopt it after a restart with [`RootfsMount::for_container`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsMount {
    /// The mount point: the container's `/`.
    pub rootfs: PathBuf,
    /// The overlay's upper directory: what the container wrote.
    pub upper: PathBuf,
    /// The overlay's work directory.
    pub work: PathBuf,
}

impl RootfsMount {
    /// The rootfs directories of the container directory `container_dir`
    /// (nothing is created or mounted).
    pub fn for_container(container_dir: &Path) -> RootfsMount {
        RootfsMount {
            rootfs: container_dir.join("rootfs"),
            upper: container_dir.join("upper"),
            work: container_dir.join("work"),
        }
    }

    /// Mounts the overlay with `lower` (topmost layer first) unless it is
    /// mounted already (then this is a no-op, so a restarted agent can call it
    /// again).
    pub(crate) fn mount(&self, lower: &[PathBuf]) -> Result<()> {
        if self.is_mounted()? {
            return Ok(());
        }
        for dir in [&self.rootfs, &self.upper, &self.work] {
            fs::create_dir_all(dir)
                .map_err(ImageError::io(format!("creating {}", dir.display())))?;
        }
        // The upper directory's root is the container's `/`.
        fs::set_permissions(&self.upper, fs::Permissions::from_mode(0o755))
            .map_err(ImageError::io(format!("chmod {}", self.upper.display())))?;
        let mount_err = |reason: String| ImageError::Mount {
            target: self.rootfs.clone(),
            reason,
        };
        let mut lowers = Vec::with_capacity(lower.len());
        for dir in lower {
            lowers.push(option_path(dir).map_err(mount_err)?);
        }
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            option_path(&self.upper).map_err(mount_err)?,
            option_path(&self.work).map_err(mount_err)?,
        );
        if data.len() > MAX_MOUNT_DATA {
            return Err(mount_err(format!(
                "{} layers make {} bytes of mount options, over the kernel's limit of {MAX_MOUNT_DATA}; \
                 use a shorter data directory path",
                lower.len(),
                data.len()
            )));
        }
        rustix::mount::mount(
            "overlay",
            &self.rootfs,
            "overlay",
            MountFlags::NODEV,
            std::ffi::CString::new(data.clone())
                .map_err(|_| mount_err("mount options contain a NUL byte".to_string()))?
                .as_c_str(),
        )
        .map_err(|e| mount_err(format!("{e} (options {data})")))?;
        Ok(())
    }

    /// Whether the rootfs is a mount point now (per /proc/self/mountinfo).
    pub fn is_mounted(&self) -> Result<bool> {
        is_mount_point(&self.rootfs)
    }

    /// Unmounts the rootfs if it is mounted. A busy mount (a process still
    /// inside) is detached lazily and the kernel frees it when the last user
    /// goes.
    pub fn unmount(&self) -> Result<()> {
        if !self.is_mounted()? {
            return Ok(());
        }
        match rustix::mount::unmount(&self.rootfs, UnmountFlags::empty()) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(rustix::io::Errno::BUSY) => {
                tracing::warn!(rootfs = %self.rootfs.display(), "rootfs busy, detaching it");
                rustix::mount::unmount(&self.rootfs, UnmountFlags::DETACH).map_err(|e| {
                    ImageError::Unmount {
                        target: self.rootfs.clone(),
                        source: e.into(),
                    }
                })
            }
            Err(e) => Err(ImageError::Unmount {
                target: self.rootfs.clone(),
                source: e.into(),
            }),
        }
    }

    /// Unmounts the rootfs and deletes its mount point, upper and work
    /// directories (the container's writes are gone afterwards).
    pub fn remove(&self) -> Result<()> {
        self.unmount()?;
        for dir in [&self.rootfs, &self.upper, &self.work] {
            match fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(ImageError::io(format!("removing {}", dir.display()))(e)),
            }
        }
        Ok(())
    }
}

/// A path usable inside overlayfs' comma- and colon-separated options.
fn option_path(path: &Path) -> Result<String, String> {
    let text = path
        .to_str()
        .ok_or_else(|| format!("path {} is not UTF-8", path.display()))?;
    if text.contains([',', ':', '\\']) || text.chars().any(char::is_whitespace) {
        return Err(format!(
            "path {text:?} contains a character overlayfs options cannot carry (',', ':', '\\' or space)"
        ));
    }
    Ok(text.to_string())
}

/// Whether `path` is a mount point in this process' mount namespace.
pub fn is_mount_point(path: &Path) -> Result<bool> {
    let path = match fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(ImageError::io(format!("resolving {}", path.display()))(e)),
    };
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(ImageError::io("reading /proc/self/mountinfo"))?;
    let found = mount_points(&info).any(|m| Path::new(&m) == path);
    Ok(found)
}

/// The mount points listed in a mountinfo text, unescaped.
pub fn mount_points(mountinfo: &str) -> impl Iterator<Item = String> + '_ {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
}

/// Undoes mountinfo's octal escapes (`\040` for space and so on).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let oct = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
