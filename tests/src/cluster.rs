//! A cluster of masters in one process: each a real store member (RocksDB,
//! Raft over loopback HTTP/2) with its API server and the control loops,
//! which run on whichever master leads. kubectl can be pointed at any
//! master.

use std::path::PathBuf;
use std::time::Duration;

use orch_core::controller::LoopSettings;
use orch_core::{Client, ControlPlane, ControlPlaneConfig};
use tempfile::TempDir;

use crate::api::{kubectl, kubectl_ok, write_kubeconfig, KubectlOutput};
use crate::wait_until;

/// Masters running the standard control loops.
pub struct TestMasters {
    masters: Vec<Option<ControlPlane>>,
    kubeconfigs: Vec<PathBuf>,
    dir: TempDir,
}

impl TestMasters {
    /// Starts `count` masters with the default loop settings.
    pub async fn start(count: usize) -> TestMasters {
        Self::start_with(count, LoopSettings::default()).await
    }

    /// Starts `count` masters: the first bootstraps the cluster, the others
    /// join it as voters.
    pub async fn start_with(count: usize, settings: LoopSettings) -> TestMasters {
        crate::init_logging();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut masters: Vec<Option<ControlPlane>> = Vec::new();
        let mut kubeconfigs = Vec::new();
        for i in 0..count {
            let id = i as u64 + 1;
            let config = ControlPlaneConfig {
                loops: Some(settings.clone()),
                ..ControlPlaneConfig::local(id, dir.path().join(format!("master-{id}")))
            };
            let plane = if i == 0 {
                ControlPlane::start_single(config).await
            } else {
                ControlPlane::start_joining(config).await
            }
            .expect("master starts");
            if i > 0 {
                let first: &ControlPlane = masters[0].as_ref().unwrap();
                first
                    .add_master(id, plane.store.addr())
                    .await
                    .expect("master joins");
            }
            let kubeconfig = dir.path().join(format!("kubeconfig-{id}"));
            write_kubeconfig(&kubeconfig, &plane.api.addr.to_string());
            kubeconfigs.push(kubeconfig);
            masters.push(Some(plane));
        }
        TestMasters {
            masters,
            kubeconfigs,
            dir,
        }
    }

    /// Master `i` (panics if it was stopped).
    pub fn master(&self, i: usize) -> &ControlPlane {
        self.masters[i].as_ref().expect("master is running")
    }

    /// Indexes of the running masters.
    pub fn running(&self) -> Vec<usize> {
        (0..self.masters.len())
            .filter(|i| self.masters[*i].is_some())
            .collect()
    }

    /// An in-process client of master `i`.
    pub fn client(&self, i: usize) -> Client {
        self.master(i).client()
    }

    /// An HTTP client of master `i`.
    pub fn http_client(&self, i: usize) -> Client {
        Client::http(self.master(i).api.addr.to_string())
    }

    /// The index of the master running the loops, waiting for one.
    pub async fn wait_for_loops(&self) -> usize {
        wait_until(
            "a master to run the control loops",
            Duration::from_secs(10),
            || async {
                let running: Vec<usize> = self
                    .running()
                    .into_iter()
                    .filter(|i| self.master(*i).runs_loops())
                    .collect();
                (running.len() == 1).then(|| running[0])
            },
        )
        .await
    }

    /// Runs kubectl against master `i`.
    pub async fn kubectl(&self, i: usize, args: &[&str]) -> KubectlOutput {
        kubectl(&self.kubeconfigs[i], &self.cache(i), args).await
    }

    /// Runs kubectl against master `i`; panics unless it succeeds.
    pub async fn kubectl_ok(&self, i: usize, args: &[&str]) -> String {
        kubectl_ok(&self.kubeconfigs[i], &self.cache(i), args).await
    }

    fn cache(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("kube-cache-{i}"))
    }

    /// Stops master `i` (store member, API server and loops), as a crash
    /// of that master would.
    pub async fn stop(&mut self, i: usize) {
        if let Some(plane) = self.masters[i].take() {
            plane.shutdown().await;
        }
    }

    /// Stops every master.
    pub async fn shutdown(mut self) {
        for i in 0..self.masters.len() {
            self.stop(i).await;
        }
    }
}
