//! Pod addresses from the node's pod CIDR.
//!
//! One file per allocated address, `<dir>/<a.b.c.d>`, holding the uid of
//! the pod that has it. A file is created with `O_EXCL`, so two
//! allocations can never take one address, even from two processes, and a
//! restarted agent sees what is taken by listing the directory. The
//! network address, the gateway (the first host address, the bridge's)
//! and the broadcast address are never handed out. Allocation goes round
//! the range from the address after the last one handed out (kept in
//! `<dir>/last`), so an address just released is not reused at once.
//!
//! Not synced to disk: the records only have to outlive the agent, not the
//! host (after a reboot no pod holds its address any more, and the agent
//! releases the addresses of pods it does not find).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::cidr::{self, Cidr};
use super::NetError;

/// The allocator of one agent, over its directory of records.
#[derive(Debug)]
pub struct Ipam {
    dir: PathBuf,
    /// Allocations and releases of this process one at a time (the files
    /// alone keep other processes out).
    lock: Mutex<()>,
}

impl Ipam {
    /// Opens (creating it if needed) the record directory `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Ipam, NetError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(NetError::io(format!("creating {}", dir.display())))?;
        Ok(Ipam {
            dir,
            lock: Mutex::new(()),
        })
    }

    /// The record directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every recorded address and the pod uid holding it (an empty uid for
    /// a record whose writer died before naming its pod).
    pub fn allocations(&self) -> Result<BTreeMap<Ipv4Addr, String>, NetError> {
        let entries = fs::read_dir(&self.dir)
            .map_err(NetError::io(format!("listing {}", self.dir.display())))?;
        let mut all = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(NetError::io(format!("listing {}", self.dir.display())))?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            match fs::read_to_string(entry.path()) {
                Ok(uid) => {
                    all.insert(ip, uid.trim().to_string());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(NetError::io(format!("reading {}", entry.path().display()))(
                        e,
                    ))
                }
            }
        }
        Ok(all)
    }

    /// The address pod `uid` holds, if any.
    pub fn lookup(&self, uid: &str) -> Result<Option<Ipv4Addr>, NetError> {
        Ok(self
            .allocations()?
            .into_iter()
            .find(|(_, owner)| owner == uid)
            .map(|(ip, _)| ip))
    }

    /// The address of pod `uid` in `cidr`: the one it holds already, else
    /// a free one, recorded as its. An address it holds outside `cidr`
    /// (the node's range changed) is released.
    #[tracing::instrument(level = "debug", skip(self), fields(cidr = %cidr))]
    pub fn allocate(&self, cidr: &Cidr, uid: &str) -> Result<Ipv4Addr, NetError> {
        if uid.is_empty() || uid.contains(['/', '\n']) {
            return Err(NetError::Record {
                path: self.dir.display().to_string(),
                reason: format!("invalid pod uid {uid:?}"),
            });
        }
        let _guard = self.guard();
        let all = self.allocations()?;
        for (ip, owner) in &all {
            if owner != uid {
                continue;
            }
            if cidr::contains(cidr, *ip) && cidr::pod_addresses(cidr).any(|a| a == *ip) {
                return Ok(*ip);
            }
            tracing::info!(%ip, uid, "releasing an address outside the node's pod CIDR");
            self.remove(*ip)?;
        }
        let candidates: Vec<Ipv4Addr> = cidr::pod_addresses(cidr).collect();
        let start = self
            .last()
            .and_then(|last| candidates.iter().position(|a| *a == last))
            .map_or(0, |i| i + 1);
        for i in 0..candidates.len() {
            let ip = candidates[(start + i) % candidates.len()];
            if all.contains_key(&ip) {
                continue;
            }
            let path = self.dir.join(ip.to_string());
            let created = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path);
            let mut file = match created {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(NetError::io(format!("creating {}", path.display()))(e)),
            };
            if let Err(e) = file.write_all(format!("{uid}\n").as_bytes()) {
                let _ = fs::remove_file(&path);
                return Err(NetError::io(format!("writing {}", path.display()))(e));
            }
            self.set_last(ip);
            tracing::debug!(%ip, uid, "address allocated");
            return Ok(ip);
        }
        Err(NetError::Exhausted {
            cidr: cidr.to_string(),
        })
    }

    /// Releases every address pod `uid` holds; returns them.
    #[tracing::instrument(level = "debug", skip(self))]
    pub fn release(&self, uid: &str) -> Result<Vec<Ipv4Addr>, NetError> {
        let _guard = self.guard();
        let mut released = Vec::new();
        for (ip, owner) in self.allocations()? {
            if owner == uid {
                self.remove(ip)?;
                released.push(ip);
            }
        }
        Ok(released)
    }

    /// Releases the addresses of every pod for which `keep(uid)` is false
    /// (and records naming no pod); returns what was released.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) -> Result<Vec<(Ipv4Addr, String)>, NetError> {
        let _guard = self.guard();
        let mut released = Vec::new();
        for (ip, owner) in self.allocations()? {
            if owner.is_empty() || !keep(&owner) {
                self.remove(ip)?;
                released.push((ip, owner));
            }
        }
        Ok(released)
    }

    fn remove(&self, ip: Ipv4Addr) -> Result<(), NetError> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(NetError::io(format!("removing {}", path.display()))(e)),
        }
    }

    fn last(&self) -> Option<Ipv4Addr> {
        fs::read_to_string(self.dir.join("last"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Best effort: a lost hint only makes the next search start lower.
    fn set_last(&self, ip: Ipv4Addr) {
        let tmp = self.dir.join("last.tmp");
        if fs::write(&tmp, format!("{ip}\n")).is_ok() {
            let _ = fs::rename(&tmp, self.dir.join("last"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        cidr::parse_pod_cidr(s).unwrap()
    }

    #[test]
    fn addresses_are_distinct_kept_per_pod_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let range = cidr("10.9.0.0/29");
        let ipam = Ipam::open(dir.path()).unwrap();
        let a = ipam.allocate(&range, "pod-a").unwrap();
        let b = ipam.allocate(&range, "pod-b").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(b, Ipv4Addr::new(10, 9, 0, 3));
        assert_eq!(ipam.allocate(&range, "pod-a").unwrap(), a);

        let reopened = Ipam::open(dir.path()).unwrap();
        assert_eq!(reopened.lookup("pod-b").unwrap(), Some(b));
        let c = reopened.allocate(&range, "pod-c").unwrap();
        assert!(c != a && c != b, "{c} handed out twice");
    }

    #[test]
    fn the_range_runs_out_and_released_addresses_come_back_last() {
        let dir = tempfile::tempdir().unwrap();
        let range = cidr("10.9.0.0/29"); // .2 to .6: five pods
        let ipam = Ipam::open(dir.path()).unwrap();
        let got: Vec<Ipv4Addr> = (0..5)
            .map(|i| ipam.allocate(&range, &format!("p{i}")).unwrap())
            .collect();
        assert_eq!(got.first(), Some(&Ipv4Addr::new(10, 9, 0, 2)));
        assert_eq!(got.last(), Some(&Ipv4Addr::new(10, 9, 0, 6)));
        assert!(matches!(
            ipam.allocate(&range, "p5"),
            Err(NetError::Exhausted { .. })
        ));
        assert_eq!(ipam.release("p1").unwrap(), vec![got[1]]);
        assert_eq!(ipam.allocate(&range, "p5").unwrap(), got[1]);
        assert!(ipam.release("p1").unwrap().is_empty());
    }

    #[test]
    fn retain_drops_gone_pods_and_unnamed_records() {
        let dir = tempfile::tempdir().unwrap();
        let range = cidr("10.9.0.0/24");
        let ipam = Ipam::open(dir.path()).unwrap();
        let keep = ipam.allocate(&range, "alive").unwrap();
        let gone = ipam.allocate(&range, "gone").unwrap();
        fs::write(dir.path().join("10.9.0.200"), "").unwrap();
        let released = ipam.retain(|uid| uid == "alive").unwrap();
        assert_eq!(
            released,
            vec![
                (gone, "gone".to_string()),
                (Ipv4Addr::new(10, 9, 0, 200), String::new())
            ]
        );
        assert_eq!(
            ipam.allocations().unwrap().into_iter().collect::<Vec<_>>(),
            vec![(keep, "alive".to_string())]
        );
    }

    #[test]
    fn concurrent_allocators_never_share_an_address() {
        let dir = tempfile::tempdir().unwrap();
        let range = cidr("10.9.0.0/26");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let dir = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    // One allocator per thread: only the files keep them apart.
                    let ipam = Ipam::open(dir).unwrap();
                    (0..10)
                        .map(|i| ipam.allocate(&range, &format!("t{t}-{i}")).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<Ipv4Addr> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort();
        let before = all.len();
        all.dedup();
        assert_eq!(all.len(), before);
        assert_eq!(
            Ipam::open(dir.path()).unwrap().allocations().unwrap().len(),
            40
        );
    }

    #[test]
    fn an_address_outside_a_new_range_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path()).unwrap();
        let old = ipam.allocate(&cidr("10.9.0.0/24"), "p").unwrap();
        let new = ipam.allocate(&cidr("10.9.1.0/24"), "p").unwrap();
        assert_ne!(old, new);
        assert_eq!(ipam.allocations().unwrap().len(), 1);
    }
}
