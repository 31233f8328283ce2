//! `GET /exec/{namespace}/{pod}/{container}`: a process in a running
//! container, its stdio streamed over a WebSocket (`kubectl exec`).
//!
//! The request is checked before the upgrade (a bad query, an unknown pod
//! or container, a container that does not run, a client that offers no
//! protocol served here get an HTTP error with a `Status`); from the
//! upgrade on, everything the client needs to know arrives on the error
//! channel: the exit code, or why the command could not start (an
//! executable that does not exist, say). The process is killed when the
//! client goes away; the session ends once it has exited and its output
//! has been sent.
//!
//! Query parameters (the API server's names, and the kubelet's in
//! brackets): `command` (repeated, the argv), `stdin` (`input`), `stdout`
//! (`output`), `stderr` (`error`), `tty`.
//!
//! Only WebSocket is served. A client that offers SPDY (`Upgrade:
//! SPDY/3.1`) is told so in a 400; kubectl 1.30 and later try WebSocket
//! first and only fall back to SPDY when that upgrade fails, so it sees
//! the real reason of a failure from the WebSocket attempt's checks, which
//! the SPDY attempt repeats before refusing.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use orch_core::server::Query;
use orch_core::ApiError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

use super::channel::{self, Inbound};
use super::{plain_segment, AgentPods, AgentServer, Body};
use crate::pod::{ExecError, ExecProcess, ExecRequest, ExecTerminal};

/// How long output is still forwarded after the process has exited (a
/// background process may hold its pipes open).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

/// How long the last messages may take to reach the client.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest chunk of output sent in one message.
const CHUNK_BYTES: usize = 32 << 10;

/// What the client asked to run and which streams it wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOptions {
    /// The command and its arguments.
    pub command: Vec<String>,
    /// The client writes to the process' stdin.
    pub stdin: bool,
    /// The client reads the process' stdout.
    pub stdout: bool,
    /// The client reads the process' stderr.
    pub stderr: bool,
    /// The process runs on a terminal (stdout carries its output).
    pub tty: bool,
}

impl ExecOptions {
    /// Reads and checks the query of an exec request.
    pub fn parse(raw: Option<&str>) -> Result<ExecOptions, ApiError> {
        let query = Query::parse(raw);
        let flag = |names: &[&str]| -> Result<bool, ApiError> {
            let Some(value) = names.iter().find_map(|n| query.get(n)) else {
                return Ok(false);
            };
            match value {
                "" | "1" | "true" | "True" => Ok(true),
                "0" | "false" | "False" => Ok(false),
                other => Err(ApiError::bad_request(format!(
                    "invalid value {other:?} for {}: want true or false",
                    names[0]
                ))),
            }
        };
        let tty = flag(&["tty"])?;
        let options = ExecOptions {
            command: query
                .all("command")
                .into_iter()
                .map(str::to_string)
                .collect(),
            stdin: flag(&["stdin", "input"])?,
            stdout: flag(&["stdout", "output"])?,
            // A terminal carries both outputs on stdout; a client asking
            // for stderr as well gets nothing there (as from the kubelet).
            stderr: flag(&["stderr", "error"])? && !tty,
            tty,
        };
        if options.command.is_empty() {
            return Err(ApiError::bad_request("you must specify at least 1 command"));
        }
        if !(options.stdin || options.stdout || options.stderr) {
            return Err(ApiError::bad_request(
                "you must specify at least 1 of stdin, stdout, stderr",
            ));
        }
        Ok(options)
    }
}

/// The kind of upgrade a request asks for.
enum Upgrade {
    /// A WebSocket handshake: its key and the protocol chosen.
    WebSocket { key: String, protocol: &'static str },
    /// SPDY, which orch does not serve.
    Spdy,
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> &'a str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The upgrade a request asks for, or why it cannot be served.
fn upgrade_of(req: &Request<Incoming>) -> Result<Upgrade, ApiError> {
    let upgrade = header(req, "upgrade");
    if upgrade.to_ascii_lowercase().starts_with("spdy") {
        return Ok(Upgrade::Spdy);
    }
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return Err(ApiError::bad_request(
            "exec needs an upgrade to a WebSocket (Upgrade: websocket) speaking v5.channel.k8s.io or v4.channel.k8s.io",
        ));
    }
    let key = header(req, "sec-websocket-key");
    if key.is_empty() {
        return Err(ApiError::bad_request(
            "the WebSocket handshake has no Sec-WebSocket-Key",
        ));
    }
    let offered = header(req, "sec-websocket-protocol");
    let protocol = channel::negotiate(offered).ok_or_else(|| {
        ApiError::bad_request(format!(
            "none of the offered protocols {offered:?} is served; orch speaks {}",
            channel::PROTOCOLS.join(", ")
        ))
    })?;
    Ok(Upgrade::WebSocket {
        key: key.to_string(),
        protocol,
    })
}

/// An [`ExecError`] found before the upgrade, as an HTTP error.
fn refusal(error: ExecError, pod: &str, container: &str) -> ApiError {
    match error {
        ExecError::Invalid(_) => {
            ApiError::not_found_message(format!("container not found ({container:?}) in pod {pod}"))
        }
        ExecError::NotRunning(_) => {
            ApiError::bad_request(format!("container {container} in pod {pod} is not running"))
        }
        other => ApiError::internal(other.to_string()),
    }
}

/// Serves an exec request: checks, then upgrades and streams.
pub(super) async fn exec(
    server: &AgentServer,
    mut req: Request<Incoming>,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Result<Response<Body>, ApiError> {
    let options = ExecOptions::parse(req.uri().query())?;
    let missing = || {
        ApiError::not_found_message(format!(
            "pod \"{namespace}/{pod}\" does not exist on this node"
        ))
    };
    if !plain_segment(namespace) || !plain_segment(pod) || !plain_segment(container) {
        return Err(missing());
    }
    let uid = server.pods.pod_uid(namespace, pod).ok_or_else(missing)?;
    let container_id = server
        .pods
        .running_container(&uid, container)
        .await
        .map_err(|e| refusal(e, pod, container))?;
    let (key, protocol) = match upgrade_of(&req)? {
        Upgrade::WebSocket { key, protocol } => (key, protocol),
        Upgrade::Spdy => {
            return Err(ApiError::bad_request(format!(
                "orch serves exec over WebSocket only ({}), not SPDY",
                channel::PROTOCOLS.join(", ")
            )))
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    server
        .exec_sessions
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let pods = server.pods.clone();
    let span =
        tracing::info_span!("exec", %namespace, %pod, %container, protocol, tty = options.tty);
    tokio::spawn(
        async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let socket = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        None,
                    )
                    .await;
                    session(pods, &container_id, options, socket).await;
                }
                Err(e) => tracing::debug!(error = %e, "the upgrade did not complete"),
            }
        }
        .instrument(span),
    );
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
        .header("sec-websocket-protocol", protocol)
        .body(super::empty_body())
        .expect("static response parts are valid"))
}

/// Sends what `output` yields on `channel` until its end (or until the
/// session's writer is gone).
async fn forward<R: AsyncRead + Unpin>(
    mut output: R,
    channel: u8,
    wanted: bool,
    sender: mpsc::Sender<Message>,
) {
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        match output.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) if wanted => {
                let frame = channel::frame(channel, &buf[..n]);
                if sender.send(Message::binary(frame)).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(channel, error = %e, "reading the process' output");
                return;
            }
        }
    }
}

/// One exec session on an upgraded connection.
async fn session<S>(
    pods: Arc<dyn AgentPods>,
    container_id: &str,
    options: ExecOptions,
    socket: WebSocketStream<S>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut inbound) = socket.split();
    let (sender, mut outbox) = mpsc::channel::<Message>(16);
    let writer = tokio::spawn(async move {
        while let Some(message) = outbox.recv().await {
            if sink.send(message).await.is_err() {
                return;
            }
        }
        // A normal closure (1000): clients read it as the end of every
        // stream, where a close without a code is an error to them.
        let normal = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = sink.send(Message::Close(Some(normal))).await;
        let _ = sink.close().await;
    });
    let request = ExecRequest {
        argv: options.command.clone(),
        env: Vec::new(),
        stdin: options.stdin,
        tty: options.tty,
    };
    let status = match pods.exec(container_id, request).await {
        Ok(process) => {
            tracing::debug!(pid = process.pid(), "started");
            match run(process, &options, &mut inbound, &sender).await {
                Some(code) => {
                    tracing::debug!(exit_code = code, "exited");
                    channel::exit_status(code, &options.command)
                }
                None => {
                    tracing::debug!("the client went away; the process was killed");
                    drop(sender);
                    let _ = writer.await;
                    return;
                }
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "could not start");
            channel::error_status(&start_failure(e))
        }
    };
    let status = channel::frame(channel::ERROR, status.to_string().as_bytes());
    let _ = sender.send(Message::binary(status)).await;
    drop(sender);
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer).await;
}

/// A failure to start the command, as the client is told on the error
/// channel.
fn start_failure(error: ExecError) -> ApiError {
    match error {
        ExecError::Start { message, argv0, .. } => ApiError::internal(format!(
            "error executing command in container: {argv0:?}: {message}"
        )),
        ExecError::NotRunning(id) => {
            ApiError::bad_request(format!("container {id} is not running"))
        }
        other => ApiError::internal(format!("error executing command in container: {other}")),
    }
}

/// Streams the process' stdio until it exits; its exit code, or `None` if
/// the client went away first (the process is then killed, by dropping
/// it).
async fn run<S>(
    mut process: ExecProcess,
    options: &ExecOptions,
    inbound: &mut futures::stream::SplitStream<WebSocketStream<S>>,
    sender: &mpsc::Sender<Message>,
) -> Option<i32>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut stdin = process.stdin.take();
    let terminal = process.terminal.take().map(Arc::new);
    let mut pumps = tokio::task::JoinSet::new();
    if let Some(stdout) = process.stdout.take() {
        pumps.spawn(forward(
            stdout,
            channel::STDOUT,
            options.stdout,
            sender.clone(),
        ));
    }
    if let Some(stderr) = process.stderr.take() {
        pumps.spawn(forward(
            stderr,
            channel::STDERR,
            options.stderr,
            sender.clone(),
        ));
    }
    if let Some(terminal) = terminal.clone() {
        let sender = sender.clone();
        let wanted = options.stdout;
        pumps.spawn(async move {
            forward(&*terminal, channel::STDOUT, wanted, sender).await;
        });
    }
    let code = loop {
        tokio::select! {
            code = process.wait() => break code,
            message = inbound.next() => {
                let data = match message {
                    Some(Ok(Message::Binary(data))) => data,
                    Some(Ok(Message::Text(text))) => text.as_bytes().to_vec().into(),
                    Some(Ok(Message::Close(_))) | None => return None,
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "reading the client's messages");
                        return None;
                    }
                };
                match channel::decode(&data) {
                    Ok(Inbound::Stdin(bytes)) => {
                        if let Some(terminal) = &terminal {
                            let _ = (&**terminal).write_all(bytes).await;
                        } else if let Some(pipe) = &mut stdin {
                            if pipe.write_all(bytes).await.is_err() {
                                // The process closed its stdin.
                                stdin = None;
                            }
                        }
                    }
                    Ok(Inbound::Resize { width, height }) => {
                        if let Some(terminal) = &terminal {
                            resize(terminal, width, height);
                        }
                    }
                    Ok(Inbound::Close(channel::STDIN)) => stdin = None,
                    Ok(Inbound::Close(_) | Inbound::Ignored) => {}
                    Err(e) => tracing::debug!(error = %e, "ignoring a client message"),
                }
            }
        }
    };
    drop(stdin);
    // The output written before the exit still goes out.
    let drained = tokio::time::timeout(DRAIN_AFTER_EXIT, async {
        while pumps.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!("output still open after the exit; not waiting for it");
        pumps.abort_all();
    }
    Some(code)
}

fn resize(terminal: &ExecTerminal, width: u16, height: u16) {
    if let Err(e) = terminal.resize(width, height) {
        tracing::debug!(error = %e, "resizing the terminal");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_queries_are_read_with_either_name() {
        let options = ExecOptions::parse(Some(
            "command=cat&command=%2Fetc%2Fhostname&stdout=true&stderr=1",
        ))
        .unwrap();
        assert_eq!(options.command, ["cat", "/etc/hostname"]);
        assert!(options.stdout && options.stderr && !options.stdin && !options.tty);
        let kubelet = ExecOptions::parse(Some("command=sh&input=1&output=1&tty=1")).unwrap();
        assert!(kubelet.stdin && kubelet.stdout && kubelet.tty);
        let tty = ExecOptions::parse(Some("command=sh&stdout=1&stderr=1&tty=1")).unwrap();
        assert!(tty.stdout && !tty.stderr);
    }

    #[test]
    fn bad_exec_queries_are_refused() {
        for query in [
            "stdout=true",
            "command=ls",
            "command=ls&stdout=maybe",
            "command=sh&tty=true",
        ] {
            let error = ExecOptions::parse(Some(query)).unwrap_err();
            assert_eq!(error.code, 400, "{query}: {}", error.message);
        }
    }
}
