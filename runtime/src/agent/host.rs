//! Facts about this host that its Node reports: CPU and memory capacity,
//! hostname, kernel, OS image, machine and boot ids, architecture, and the
//! address the control plane reaches it at.

use std::fs;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::Path;

/// What the host is and has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// The host name (`uname -n`).
    pub hostname: String,
    /// CPUs this process may run on.
    pub cpus: u32,
    /// Physical memory in bytes.
    pub memory_bytes: u64,
    /// Bytes of the filesystem holding the data dir.
    pub storage_bytes: u64,
    /// `uname -r`.
    pub kernel: String,
    /// `PRETTY_NAME` of /etc/os-release.
    pub os_image: String,
    /// /etc/machine-id.
    pub machine_id: String,
    /// The kernel's boot id.
    pub boot_id: String,
    /// Kubernetes' name of the architecture (`amd64`, `arm64`, ...).
    pub architecture: String,
}

/// Reads the host's facts; `data_dir` is where the agent keeps its data.
pub fn facts(data_dir: &Path) -> HostFacts {
    let uname = nix::sys::utsname::uname().ok();
    let text = |path: &str| {
        fs::read_to_string(path)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let os_image = fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".to_string());
    // fsblkcnt_t and c_ulong are not u64 on every target.
    #[allow(clippy::unnecessary_cast)]
    let storage_bytes = nix::sys::statvfs::statvfs(data_dir)
        .map(|s| s.blocks() as u64 * s.fragment_size() as u64)
        .unwrap_or(0);
    HostFacts {
        hostname: uname
            .as_ref()
            .map(|u| u.nodename().to_string_lossy().into_owned())
            .unwrap_or_else(|| "localhost".to_string()),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_bytes: memory_total(&fs::read_to_string("/proc/meminfo").unwrap_or_default()),
        storage_bytes,
        kernel: uname
            .as_ref()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        os_image,
        machine_id: text("/etc/machine-id"),
        boot_id: text("/proc/sys/kernel/random/boot_id"),
        architecture: kubernetes_arch(std::env::consts::ARCH).to_string(),
    }
}

/// `MemTotal` of /proc/meminfo, in bytes.
fn memory_total(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

/// Rust's name of an architecture as Kubernetes (and Go) spell it.
pub fn kubernetes_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The local address this host uses to reach `server` (`host:port`): the
/// address the control plane can reach the agent at. No packet is sent.
pub fn address_towards(server: &str) -> Option<IpAddr> {
    let target: SocketAddr = server.to_socket_addrs().ok()?.next()?;
    let bind: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let socket = UdpSocket::bind(bind).ok()?;
    socket.connect(target).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

/// The address this node is known by: the one it reaches the API server
/// from, unless that is loopback (a control plane on this very host) —
/// then the source address of the default route, as other hosts and
/// NodePort clients reach it (loopback only without one).
pub fn node_address(server: Option<&str>) -> IpAddr {
    let towards_api = server.and_then(address_towards);
    match towards_api {
        Some(ip) if !ip.is_loopback() => ip,
        _ => address_towards("192.0.2.1:9")
            .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
            .or(towards_api)
            .unwrap_or(IpAddr::from([127, 0, 0, 1])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_total_is_read_in_bytes() {
        let meminfo = "MemTotal:       24567296 kB\nMemFree:        1000 kB\n";
        assert_eq!(memory_total(meminfo), 24567296 * 1024);
        assert_eq!(memory_total("nothing"), 0);
    }

    #[test]
    fn the_address_towards_loopback_is_loopback() {
        assert_eq!(
            address_towards("127.0.0.1:6443"),
            Some("127.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn this_host_has_cpus_and_memory() {
        let f = facts(Path::new("/"));
        assert!(f.cpus >= 1);
        assert!(f.memory_bytes > 0);
        assert!(!f.kernel.is_empty());
    }
}
