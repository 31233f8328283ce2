//! Debian's `docker-registry` serving plain HTTP on a loopback port, with
//! images pushed into it by Debian's `skopeo`: the real OCI registry that
//! pulls are tested against.
//!
//! Plain `std` and `tempfile` only: the runtime crate's own tests include
//! this file by path (they cannot depend on this crate, which depends on
//! theirs).

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running registry; stopped when dropped.
pub struct TestRegistry {
    child: Child,
    /// `127.0.0.1:PORT`, the host part of image references.
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl TestRegistry {
    /// Starts a registry on a free loopback port and waits until it answers
    /// `/v2/`.
    pub fn start() -> TestRegistry {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
                 delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                dir.path().join("storage").display()
            ),
        )
        .expect("registry config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("registry.log")).expect("registry log"))
            .spawn()
            .expect("docker-registry (Debian package docker-registry) must be installed");
        let registry = TestRegistry {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut s) = TcpStream::connect(&registry.addr) {
                let _ = write!(s, "GET /v2/ HTTP/1.0\r\n\r\n");
                let mut answer = String::new();
                let _ = s.read_to_string(&mut answer);
                if answer.starts_with("HTTP/1.") && answer.contains(" 200 ") {
                    return registry;
                }
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start on {}",
                registry.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Pushes the image of the OCI layout `layout` (tag `latest`) as
    /// `name` (`repository:tag`).
    pub fn push(&self, layout: &Path, name: &str) {
        let out = Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--dest-tls-verify=false",
                &format!("oci:{}:latest", layout.display()),
                &format!("docker://{}/{name}", self.addr),
            ])
            .output()
            .expect("skopeo (Debian package skopeo) must be installed");
        assert!(
            out.status.success(),
            "skopeo copy to {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the registry (pulls then fail to connect).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}
