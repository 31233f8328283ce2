//! The image store against real things, as root: the busybox OCI layout built
//! by scripts/build-test-image, overlayfs mounts, Debian's docker-registry
//! on loopback with images pushed by skopeo, and docker-archive tarballs.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use orch_runtime::image::{
    is_mount_point, ImageError, ImageStore, PullPolicy, RegistryOptions, RootfsMount,
};
use sha2::{Digest, Sha256};

fn require_root() {
    assert!(
        fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")),
        "the image store tests need root (overlayfs mounts, whiteout devices, trusted xattrs)"
    );
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("running {cmd:?}: {e} (is the package installed? see scripts/setup)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds the busybox OCI layout into `dir/layout`; returns (layout, manifest digest).
fn busybox_layout(dir: &Path) -> (PathBuf, String) {
    let layout = dir.join("layout");
    let out = run(Command::new(repo_root().join("scripts/build-test-image")).arg(&layout));
    (layout, out.trim().to_string())
}

/// Runs `sh -c script` inside `rootfs` with chroot; returns stdout.
fn in_rootfs(rootfs: &Path, script: &str) -> String {
    run(Command::new("/usr/sbin/chroot")
        .arg(rootfs)
        .args(["/bin/sh", "-c", script])
        .env_clear()
        .env("PATH", "/bin"))
}

fn mounted_anywhere(path: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = path.to_string_lossy().into_owned();
    let found = orch_runtime::image::mount_points(&info).any(|m| m.starts_with(&path));
    found
}

#[test]
fn oci_layout_import_mount_write_and_unmount() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (layout, manifest_digest) = busybox_layout(dir.path());
    let store = ImageStore::open(dir.path().join("images")).unwrap();

    let image = store.import_oci_layout(&layout, "busybox:latest").unwrap();
    assert_eq!(image.reference, "docker.io/library/busybox:latest");
    assert_eq!(image.manifest, manifest_digest);
    assert_eq!(image.digest, manifest_digest);
    assert_eq!(image.diff_ids.len(), 1);
    assert_eq!(store.resolve("busybox").unwrap(), Some(image.clone()));
    let by_digest = format!("busybox@{manifest_digest}");
    assert_eq!(store.resolve(&by_digest).unwrap(), Some(image.clone()));

    let config = store.image_config("busybox").unwrap();
    assert_eq!(config.cmd, vec!["sh"]);
    assert!(config.entrypoint.is_empty());
    assert!(
        config.env.iter().any(|e| e.starts_with("PATH=")),
        "{:?}",
        config.env
    );
    assert_eq!(config.working_dir.as_deref(), Some("/"));

    // Importing again reuses everything and keeps one unpacked layer.
    store.import_oci_layout(&layout, "busybox:latest").unwrap();
    assert_eq!(
        fs::read_dir(store.root().join("layers")).unwrap().count(),
        1
    );

    let c1 = dir.path().join("containers/c1");
    let c2 = dir.path().join("containers/c2");
    let m1 = store.mount_rootfs("busybox", &c1).unwrap();
    let m2 = store.mount_rootfs("busybox", &c2).unwrap();
    assert_eq!(m1, RootfsMount::for_container(&c1));
    assert!(is_mount_point(&m1.rootfs).unwrap());
    // Mounting again is a no-op (an agent restarting re-adopts its mounts).
    store.mount_rootfs("busybox", &c1).unwrap();
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let rootfs1 = m1.rootfs.to_string_lossy().into_owned();
    assert_eq!(
        orch_runtime::image::mount_points(&info)
            .filter(|m| *m == rootfs1)
            .count(),
        1
    );

    assert!(fs::symlink_metadata(m1.rootfs.join("bin/sh"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(m1.rootfs.join("bin/busybox").is_file());
    assert_eq!(
        in_rootfs(&m1.rootfs, "echo hello from $(cat /etc/hostname)"),
        "hello from busybox\n"
    );

    // Writes land in the container's upper directory only.
    in_rootfs(&m1.rootfs, "echo data > /tmp/written; rm /etc/passwd");
    assert_eq!(
        fs::read_to_string(m1.upper.join("tmp/written")).unwrap(),
        "data\n"
    );
    assert!(!m1.rootfs.join("etc/passwd").exists());
    let whiteout = fs::symlink_metadata(m1.upper.join("etc/passwd")).unwrap();
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
    let lower = store.lower_dirs("busybox").unwrap();
    assert_eq!(lower.len(), 1);
    assert!(!lower[0].join("tmp/written").exists());
    assert!(lower[0].join("etc/passwd").is_file());
    // The other container sees the image as it was.
    assert!(!m2.rootfs.join("tmp/written").exists());
    assert!(m2.rootfs.join("etc/passwd").is_file());

    m1.unmount().unwrap();
    assert!(!is_mount_point(&m1.rootfs).unwrap());
    m1.unmount().unwrap(); // idempotent
    assert!(
        m1.upper.join("tmp/written").exists(),
        "unmount keeps the container's writes"
    );
    m1.remove().unwrap();
    m2.remove().unwrap();
    assert!(!c1.join("rootfs").exists() && !c1.join("upper").exists() && !c1.join("work").exists());
    assert!(
        !mounted_anywhere(dir.path()),
        "nothing stays mounted under the test dir"
    );
}

#[test]
fn bad_input_gets_clear_errors() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (layout, _) = busybox_layout(dir.path());
    let store = ImageStore::open(dir.path().join("images")).unwrap();

    for bad in [
        "",
        "Busybox:latest",
        "busybox:la test",
        "busybox@sha256:abc",
        "-x",
    ] {
        let err = store.resolve(bad).unwrap_err();
        assert!(
            matches!(err, ImageError::InvalidReference { .. }),
            "{bad:?}: {err}"
        );
        assert!(err.to_string().contains("invalid image reference"), "{err}");
    }
    let err = store
        .mount_rootfs("busybox", &dir.path().join("c"))
        .unwrap_err();
    assert!(matches!(err, ImageError::NotPresent { .. }), "{err}");
    assert!(
        err.to_string().contains("docker.io/library/busybox:latest"),
        "{err}"
    );

    let err = store
        .import_oci_layout(&dir.path().join("nowhere"), "busybox")
        .unwrap_err();
    assert!(err.to_string().contains("oci-layout"), "{err}");

    // A layer blob whose content does not match its digest is refused.
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(layout.join("blobs/sha256").join(&manifest_digest[7..])).unwrap(),
    )
    .unwrap();
    let layer = layout
        .join("blobs/sha256")
        .join(&manifest["layers"][0]["digest"].as_str().unwrap()[7..]);
    let mut bytes = fs::read(&layer).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&layer, bytes).unwrap();
    let err = store.import_oci_layout(&layout, "busybox").unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(store.list().is_empty());
}

/// A tar of `(path, Some(contents))` files and `(path, None)` directories.
fn layer_tar(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, contents) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        match contents {
            Some(text) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(text.len() as u64);
                header.set_mode(0o644);
                header.set_cksum();
                builder
                    .append_data(&mut header, path, text.as_bytes())
                    .unwrap();
            }
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                header.set_mode(0o755);
                header.set_cksum();
                builder.append_data(&mut header, path, &[][..]).unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Writes an OCI layout with uncompressed `layers` (base first).
fn write_layout(dir: &Path, layers: &[Vec<u8>]) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = digest(bytes);
        fs::write(blobs.join(&d[7..]), bytes).unwrap();
        (d, bytes.len())
    };
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for layer in layers {
        let (d, size) = put(layer);
        diff_ids.push(d.clone());
        descriptors.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": size
        }));
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    });
    let (config_digest, config_size) = put(&serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": descriptors
    });
    let (manifest_digest, manifest_size) = put(&serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest_size,
                       "annotations": {"org.opencontainers.image.ref.name": "latest"}}]
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

#[test]
fn whiteouts_of_a_two_layer_image() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let base = layer_tar(&[
        ("a", None),
        ("a/keep", Some("keep")),
        ("a/gone", Some("gone")),
        ("d", None),
        ("d/old", Some("old")),
        ("d/sub", None),
        ("d/sub/x", Some("x")),
        ("f", Some("f")),
        ("g", None),
        ("g/inner", Some("inner")),
    ]);
    let top = layer_tar(&[
        ("a/.wh.gone", Some("")),
        ("d", None),
        ("d/.wh..wh..opq", Some("")),
        ("d/new", Some("new")),
        (".wh.f", Some("")),
        (".wh.g", Some("")),
        ("h/.wh..wh..opq", Some("")),
    ]);
    let layout = dir.path().join("layout");
    write_layout(&layout, &[base, top]);
    let store = ImageStore::open(dir.path().join("images")).unwrap();
    let image = store
        .import_oci_layout(&layout, "127.0.0.1:5000/whiteouts:v1")
        .unwrap();
    assert_eq!(image.reference, "127.0.0.1:5000/whiteouts:v1");

    let lower = store.lower_dirs(&image.reference).unwrap();
    assert_eq!(lower.len(), 2);
    let top_dir = &lower[0];
    let gone = fs::symlink_metadata(top_dir.join("a/gone")).unwrap();
    assert!(
        gone.file_type().is_char_device() && gone.rdev() == 0,
        "overlay whiteout device"
    );
    assert!(!top_dir.join("a/.wh.gone").exists());
    let opaque = rustix::fs::getxattr(top_dir.join("d"), "trusted.overlay.opaque", &mut [0u8; 4])
        .expect("d is marked opaque");
    assert_eq!(opaque, 1);
    assert!(!top_dir.join("d/.wh..wh..opq").exists());

    let m = store
        .mount_rootfs(&image.reference, &dir.path().join("c"))
        .unwrap();
    let r = &m.rootfs;
    assert_eq!(fs::read_to_string(r.join("a/keep")).unwrap(), "keep");
    assert!(!r.join("a/gone").exists(), "a whited-out file is hidden");
    assert!(
        !r.join("f").exists() && !r.join("g").exists(),
        "whited-out file and directory"
    );
    assert!(
        !r.join("d/old").exists() && !r.join("d/sub").exists(),
        "opaque dir hides the base"
    );
    assert_eq!(fs::read_to_string(r.join("d/new")).unwrap(), "new");
    assert!(
        r.join("h").is_dir(),
        "opaque marker of a new directory creates it"
    );
    let mut names: Vec<String> = fs::read_dir(r)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["a", "d", "h"]);
    m.remove().unwrap();
    assert!(!mounted_anywhere(dir.path()));
}

#[test]
fn layer_escaping_its_root_is_refused() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    // A hand-written header: tar::Builder refuses `..` names itself.
    let mut header = tar::Header::new_old();
    header.as_old_mut().name[..12].copy_from_slice(b"../../escape");
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(2);
    header.set_mode(0o644);
    header.set_cksum();
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend_from_slice(b"hi");
    bytes.resize(512 * 2, 0);
    bytes.extend_from_slice(&[0u8; 1024]);
    let layout = dir.path().join("layout");
    write_layout(&layout, &[bytes]);
    let store = ImageStore::open(dir.path().join("images")).unwrap();
    let err = store.import_oci_layout(&layout, "evil").unwrap_err();
    assert!(matches!(err, ImageError::Layer { .. }), "{err}");
    assert!(err.to_string().contains("escapes the layer root"), "{err}");
    assert!(!dir.path().join("escape").exists() && !dir.path().join("images/escape").exists());
    assert!(store.list().is_empty());
    assert_eq!(
        fs::read_dir(store.root().join("layers")).unwrap().count(),
        0
    );
}

#[test]
fn docker_archive_import() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (layout, _) = busybox_layout(dir.path());
    let archive = dir.path().join("busybox.tar");
    run(Command::new("skopeo").args([
        "--insecure-policy",
        "copy",
        &format!("oci:{}:latest", layout.display()),
        &format!("docker-archive:{}:busybox:latest", archive.display()),
    ]));
    let store = ImageStore::open(dir.path().join("images")).unwrap();
    let from_layout = store
        .import_oci_layout(&layout, "localhost/busybox:oci")
        .unwrap();
    let images = store.import_docker_archive(&archive).unwrap();
    assert_eq!(images.len(), 1, "{images:?}");
    let image = &images[0];
    assert_eq!(image.reference, "docker.io/library/busybox:latest");
    assert_eq!(image.diff_ids, from_layout.diff_ids, "same layer content");
    assert_eq!(
        fs::read_dir(store.root().join("layers")).unwrap().count(),
        1,
        "the layer is unpacked once for both images"
    );
    assert_eq!(
        store.image_config("busybox:latest").unwrap().cmd,
        vec!["sh"]
    );
    assert_eq!(store.list().len(), 2);

    let m = store
        .mount_rootfs("busybox:latest", &dir.path().join("c"))
        .unwrap();
    assert_eq!(in_rootfs(&m.rootfs, "echo ok; ls /bin/nc"), "ok\n/bin/nc\n");
    m.remove().unwrap();

    // Reopening the store keeps its index.
    drop(store);
    let store = ImageStore::open(dir.path().join("images")).unwrap();
    assert_eq!(store.list().len(), 2);
    assert!(store.remove("busybox").unwrap());
    assert!(!store.remove("busybox").unwrap());
    assert_eq!(store.list().len(), 1);

    let not_tar = dir.path().join("not.tar");
    fs::write(&not_tar, b"this is not a tarball").unwrap();
    let err = store.import_docker_archive(&not_tar).unwrap_err();
    assert!(err.to_string().contains("docker archive"), "{err}");
}

#[path = "../../tests/src/registry.rs"]
mod registry;
use registry::TestRegistry as Registry;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pull_from_a_local_registry() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (layout, manifest_digest) = busybox_layout(dir.path());
    let mut registry = Registry::start();
    registry.push(&layout, "busybox:latest");
    registry.push(&layout, "tools/busybox:1.35");
    let inspected: serde_json::Value = serde_json::from_str(&run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        &format!("docker://{}/busybox:latest", registry.addr),
    ])))
    .unwrap();
    assert_eq!(
        inspected["Digest"],
        manifest_digest.as_str(),
        "skopeo pushes the manifest as is"
    );

    let store = ImageStore::open(dir.path().join("images")).unwrap();
    let options = RegistryOptions::default();
    let reference = format!("{}/busybox:latest", registry.addr);

    let err = store
        .pull(&reference, PullPolicy::Never, &options)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotPresent { .. }), "{err}");
    assert!(err.to_string().contains("Never"), "{err}");

    let first = store
        .pull(&reference, PullPolicy::IfNotPresent, &options)
        .await
        .unwrap();
    assert!(first.contacted_registry);
    assert_eq!(first.blobs_downloaded, 2, "config and one layer");
    assert_eq!(first.image.digest, manifest_digest);
    assert_eq!(first.image.reference, reference);
    assert_eq!(store.image_config(&reference).unwrap().cmd, vec!["sh"]);

    // Always asks the registry but downloads nothing it has.
    let again = store
        .pull(&reference, PullPolicy::Always, &options)
        .await
        .unwrap();
    assert!(again.contacted_registry);
    assert_eq!(again.blobs_downloaded, 0);
    assert_eq!(again.image.digest, manifest_digest);

    // Another repository, a tag other than latest, by digest.
    let tagged = format!("{}/tools/busybox:1.35", registry.addr);
    assert_eq!(
        PullPolicy::for_container(None, &tagged).unwrap(),
        PullPolicy::IfNotPresent
    );
    let other = store
        .pull(&tagged, PullPolicy::IfNotPresent, &options)
        .await
        .unwrap();
    assert_eq!(other.image.diff_ids, first.image.diff_ids);
    assert_eq!(other.blobs_downloaded, 0, "blobs are shared by content");

    // Errors keep the registry's words.
    let missing_tag = format!("{}/busybox:nope", registry.addr);
    let err = store
        .pull(&missing_tag, PullPolicy::IfNotPresent, &options)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Registry { .. }), "{err}");
    assert!(err.to_string().contains("manifest unknown"), "{err}");
    let missing_repo = format!("{}/nothing/here:latest", registry.addr);
    let err = store
        .pull(&missing_repo, PullPolicy::Always, &options)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("NAME_UNKNOWN") || err.to_string().contains("MANIFEST_UNKNOWN"),
        "{err}"
    );
    let err = store
        .pull(
            &format!("{}/Busybox", registry.addr),
            PullPolicy::Always,
            &options,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::InvalidReference { .. }), "{err}");

    // With the registry gone, IfNotPresent still works from the store: no network.
    registry.stop();
    let offline = store
        .pull(&reference, PullPolicy::IfNotPresent, &options)
        .await
        .unwrap();
    assert!(!offline.contacted_registry);
    assert_eq!(offline.image.digest, manifest_digest);
    let by_digest = format!("{}/busybox@{manifest_digest}", registry.addr);
    let pinned = store
        .pull(&by_digest, PullPolicy::IfNotPresent, &options)
        .await
        .unwrap();
    assert!(!pinned.contacted_registry);
    let err = store
        .pull(&reference, PullPolicy::Always, &options)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Registry { .. }), "{err}");
    assert!(err.to_string().to_lowercase().contains("connect"), "{err}");

    // The pulled image runs.
    let m = store
        .mount_rootfs(&reference, &dir.path().join("c"))
        .unwrap();
    assert_eq!(in_rootfs(&m.rootfs, "echo pulled"), "pulled\n");
    m.remove().unwrap();
    assert!(!mounted_anywhere(dir.path()));
}

#[test]
fn overlay_xattrs_carried_by_a_layer_are_dropped() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    let mut pax = Vec::new();
    for (key, value) in [
        ("SCHILY.xattr.trusted.overlay.metacopy", "y"),
        ("SCHILY.xattr.user.note", "kept"),
    ] {
        // A PAX record is "LEN key=value\n", LEN counting itself.
        let rest = format!(" {key}={value}\n");
        let mut len = rest.len() + 1;
        while len.to_string().len() + rest.len() != len {
            len += 1;
        }
        pax.extend_from_slice(format!("{len}{rest}").as_bytes());
    }
    let mut pax_header = tar::Header::new_ustar();
    pax_header.set_entry_type(tar::EntryType::XHeader);
    pax_header.set_uid(0);
    pax_header.set_gid(0);
    pax_header.set_mtime(0);
    pax_header.set_mode(0o644);
    pax_header.set_size(pax.len() as u64);
    pax_header.set_cksum();
    builder
        .append_data(&mut pax_header, "PaxHeader/x", &pax[..])
        .unwrap();
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_mode(0o644);
    header.set_size(4);
    header.set_cksum();
    builder.append_data(&mut header, "x", &b"data"[..]).unwrap();
    let layout = dir.path().join("layout");
    write_layout(&layout, &[builder.into_inner().unwrap()]);
    let store = ImageStore::open(dir.path().join("images")).unwrap();
    store.import_oci_layout(&layout, "xattrs").unwrap();
    let x = store.lower_dirs("xattrs").unwrap()[0].join("x");
    assert_eq!(fs::read_to_string(&x).unwrap(), "data");
    let mut buf = [0u8; 16];
    assert!(rustix::fs::getxattr(&x, "trusted.overlay.metacopy", &mut buf).is_err());
    let n = rustix::fs::getxattr(&x, "user.note", &mut buf).expect("other xattrs are kept");
    assert_eq!(&buf[..n], b"kept");
}
