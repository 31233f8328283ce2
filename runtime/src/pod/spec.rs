//! A container's OCI runtime spec (`config.json` of its bundle), built from
//! the pod's container, the image's defaults and the pod's sandbox.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::cgroup;
use super::error::{PodError, Result};
use super::sandbox::Sandbox;
use crate::image::ImageConfig;

/// The default PATH when neither the image nor the container sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Capabilities a container gets (the container runtimes' default set).
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// One container of a pod, as the runtime runs it (the agent fills it from
/// the pod's spec).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// The container's name in the pod (a DNS label).
    pub name: String,
    /// The image reference (must be in the image store).
    pub image: String,
    /// Kubernetes' `command`: replaces the image's Entrypoint.
    pub command: Vec<String>,
    /// Kubernetes' `args`: replaces the image's Cmd.
    pub args: Vec<String>,
    /// Environment (`name`, `value`), over the image's; later entries win.
    pub env: Vec<(String, String)>,
    /// Working directory (else the image's, else `/`).
    pub working_dir: Option<String>,
    /// securityContext.runAsUser (else the image's user, else 0).
    pub run_as_user: Option<u32>,
    /// securityContext.runAsGroup (else the user's group).
    pub run_as_group: Option<u32>,
    /// CPU request in millicores (cpu.shares).
    pub cpu_request_millis: Option<u64>,
    /// CPU limit in millicores (CFS quota).
    pub cpu_limit_millis: Option<u64>,
    /// Memory limit in bytes.
    pub memory_limit_bytes: Option<u64>,
    /// How many times this container was restarted before: names its log file
    /// and keeps attempts apart.
    pub attempt: u32,
    /// Host paths bind-mounted into the container (the pod's volumes).
    pub mounts: Vec<BindMount>,
}

/// A host path bind-mounted into a container: how a pod's volume reaches it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    /// The host path (a file or a directory).
    pub source: std::path::PathBuf,
    /// The absolute path in the container.
    pub destination: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Validates a container name: it becomes part of paths and ids.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(PodError::InvalidConfig(format!(
            "container name {name:?} is not a DNS label (lowercase letters, digits, '-')"
        )))
    }
}

/// The process' argv as Kubernetes defines it: `command` replaces the
/// Entrypoint (and then the image's Cmd is ignored), `args` replaces the Cmd.
pub fn process_args(config: &ContainerConfig, image: &ImageConfig) -> Result<Vec<String>> {
    let argv: Vec<String> = if !config.command.is_empty() {
        config
            .command
            .iter()
            .chain(config.args.iter())
            .cloned()
            .collect()
    } else if !config.args.is_empty() {
        image
            .entrypoint
            .iter()
            .chain(config.args.iter())
            .cloned()
            .collect()
    } else {
        image
            .entrypoint
            .iter()
            .chain(image.cmd.iter())
            .cloned()
            .collect()
    };
    if argv.is_empty() {
        return Err(PodError::InvalidConfig(format!(
            "container {:?}: no command specified (neither the pod nor image {} gives one)",
            config.name, config.image
        )));
    }
    Ok(argv)
}

/// `NAME=value` entries: the image's, then `HOSTNAME`, then the container's,
/// a later entry replacing an earlier one of the same name; PATH defaulted.
pub fn process_env(config: &ContainerConfig, image: &ImageConfig, hostname: &str) -> Vec<String> {
    let mut entries: Vec<(String, String)> = Vec::new();
    let mut set = |name: &str, value: &str| {
        if let Some(e) = entries.iter_mut().find(|(n, _)| n == name) {
            e.1 = value.to_string();
        } else {
            entries.push((name.to_string(), value.to_string()));
        }
    };
    for entry in &image.env {
        let (n, v) = entry.split_once('=').unwrap_or((entry, ""));
        set(n, v);
    }
    set("HOSTNAME", hostname);
    for (n, v) in &config.env {
        set(n, v);
    }
    if !entries.iter().any(|(n, _)| n == "PATH") {
        entries.insert(0, ("PATH".to_string(), DEFAULT_PATH.to_string()));
    }
    entries
        .into_iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect()
}

/// The process' uid, gid and additional gids: the container's
/// runAsUser/runAsGroup over the image's `User` (`uid`, `uid:gid`, `name`,
/// `name:group`; names resolved in the rootfs' /etc/passwd and /etc/group).
pub fn process_user(
    config: &ContainerConfig,
    image: &ImageConfig,
    rootfs: &Path,
) -> Result<(u32, u32)> {
    let passwd = fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let group = fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    let lookup_user = |name: &str| -> Option<(u32, u32)> {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[0] == name)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
        })
    };
    let primary_gid = |uid: u32| -> u32 {
        passwd
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 4 && f[2].parse::<u32>().ok() == Some(uid))
                    .then(|| f[3].parse().ok())?
            })
            .unwrap_or(0)
    };
    let lookup_group = |name: &str| -> Option<u32> {
        group.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 3 && f[0] == name).then(|| f[2].parse().ok())?
        })
    };
    let bad =
        |what: String| PodError::InvalidConfig(format!("container {:?}: {what}", config.name));

    let (mut uid, mut gid) = (0u32, None::<u32>);
    if let Some(user) = image.user.as_deref() {
        let (u, g) = user
            .split_once(':')
            .map_or((user, None), |(u, g)| (u, Some(g)));
        uid = match u.parse() {
            Ok(n) => n,
            Err(_) => {
                let (n, pg) = lookup_user(u).ok_or_else(|| {
                    bad(format!(
                        "image user {u:?} is not in the image's /etc/passwd"
                    ))
                })?;
                gid = Some(pg);
                n
            }
        };
        if let Some(g) = g {
            gid = Some(match g.parse() {
                Ok(n) => n,
                Err(_) => lookup_group(g).ok_or_else(|| {
                    bad(format!(
                        "image group {g:?} is not in the image's /etc/group"
                    ))
                })?,
            });
        }
    }
    if let Some(u) = config.run_as_user {
        uid = u;
        gid = None;
    }
    if let Some(g) = config.run_as_group {
        gid = Some(g);
    }
    Ok((uid, gid.unwrap_or_else(|| primary_gid(uid))))
}

/// Everything [`build`] needs besides the container config.
pub struct SpecInputs<'a> {
    /// The pod's sandbox.
    pub sandbox: &'a Sandbox,
    /// The image's defaults.
    pub image: &'a ImageConfig,
    /// The mounted rootfs.
    pub rootfs: &'a Path,
    /// libcontainer's `linux.cgroupsPath`.
    pub cgroups_path: &'a Path,
}

/// Builds the runtime spec (`config.json`).
pub fn build(config: &ContainerConfig, inputs: &SpecInputs<'_>) -> Result<Value> {
    let args = process_args(config, inputs.image)?;
    let env = process_env(config, inputs.image, &inputs.sandbox.config.name);
    let (uid, gid) = process_user(config, inputs.image, inputs.rootfs)?;
    let cwd = config
        .working_dir
        .clone()
        .or_else(|| inputs.image.working_dir.clone())
        .unwrap_or_else(|| "/".to_string());
    if !cwd.starts_with('/') {
        return Err(PodError::InvalidConfig(format!(
            "container {:?}: working directory {cwd:?} is not absolute",
            config.name
        )));
    }

    let mut resources = json!({
        "devices": [{"allow": false, "access": "rwm"}],
    });
    let mut cpu = serde_json::Map::new();
    if let Some(req) = config.cpu_request_millis {
        cpu.insert("shares".into(), json!(cgroup::cpu_shares(req)));
    }
    if let Some(lim) = config.cpu_limit_millis {
        cpu.insert("quota".into(), json!(cgroup::cpu_quota(lim)));
        cpu.insert("period".into(), json!(cgroup::CPU_PERIOD_US));
    }
    if !cpu.is_empty() {
        resources["cpu"] = Value::Object(cpu);
    }
    if let Some(mem) = config.memory_limit_bytes {
        let limit = i64::try_from(mem)
            .map_err(|_| PodError::InvalidConfig(format!("memory limit {mem} is out of range")))?;
        resources["memory"] = json!({ "limit": limit });
    }

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/etc/hostname", "type": "bind", "source": inputs.sandbox.hostname_file().display().to_string(), "options": ["rbind", "ro"]}),
        json!({"destination": "/etc/hosts", "type": "bind", "source": inputs.sandbox.hosts_file().display().to_string(), "options": ["rbind", "rw"]}),
    ];
    let resolv_conf = inputs.sandbox.resolv_conf_file();
    if resolv_conf.exists() {
        mounts.push(json!({"destination": "/etc/resolv.conf", "type": "bind", "source": resolv_conf.display().to_string(), "options": ["rbind", "ro"]}));
    }
    for mount in &config.mounts {
        if !mount.destination.starts_with('/') {
            return Err(PodError::InvalidConfig(format!(
                "container {:?}: mount path {:?} is not absolute",
                config.name, mount.destination
            )));
        }
        let mode = if mount.read_only { "ro" } else { "rw" };
        mounts.push(json!({
            "destination": mount.destination,
            "type": "bind",
            "source": mount.source.display().to_string(),
            "options": ["rbind", mode],
        }));
    }

    let caps: Vec<&str> = DEFAULT_CAPABILITIES.to_vec();
    let sandbox = inputs.sandbox;
    let ns = |kind: &str, file: &str| json!({"type": kind, "path": sandbox.ns_path(file).display().to_string()});
    let mut namespaces = vec![json!({"type": "pid"}), json!({"type": "mount"})];
    for (file, _) in sandbox.namespaces() {
        let kind = match file {
            "net" => "network",
            other => other,
        };
        namespaces.push(ns(kind, file));
    }
    Ok(json!({
        "ociVersion": "1.0.2",
        "root": {"path": inputs.rootfs.display().to_string(), "readonly": false},
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
            },
            "noNewPrivileges": false,
        },
        "mounts": mounts,
        "linux": {
            "cgroupsPath": inputs.cgroups_path.display().to_string(),
            "resources": resources,
            "namespaces": namespaces,
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
            ],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["a".into(), "b".into()],
            env: vec!["PATH=/bin".into(), "X=image".into()],
            ..Default::default()
        }
    }

    #[test]
    fn args_follow_kubernetes_rules() {
        let img = image();
        let mut c = ContainerConfig::default();
        assert_eq!(process_args(&c, &img).unwrap(), ["/entry", "a", "b"]);
        c.args = vec!["z".into()];
        assert_eq!(process_args(&c, &img).unwrap(), ["/entry", "z"]);
        c.command = vec!["sh".into()];
        assert_eq!(process_args(&c, &img).unwrap(), ["sh", "z"]);
        c.args.clear();
        assert_eq!(process_args(&c, &img).unwrap(), ["sh"]);
        let err = process_args(&ContainerConfig::default(), &ImageConfig::default());
        assert!(matches!(err, Err(PodError::InvalidConfig(_))));
    }

    #[test]
    fn env_container_wins() {
        let c = ContainerConfig {
            env: vec![("X".into(), "pod".into()), ("Y".into(), "1".into())],
            ..Default::default()
        };
        let env = process_env(&c, &image(), "p");
        assert_eq!(env, ["PATH=/bin", "X=pod", "HOSTNAME=p", "Y=1"]);
        let env = process_env(&ContainerConfig::default(), &ImageConfig::default(), "p");
        assert_eq!(env[0], format!("PATH={DEFAULT_PATH}"));
    }

    #[test]
    fn users_resolve() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/:/bin/sh\nweb:x:1000:1001::/:/bin/sh\n",
        )
        .unwrap();
        fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let mut img = ImageConfig::default();
        let mut c = ContainerConfig::default();
        assert_eq!(process_user(&c, &img, dir.path()).unwrap(), (0, 0));
        img.user = Some("web".into());
        assert_eq!(process_user(&c, &img, dir.path()).unwrap(), (1000, 1001));
        img.user = Some("web:staff".into());
        assert_eq!(process_user(&c, &img, dir.path()).unwrap(), (1000, 50));
        img.user = Some("7:8".into());
        assert_eq!(process_user(&c, &img, dir.path()).unwrap(), (7, 8));
        c.run_as_user = Some(1000);
        assert_eq!(process_user(&c, &img, dir.path()).unwrap(), (1000, 1001));
        c.run_as_group = Some(3);
        assert_eq!(process_user(&c, &img, dir.path()).unwrap(), (1000, 3));
        img.user = Some("nobody".into());
        c = ContainerConfig::default();
        assert!(process_user(&c, &img, dir.path()).is_err());
    }
}
