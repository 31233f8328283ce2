//! `GET /containerLogs/{namespace}/{pod}/{container}`: a container's log
//! file, whole, tailed, limited or followed while the container runs.

use std::convert::Infallible;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{Response, StatusCode};
use orch_core::ApiError;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tracing::Instrument;

use super::{plain_segment, AgentPods, AgentServer, Body};

/// How often a followed log file is checked for new bytes.
pub const FOLLOW_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Largest chunk read from a log file at once.
const CHUNK_BYTES: usize = 32 << 10;

/// Why a log request fails.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// No or a wrong bearer token.
    #[error("unauthorized")]
    Unauthorized,
    /// The agent has no such pod.
    #[error("pod \"{namespace}/{name}\" does not exist on this node")]
    PodNotFound {
        /// Namespace.
        namespace: String,
        /// Pod name.
        name: String,
    },
    /// The container has no log on this node (not started yet, or not in
    /// the pod).
    #[error("container \"{container}\" in pod \"{namespace}/{name}\" has no log on this node")]
    ContainerNotFound {
        /// Namespace.
        namespace: String,
        /// Pod name.
        name: String,
        /// Container name.
        container: String,
    },
    /// `previous=true` but the container has run only once.
    #[error("previous terminated container \"{container}\" in pod \"{name}\" not found")]
    NoPrevious {
        /// Pod name.
        name: String,
        /// Container name.
        container: String,
    },
    /// A query parameter orch's logs cannot honour.
    #[error("{0} is not supported: orch's container logs carry no timestamps")]
    Unsupported(&'static str),
    /// A query parameter with a bad value.
    #[error("invalid value {value:?} for {parameter}: {expected}")]
    InvalidParameter {
        /// The parameter.
        parameter: &'static str,
        /// Its value.
        value: String,
        /// What it must be.
        expected: &'static str,
    },
    /// Reading the log directory or file failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        let message = e.to_string();
        match e {
            LogError::Unauthorized => ApiError::unauthorized(message),
            LogError::PodNotFound { .. } | LogError::ContainerNotFound { .. } => {
                ApiError::not_found_message(message)
            }
            LogError::NoPrevious { .. }
            | LogError::Unsupported(_)
            | LogError::InvalidParameter { .. } => ApiError::bad_request(message),
            LogError::Io { .. } => ApiError::internal(message),
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The options of a log request (the kubelet's `PodLogOptions` query).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep streaming what the container appends until it exits.
    pub follow: bool,
    /// The run before the current one.
    pub previous: bool,
    /// Only the last this many lines.
    pub tail_lines: Option<u64>,
    /// At most this many bytes in all.
    pub limit_bytes: Option<u64>,
}

impl LogOptions {
    /// Parses the query string of a log request.
    pub fn parse(query: Option<&str>) -> Result<LogOptions, LogError> {
        let mut options = LogOptions::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let flag = |parameter: &'static str| match value {
                "" | "true" | "1" | "True" => Ok(true),
                "false" | "0" | "False" => Ok(false),
                _ => Err(LogError::InvalidParameter {
                    parameter,
                    value: value.to_string(),
                    expected: "true or false",
                }),
            };
            let number = |parameter: &'static str, min: u64| {
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n >= min)
                    .ok_or_else(|| LogError::InvalidParameter {
                        parameter,
                        value: value.to_string(),
                        expected: if min == 0 {
                            "a whole number, 0 or more"
                        } else {
                            "a whole number, 1 or more"
                        },
                    })
            };
            match key {
                "follow" => options.follow = flag("follow")?,
                "previous" => options.previous = flag("previous")?,
                "tailLines" => options.tail_lines = Some(number("tailLines", 0)?),
                "limitBytes" => options.limit_bytes = Some(number("limitBytes", 1)?),
                "timestamps" if flag("timestamps")? => {
                    return Err(LogError::Unsupported("timestamps"));
                }
                "sinceSeconds" => return Err(LogError::Unsupported("sinceSeconds")),
                "sinceTime" => return Err(LogError::Unsupported("sinceTime")),
                // stdout and stderr share one file, in write order.
                "stream" if value.is_empty() || value == "All" => {}
                "stream" => {
                    return Err(LogError::InvalidParameter {
                        parameter: "stream",
                        value: value.to_string(),
                        expected: "All (stdout and stderr are kept together)",
                    })
                }
                _ => {}
            }
        }
        Ok(options)
    }
}

/// ascending.
pub fn attempts(container_dir: &Path) -> std::io::Result<Vec<u32>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(container_dir)? {
        let name = entry?.file_name();
        if let Some(attempt) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u32>().ok())
        {
            found.push(attempt);
        }
    }
    found.sort_unstable();
    Ok(found)
}

pub(super) async fn container_logs(
    server: &AgentServer,
    namespace: &str,
    name: &str,
    container: &str,
    options: &LogOptions,
) -> Result<Response<Body>, LogError> {
    let pod_missing = || LogError::PodNotFound {
        namespace: namespace.to_string(),
        name: name.to_string(),
    };
    let container_missing = || LogError::ContainerNotFound {
        namespace: namespace.to_string(),
        name: name.to_string(),
        container: container.to_string(),
    };
    if !plain_segment(namespace) || !plain_segment(name) {
        return Err(pod_missing());
    }
    if !plain_segment(container) {
        return Err(container_missing());
    }
    let uid = server
        .pods
        .pod_uid(namespace, name)
        .filter(|uid| plain_segment(uid))
        .ok_or_else(pod_missing)?;
    let dir = server
        .config
        .log_dir
        .join(format!("{namespace}_{name}_{uid}"))
        .join(container);
    let found = match attempts(&dir) {
        Ok(found) => found,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(container_missing()),
        Err(e) => return Err(io_error(&dir)(e)),
    };
    let attempt = match (found.as_slice(), options.previous) {
        ([], _) => return Err(container_missing()),
        ([.., current], false) => *current,
        ([.., previous, _], true) => *previous,
        ([_], true) => {
            return Err(LogError::NoPrevious {
                name: name.to_string(),
                container: container.to_string(),
            })
        }
    };
    let path = dir.join(format!("{attempt}.log"));
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(io_error(&path))?;
    let start = match options.tail_lines {
        Some(lines) => tail_offset(&mut file, lines)
            .await
            .map_err(io_error(&path))?,
        None => 0,
    };
    tracing::debug!(%uid, attempt, start, follow = options.follow, "serving log");
    let reader = LogReader {
        file,
        path,
        position: start,
        remaining: options.limit_bytes,
        follow: options.follow,
        pods: server.pods.clone(),
        uid,
        container: container.to_string(),
        attempt,
        exited: false,
    };
    // The reader runs as a task of its own (the agent's callback futures
    // need not be `Sync`, a response body must be), handing chunks over a
    // small channel; when the client goes away, the channel closes and the
    // task ends, even while it waits for the container to write.
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(reader.run(sender).instrument(tracing::Span::current()));
    let chunks = futures::stream::poll_fn(move |cx| {
        receiver
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok::<_, Infallible>(Frame::data(bytes))))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain")
        .body(BodyExt::boxed(StreamBody::new(chunks)))
        .expect("static response parts are valid"))
}

/// The offset where the last `lines` lines of a file start (a final line
/// without a newline counts as a line), read backwards from the end.
pub async fn tail_offset(file: &mut tokio::fs::File, lines: u64) -> std::io::Result<u64> {
    let len = file.metadata().await?.len();
    if lines == 0 {
        return Ok(len);
    }
    // A newline ending the file ends the last line, it does not start one.
    let mut end = len;
    if end > 0 {
        file.seek(SeekFrom::Start(end - 1)).await?;
        let mut last = [0u8; 1];
        file.read_exact(&mut last).await?;
        if last[0] == b'\n' {
            end -= 1;
        }
    }
    let mut seen = 0u64;
    let mut buf = vec![0u8; CHUNK_BYTES];
    while end > 0 {
        let from = end.saturating_sub(CHUNK_BYTES as u64);
        let size = (end - from) as usize;
        file.seek(SeekFrom::Start(from)).await?;
        file.read_exact(&mut buf[..size]).await?;
        for (i, byte) in buf[..size].iter().enumerate().rev() {
            if *byte == b'\n' {
                seen += 1;
                if seen == lines {
                    return Ok(from + i as u64 + 1);
                }
            }
        }
        end = from;
    }
    Ok(0)
}

/// Reads one log file from a position on, following it while the run may
/// still write.
struct LogReader {
    file: tokio::fs::File,
    path: PathBuf,
    position: u64,
    remaining: Option<u64>,
    follow: bool,
    pods: Arc<dyn AgentPods>,
    uid: String,
    container: String,
    attempt: u32,
    /// The run has exited: one more read to end of file, then done.
    exited: bool,
}

impl LogReader {
    /// Sends the log's chunks until its end or until the receiver is gone.
    async fn run(mut self, sender: tokio::sync::mpsc::Sender<Bytes>) {
        while let Some(chunk) = self.next_chunk(&sender).await {
            if sender.send(chunk).await.is_err() {
                break;
            }
        }
        tracing::debug!(position = self.position, "log stream ended");
    }

    /// The next bytes, or `None` at the end of the log (or once `sender`'s
    /// receiver is gone while waiting for more).
    async fn next_chunk(&mut self, sender: &tokio::sync::mpsc::Sender<Bytes>) -> Option<Bytes> {
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            if self.remaining == Some(0) {
                return None;
            }
            let want = match self.remaining {
                Some(left) => usize::try_from(left).unwrap_or(usize::MAX).min(CHUNK_BYTES),
                None => CHUNK_BYTES,
            };
            let n = match self.read_at(&mut buf[..want]).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "log read failed; ending the stream");
                    return None;
                }
            };
            if n > 0 {
                self.position += n as u64;
                if let Some(left) = &mut self.remaining {
                    *left -= n as u64;
                }
                buf.truncate(n);
                return Some(Bytes::from(buf));
            }
            // At the end of the file.
            if !self.follow || self.exited {
                return None;
            }
            if !self
                .pods
                .is_running(&self.uid, &self.container, self.attempt)
                .await
            {
                tracing::debug!("container exited; reading what is left");
                self.exited = true;
                continue;
            }
            tokio::select! {
                _ = sender.closed() => return None,
                _ = tokio::time::sleep(FOLLOW_POLL_INTERVAL) => {}
            }
        }
    }

    async fn read_at(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // A log truncated in place (copy-and-truncate rotation) starts over.
        let len = self.file.metadata().await?.len();
        if len < self.position {
            tracing::debug!(
                len,
                position = self.position,
                "log truncated; reading from its start"
            );
            self.position = 0;
        }
        if len == self.position {
            return Ok(0);
        }
        self.file.seek(SeekFrom::Start(self.position)).await?;
        self.file.read(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_options_are_parsed() {
        assert_eq!(
            LogOptions::parse(Some("follow=true&tailLines=2&previous=true&limitBytes=9")).unwrap(),
            LogOptions {
                follow: true,
                previous: true,
                tail_lines: Some(2),
                limit_bytes: Some(9)
            }
        );
        assert_eq!(LogOptions::parse(None).unwrap(), LogOptions::default());
        assert!(LogOptions::parse(Some("timestamps=false")).is_ok());
        assert!(matches!(
            LogOptions::parse(Some("timestamps=true")),
            Err(LogError::Unsupported("timestamps"))
        ));
        assert!(matches!(
            LogOptions::parse(Some("sinceSeconds=10")),
            Err(LogError::Unsupported("sinceSeconds"))
        ));
        assert!(LogOptions::parse(Some("tailLines=-1")).is_err());
        assert!(LogOptions::parse(Some("limitBytes=0")).is_err());
        assert!(LogOptions::parse(Some("follow=maybe")).is_err());
    }

    #[tokio::test]
    async fn tail_offsets_count_lines_from_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.log");
        let offset = |content: &'static str, lines: u64| {
            let path = path.clone();
            async move {
                std::fs::write(&path, content).unwrap();
                let mut file = tokio::fs::File::open(&path).await.unwrap();
                let start = tail_offset(&mut file, lines).await.unwrap() as usize;
                content[start..].to_string()
            }
        };
        assert_eq!(offset("a\nb\nc\n", 2).await, "b\nc\n");
        assert_eq!(offset("a\nb\nc", 2).await, "b\nc");
        assert_eq!(offset("a\nb\nc\n", 5).await, "a\nb\nc\n");
        assert_eq!(offset("a\nb\nc\n", 0).await, "");
        assert_eq!(offset("", 3).await, "");
        assert_eq!(offset("\n\n", 1).await, "\n");
    }
}
