//! Container probes: Kubernetes' liveness, readiness and startup probes.
//!
//! - [`probe_once`] runs one probe of a container: `exec` (a command in the
//!   container through [`PodRuntime::exec`], success = exit code 0),
//!   `httpGet` (success = status 200..399; a redirect is not followed and
//!   counts as success) or `tcpSocket` (success = the connection is
//!   accepted), bounded by the probe's `timeoutSeconds`.
//! - [`ProbeTracker`] turns results into a verdict the way the kubelet does:
//!   `initialDelaySeconds`, `periodSeconds`, and `successThreshold` /
//!   `failureThreshold` consecutive results to change it.
//! - [`spawn_prober`] runs a tracker on a tokio task and publishes the
//!   verdict on a watch channel, one per container and kind of probe.
//!
//! # Network probes and the pod's network namespace
//!
//! Pods have no routed address yet, so network probes connect from inside
//! the pod's network namespace: a short-lived OS thread enters it with
//! `setns(CLONE_NEWNET)` on the sandbox's `ns/net` file, connects there and
//! ends; the connected socket stays in the namespace it was made in and is
//! handed to tokio (`TcpStream::from_std`). The thread never returns to a
//! pool, so no other work ever runs in the pod's namespace by accident. The
//! host probed is the probe's `host` if set (an IP address or `localhost`),
//! else the pod's IP if known, else 127.0.0.1 (inside the pod, which is
//! where the kubelet's probes end up too).
//!
//! # Not supported
//!
//! `grpc` probes and `httpGet` with `scheme: HTTPS` fail with a message
//! saying so; `host` names other than `localhost` are not resolved.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use nix::sched::CloneFlags;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::Instrument;

use crate::pod::{ExecError, PodRuntime, Sandbox};

/// The User-Agent of HTTP probes (the kubelet sends `kube-probe/<version>`).
pub const USER_AGENT: &str = "kube-probe/1.33";

/// How much of a failing HTTP answer's body or a failing command's output a
/// failure message quotes.
const MESSAGE_LIMIT: usize = 1024;

/// Which of a container's probes this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// Restart the container when it fails.
    Liveness,
    /// Take the pod out of its Services' endpoints when it fails.
    Readiness,
    /// Holds the other probes back until it has succeeded once.
    Startup,
}

impl ProbeKind {
    /// The name Kubernetes uses in Events (`Liveness probe failed: ...`).
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Startup => "Startup",
        }
    }
}

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    /// The check passed.
    Success,
    /// The check failed, with why (Kubernetes' wording where it has one).
    Failure(String),
    /// The probe could not be run (the container is not running, the
    /// runtime failed); as in the kubelet, this does not count either way.
    Unknown(String),
}

/// The state a probe has settled on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeVerdict {
    /// Not settled yet: no threshold has been met since the container
    /// started (a readiness or startup probe's first state: not ready, not
    /// started).
    Pending,
    /// Alive, ready, or started.
    Success,
    /// Not alive, not ready or not started, with the last failure's message.
    Failure(String),
}

impl ProbeVerdict {
    /// Whether this is [`ProbeVerdict::Success`].
    pub fn is_success(&self) -> bool {
        matches!(self, ProbeVerdict::Success)
    }
}

/// Why a network probe could not get an answer (becomes a failure message).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The probe has no handler orch runs.
    #[error("{0}")]
    Unsupported(String),
    /// The probe's port is neither a number in 1..=65535 nor a named port of
    /// the container.
    #[error("invalid port {0}")]
    Port(String),
    /// The probe's host is not an IP address.
    #[error("invalid host {0:?}: only IP addresses and localhost are supported")]
    Host(String),
    /// Entering the pod's network namespace failed.
    #[error("entering the pod's network namespace {path}: {source}")]
    Netns {
        /// The namespace file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Connecting failed (refused, unreachable, timed out).
    #[error("dial tcp {addr}: {source}")]
    Connect {
        /// Where to.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP probe failed: {0}")]
    Http(String),
}

/// Where a container's probes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    /// The container (its runtime id) exec probes run in.
    pub container_id: String,
    /// The pod's network namespace file (`Sandbox::netns_path`).
    pub netns: PathBuf,
    /// The pod's IP, if it has one (the default host of network probes).
    pub pod_ip: Option<IpAddr>,
    /// The container's named ports (`name`, `containerPort`).
    pub named_ports: Vec<(String, u16)>,
}

impl ProbeTarget {
    /// The target of `container` (its spec, for named ports) running as
    /// `container_id` in the pod of `sandbox`.
    pub fn new(
        sandbox: &Sandbox,
        container_id: &str,
        container: &Container,
        pod_ip: Option<IpAddr>,
    ) -> ProbeTarget {
        let named_ports = container
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let name = p.name.clone()?;
                let port = u16::try_from(p.container_port).ok()?;
                Some((name, port))
            })
            .collect();
        ProbeTarget {
            container_id: container_id.to_string(),
            netns: sandbox.netns_path(),
            pod_ip,
            named_ports,
        }
    }

    fn port(&self, port: &IntOrString) -> Result<u16, ProbeError> {
        match port {
            IntOrString::Int(n) => u16::try_from(*n)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| ProbeError::Port(n.to_string())),
            IntOrString::String(name) => self
                .named_ports
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, p)| *p)
                .or_else(|| name.parse().ok().filter(|p| *p > 0))
                .ok_or_else(|| ProbeError::Port(format!("{name:?}"))),
        }
    }

    fn host(&self, host: Option<&str>) -> Result<IpAddr, ProbeError> {
        match host.filter(|h| !h.is_empty()) {
            Some("localhost") => Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Some(h) => h.parse().map_err(|_| ProbeError::Host(h.to_string())),
            None => Ok(self.pod_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))),
        }
    }
}

/// A probe's timing and thresholds, with Kubernetes' defaults (and minimums
/// of 1) for what is unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSettings {
    /// `initialDelaySeconds` (default 0).
    pub initial_delay: Duration,
    /// `periodSeconds` (default 10).
    pub period: Duration,
    /// `timeoutSeconds` (default 1).
    pub timeout: Duration,
    /// `successThreshold` (default 1; always 1 for liveness and startup).
    pub success_threshold: u32,
    /// `failureThreshold` (default 3).
    pub failure_threshold: u32,
}

impl ProbeSettings {
    /// The settings of `probe` used as a `kind` probe.
    pub fn new(probe: &Probe, kind: ProbeKind) -> ProbeSettings {
        let at_least_one = |v: Option<i32>, default: u32| match v {
            Some(v) if v >= 1 => v as u32,
            _ => default,
        };
        let success_threshold = match kind {
            ProbeKind::Readiness => at_least_one(probe.success_threshold, 1),
            ProbeKind::Liveness | ProbeKind::Startup => 1,
        };
        ProbeSettings {
            initial_delay: Duration::from_secs(
                probe.initial_delay_seconds.unwrap_or(0).max(0) as u64
            ),
            period: Duration::from_secs(at_least_one(probe.period_seconds, 10).into()),
            timeout: Duration::from_secs(at_least_one(probe.timeout_seconds, 1).into()),
            success_threshold,
            failure_threshold: at_least_one(probe.failure_threshold, 3),
        }
    }
}

/// Runs `probe` once against `target`, within its `timeoutSeconds`.
pub async fn probe_once(runtime: &PodRuntime, probe: &Probe, target: &ProbeTarget) -> ProbeResult {
    let timeout = ProbeSettings::new(probe, ProbeKind::Readiness).timeout;
    let span = tracing::debug_span!("probe", container = %target.container_id);
    let run = async {
        if let Some(exec) = &probe.exec {
            return exec_probe(
                runtime,
                target,
                exec.command.clone().unwrap_or_default(),
                timeout,
            )
            .await;
        }
        let result = if let Some(http) = &probe.http_get {
            http_probe(http, target, timeout).await
        } else if let Some(tcp) = &probe.tcp_socket {
            tcp_probe(tcp, target, timeout).await
        } else if probe.grpc.is_some() {
            Err(ProbeError::Unsupported(
                "gRPC probes are not supported".to_string(),
            ))
        } else {
            Err(ProbeError::Unsupported(
                "the probe has no handler (exec, httpGet, tcpSocket)".to_string(),
            ))
        };
        result.unwrap_or_else(|e| ProbeResult::Failure(e.to_string()))
    };
    // An exec probe's command is bounded by the timeout itself (and
    // killed then); the margin lets its own message through.
    let outer = if probe.exec.is_some() {
        timeout + Duration::from_secs(1)
    } else {
        timeout
    };
    let result = match tokio::time::timeout(outer, run).instrument(span).await {
        Ok(result) => result,
        Err(_) => ProbeResult::Failure(format!("probe timed out after {timeout:?}")),
    };
    tracing::debug!(container = %target.container_id, ?result, "probed");
    result
}

async fn exec_probe(
    runtime: &PodRuntime,
    target: &ProbeTarget,
    command: Vec<String>,
    timeout: Duration,
) -> ProbeResult {
    if command.is_empty() {
        return ProbeResult::Failure("exec probe without a command".to_string());
    }
    match runtime.exec(&target.container_id, command, timeout).await {
        Ok(out) if out.exit_code == 0 => ProbeResult::Success,
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            ProbeResult::Failure(format!(
                "command exited with code {}: {}",
                out.exit_code,
                cut(text.trim())
            ))
        }
        Err(ExecError::Timeout(after)) => {
            ProbeResult::Failure(format!("command timed out after {after:?}"))
        }
        Err(e @ ExecError::Start { .. }) => ProbeResult::Failure(e.to_string()),
        Err(e) => ProbeResult::Unknown(e.to_string()),
    }
}

fn cut(text: &str) -> &str {
    if text.len() <= MESSAGE_LIMIT {
        return text;
    }
    let mut end = MESSAGE_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

async fn tcp_probe(
    tcp: &TCPSocketAction,
    target: &ProbeTarget,
    timeout: Duration,
) -> Result<ProbeResult, ProbeError> {
    let addr = SocketAddr::new(target.host(tcp.host.as_deref())?, target.port(&tcp.port)?);
    connect_in_netns(&target.netns, addr, timeout).await?;
    Ok(ProbeResult::Success)
}

async fn http_probe(
    http: &HTTPGetAction,
    target: &ProbeTarget,
    timeout: Duration,
) -> Result<ProbeResult, ProbeError> {
    if let Some(scheme) = &http.scheme {
        if !scheme.eq_ignore_ascii_case("HTTP") {
            return Err(ProbeError::Unsupported(format!(
                "HTTP probes with scheme {scheme} are not supported"
            )));
        }
    }
    let addr = SocketAddr::new(target.host(http.host.as_deref())?, target.port(&http.port)?);
    let stream = connect_in_netns(&target.netns, addr, timeout).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ProbeError::Http(e.to_string()))?;
    let connection = tokio::spawn(connection);
    let path = match http.path.as_deref() {
        None | Some("") => "/".to_string(),
        Some(p) if p.starts_with('/') => p.to_string(),
        Some(p) => format!("/{p}"),
    };
    let mut request = hyper::Request::get(&path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::USER_AGENT, USER_AGENT)
        .header(hyper::header::ACCEPT, "*/*");
    for header in http.http_headers.iter().flatten() {
        let name = hyper::header::HeaderName::from_bytes(header.name.as_bytes())
            .map_err(|e| ProbeError::Http(format!("header {:?}: {e}", header.name)))?;
        let value = hyper::header::HeaderValue::from_str(&header.value)
            .map_err(|e| ProbeError::Http(format!("header {:?}: {e}", header.name)))?;
        // A header given in the probe replaces the default one (Host,
        // User-Agent, Accept), as in the kubelet.
        if let Some(headers) = request.headers_mut() {
            if headers.contains_key(&name)
                && [
                    hyper::header::HOST,
                    hyper::header::USER_AGENT,
                    hyper::header::ACCEPT,
                ]
                .contains(&name)
            {
                headers.remove(&name);
            }
            headers.append(name, value);
        }
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| ProbeError::Http(format!("path {path:?}: {e}")))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| ProbeError::Http(e.to_string()))?;
    let status = response.status();
    let result = if (200..400).contains(&status.as_u16()) {
        ProbeResult::Success
    } else {
        // Quote the start of the body, as the kubelet does.
        let mut body = response.into_body();
        let mut text = Vec::new();
        while text.len() < MESSAGE_LIMIT {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        text.extend_from_slice(data);
                    }
                }
                _ => break,
            }
        }
        let text = String::from_utf8_lossy(&text);
        ProbeResult::Failure(format!(
            "HTTP probe failed with statuscode: {}{}",
            status.as_u16(),
            if text.trim().is_empty() {
                String::new()
            } else {
                format!(": {}", cut(text.trim()))
            }
        ))
    };
    connection.abort();
    Ok(result)
}

/// Connects to `addr` from inside the network namespace `netns`, on a
/// thread of its own that enters it and ends (see the module docs).
pub async fn connect_in_netns(
    netns: &Path,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, ProbeError> {
    let (tx, rx) = oneshot::channel();
    let path = netns.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("orch-probe-net".to_string())
        .stack_size(128 * 1024)
        .spawn(move || {
            let result = (|| {
                let ns = std::fs::File::open(&path).map_err(|source| ProbeError::Netns {
                    path: path.clone(),
                    source,
                })?;
                nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| {
                    ProbeError::Netns {
                        path: path.clone(),
                        source: e.into(),
                    }
                })?;
                let stream = std::net::TcpStream::connect_timeout(&addr, timeout)
                    .map_err(|source| ProbeError::Connect { addr, source })?;
                stream
                    .set_nonblocking(true)
                    .map_err(|source| ProbeError::Connect { addr, source })?;
                Ok(stream)
            })();
            let _ = tx.send(result);
        });
    if let Err(source) = spawned {
        return Err(ProbeError::Connect { addr, source });
    }
    let stream = rx.await.map_err(|_| ProbeError::Connect {
        addr,
        source: std::io::Error::other("the connecting thread died"),
    })??;
    tokio::net::TcpStream::from_std(stream).map_err(|source| ProbeError::Connect { addr, source })
}

/// The kubelet's bookkeeping of one probe: when it is due, and how results
/// turn into a verdict (a run of `successThreshold` successes or
/// `failureThreshold` failures changes it; unknown results are ignored).
#[derive(Debug, Clone)]
pub struct ProbeTracker {
    settings: ProbeSettings,
    kind: ProbeKind,
    next_due: Instant,
    last: Option<bool>,
    run: u32,
    verdict: ProbeVerdict,
}

impl ProbeTracker {
    /// A tracker of `probe` used as a `kind` probe of a container started at
    /// `started`. Liveness starts as success, readiness and startup as
    /// failure (not ready, not started), as in the kubelet.
    pub fn new(probe: &Probe, kind: ProbeKind, started: Instant) -> ProbeTracker {
        let settings = ProbeSettings::new(probe, kind);
        let verdict = match kind {
            ProbeKind::Liveness => ProbeVerdict::Success,
            ProbeKind::Readiness | ProbeKind::Startup => ProbeVerdict::Pending,
        };
        ProbeTracker {
            settings,
            kind,
            next_due: started + settings.initial_delay,
            last: None,
            run: 0,
            verdict,
        }
    }

    /// Its settings.
    pub fn settings(&self) -> &ProbeSettings {
        &self.settings
    }

    /// Whether the probe should run at `now`. A startup probe that has
    /// succeeded is never due again.
    pub fn due(&self, now: Instant) -> bool {
        !self.finished() && now >= self.next_due
    }

    /// When the probe should run next.
    pub fn next_due(&self) -> Instant {
        self.next_due
    }

    /// Whether it has nothing left to do (a startup probe that succeeded).
    pub fn finished(&self) -> bool {
        self.kind == ProbeKind::Startup && self.verdict.is_success()
    }

    /// The current verdict.
    pub fn verdict(&self) -> &ProbeVerdict {
        &self.verdict
    }

    /// Records the result of the probe that ran at `ran_at` (the next one is
    /// due a period later); the new verdict if it changed.
    pub fn record(&mut self, ran_at: Instant, result: &ProbeResult) -> Option<ProbeVerdict> {
        self.next_due = ran_at + self.settings.period;
        let success = match result {
            ProbeResult::Success => true,
            ProbeResult::Failure(_) => false,
            ProbeResult::Unknown(_) => return None,
        };
        if self.last == Some(success) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(success);
            self.run = 1;
        }
        let threshold = if success {
            self.settings.success_threshold
        } else {
            self.settings.failure_threshold
        };
        if self.run < threshold {
            return None;
        }
        let verdict = match result {
            ProbeResult::Failure(message) => ProbeVerdict::Failure(message.clone()),
            _ => ProbeVerdict::Success,
        };
        let settled = self.verdict != ProbeVerdict::Pending;
        if settled && self.verdict.is_success() == verdict.is_success() {
            // Unchanged; keep the newest failure message without announcing.
            self.verdict = verdict;
            return None;
        }
        self.verdict = verdict.clone();
        Some(verdict)
    }
}

/// Probes `target` with `probe` as a `kind` probe on a tokio task (the
/// container counts as started now) and publishes the verdict: the
/// receiver's value starts as [`ProbeTracker::new`]'s and changes when the
/// thresholds are met. The task ends when every receiver is dropped, and
/// for a startup probe after it succeeded.
pub fn spawn_prober(
    runtime: PodRuntime,
    probe: Probe,
    kind: ProbeKind,
    target: ProbeTarget,
) -> watch::Receiver<ProbeVerdict> {
    let shared = Arc::new((runtime, probe.clone(), target));
    let container = shared.2.container_id.clone();
    spawn_prober_with(&probe, kind, &container, move || {
        let shared = shared.clone();
        async move { probe_once(&shared.0, &shared.1, &shared.2).await }
    })
}

/// [`spawn_prober`] with the probe itself given as `run` (tests run it
/// against fakes under `tokio::time::pause`). `container` names it in logs.
pub fn spawn_prober_with<F, Fut>(
    probe: &Probe,
    kind: ProbeKind,
    container: &str,
    mut run: F,
) -> watch::Receiver<ProbeVerdict>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ProbeResult> + Send + 'static,
{
    let mut tracker = ProbeTracker::new(probe, kind, Instant::now());
    let (tx, rx) = watch::channel(tracker.verdict().clone());
    let span = tracing::info_span!("prober", container = %container, kind = kind.name());
    tokio::spawn(
        async move {
            while !tracker.finished() {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep_until(tracker.next_due()) => {}
                }
                let ran_at = Instant::now();
                let result = tokio::select! {
                    _ = tx.closed() => return,
                    result = run() => result,
                };
                if let Some(verdict) = tracker.record(ran_at, &result) {
                    tracing::info!(?verdict, "probe verdict changed");
                    tx.send_replace(verdict);
                }
            }
        }
        .instrument(span),
    );
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(success: i32, failure: i32) -> Probe {
        Probe {
            success_threshold: Some(success),
            failure_threshold: Some(failure),
            period_seconds: Some(5),
            initial_delay_seconds: Some(7),
            ..Default::default()
        }
    }

    fn fail(m: &str) -> ProbeResult {
        ProbeResult::Failure(m.to_string())
    }

    #[test]
    fn defaults_are_kubernetes() {
        let s = ProbeSettings::new(&Probe::default(), ProbeKind::Readiness);
        assert_eq!(s.period, Duration::from_secs(10));
        assert_eq!(s.timeout, Duration::from_secs(1));
        assert_eq!(s.initial_delay, Duration::ZERO);
        assert_eq!((s.success_threshold, s.failure_threshold), (1, 3));
        // Liveness and startup always need one success.
        let s = ProbeSettings::new(&probe(4, 2), ProbeKind::Liveness);
        assert_eq!((s.success_threshold, s.failure_threshold), (1, 2));
        // Nonsense values fall back to the defaults.
        let s = ProbeSettings::new(
            &Probe {
                period_seconds: Some(0),
                timeout_seconds: Some(-1),
                failure_threshold: Some(0),
                ..Default::default()
            },
            ProbeKind::Readiness,
        );
        assert_eq!(s.period, Duration::from_secs(10));
        assert_eq!(s.timeout, Duration::from_secs(1));
        assert_eq!(s.failure_threshold, 3);
    }

    #[test]
    fn tracker_timing() {
        let t0 = Instant::now();
        let mut t = ProbeTracker::new(&probe(1, 3), ProbeKind::Readiness, t0);
        assert!(!t.due(t0));
        assert!(!t.due(t0 + Duration::from_secs(6)));
        assert!(t.due(t0 + Duration::from_secs(7)));
        let ran = t0 + Duration::from_secs(8);
        t.record(ran, &ProbeResult::Success);
        assert!(!t.due(ran + Duration::from_secs(4)));
        assert!(t.due(ran + Duration::from_secs(5)));
        assert_eq!(t.next_due(), ran + Duration::from_secs(5));
    }

    #[test]
    fn readiness_thresholds() {
        let t0 = Instant::now();
        let mut t = ProbeTracker::new(&probe(2, 3), ProbeKind::Readiness, t0);
        assert!(!t.verdict().is_success());
        assert_eq!(t.record(t0, &ProbeResult::Success), None);
        // A failure breaks the run of successes.
        assert_eq!(t.record(t0, &fail("x")), None);
        assert_eq!(t.record(t0, &ProbeResult::Success), None);
        assert_eq!(
            t.record(t0, &ProbeResult::Success),
            Some(ProbeVerdict::Success)
        );
        assert_eq!(t.record(t0, &ProbeResult::Success), None);
        assert_eq!(t.record(t0, &fail("a")), None);
        assert_eq!(t.record(t0, &fail("b")), None);
        // Unknown results count neither way.
        assert_eq!(t.record(t0, &ProbeResult::Unknown("u".into())), None);
        assert_eq!(
            t.record(t0, &fail("c")),
            Some(ProbeVerdict::Failure("c".into()))
        );
        assert_eq!(t.record(t0, &fail("d")), None);
        assert_eq!(t.verdict(), &ProbeVerdict::Failure("d".into()));
    }

    #[test]
    fn liveness_starts_alive_and_startup_finishes() {
        let t0 = Instant::now();
        let mut live = ProbeTracker::new(&probe(1, 1), ProbeKind::Liveness, t0);
        assert!(live.verdict().is_success());
        assert_eq!(live.record(t0, &ProbeResult::Success), None);
        assert_eq!(
            live.record(t0, &fail("dead")),
            Some(ProbeVerdict::Failure("dead".into()))
        );

        let mut start = ProbeTracker::new(&probe(1, 3), ProbeKind::Startup, t0);
        assert!(!start.verdict().is_success());
        assert!(!start.finished());
        assert_eq!(
            start.record(t0, &ProbeResult::Success),
            Some(ProbeVerdict::Success)
        );
        assert!(start.finished());
        assert!(!start.due(t0 + Duration::from_secs(3600)));

        // Failing `failureThreshold` times is a verdict of its own: the
        // container is restarted.
        let mut failing = ProbeTracker::new(&probe(1, 2), ProbeKind::Startup, t0);
        assert_eq!(failing.verdict(), &ProbeVerdict::Pending);
        assert_eq!(failing.record(t0, &fail("no")), None);
        assert_eq!(
            failing.record(t0, &fail("still no")),
            Some(ProbeVerdict::Failure("still no".into()))
        );
        assert!(!failing.finished());
    }

    #[tokio::test(start_paused = true)]
    async fn prober_task_follows_results_on_the_clock() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let calls = Arc::new(AtomicU32::new(0));
        let seen = calls.clone();
        // Succeeds on calls 0..3, fails afterwards.
        let mut rx = spawn_prober_with(&probe(2, 2), ProbeKind::Readiness, "c", move || {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 3 {
                    ProbeResult::Success
                } else {
                    ProbeResult::Failure(format!("call {n}"))
                }
            }
        });
        let t0 = Instant::now();
        assert!(!rx.borrow().is_success());
        rx.changed().await.unwrap();
        assert!(rx.borrow().is_success());
        // First probe at 7 s, second at 12 s: ready after the second.
        assert_eq!(t0.elapsed(), Duration::from_secs(12));
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow(), ProbeVerdict::Failure("call 4".into()));
        // Failures at 22 s and 27 s.
        assert_eq!(t0.elapsed(), Duration::from_secs(27));
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        drop(rx);
        tokio::time::sleep(Duration::from_secs(60)).await;
        // The task stopped with its last receiver (at most one call more).
        assert!(calls.load(Ordering::SeqCst) <= 6);
    }
}
