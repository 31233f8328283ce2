//! Forwarding to the upstream servers, as CoreDNS' `forward` plugin: the
//! client's query as it came, over UDP from a fresh socket (a new random
//! source port each time), to each server in turn until one answers within
//! the timeout; over TCP to the same server when the answer was truncated
//! and the client came over TCP.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::DnsError;

/// The upstream servers and how long to wait for each.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    pub(crate) servers: Vec<SocketAddr>,
    pub(crate) timeout: Duration,
}

impl Upstream {
    /// Asks the servers `query` (a whole DNS message) in turn; the first
    /// answer to it, with the query's id. `tcp_if_truncated`: ask again
    /// over TCP when the UDP answer is truncated.
    pub(crate) async fn exchange(
        &self,
        query: &[u8],
        tcp_if_truncated: bool,
    ) -> Result<Vec<u8>, DnsError> {
        let request = Message::from_vec(query).map_err(|e| DnsError::Proto(e.to_string()))?;
        for server in &self.servers {
            let attempt = async {
                let answer = udp_exchange(*server, query, &request).await?;
                if tcp_if_truncated && is_truncated(&answer) {
                    return tcp_exchange(*server, query, &request).await;
                }
                Ok(answer)
            };
            match tokio::time::timeout(self.timeout, attempt).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(source)) => {
                    tracing::debug!(%server, error = %source, "upstream DNS server failed, trying the next");
                }
                Err(_) => {
                    tracing::debug!(%server, "upstream DNS server timed out, trying the next")
                }
            }
        }
        Err(DnsError::NoUpstream)
    }
}

/// True when a DNS message has the TC bit.
fn is_truncated(message: &[u8]) -> bool {
    message.len() > 2 && message[2] & 0x02 != 0
}

/// True when `answer` answers `request`: a response with its id and its
/// question. Anything else arriving on the socket is ignored.
fn answers(answer: &[u8], request: &Message) -> bool {
    match Message::from_vec(answer) {
        Ok(message) => {
            message.metadata.message_type == MessageType::Response
                && message.metadata.id == request.metadata.id
                && message.queries == request.queries
        }
        Err(_) => false,
    }
}

async fn udp_exchange(
    server: SocketAddr,
    query: &[u8],
    request: &Message,
) -> Result<Vec<u8>, DnsError> {
    let io = |source| DnsError::Upstream { server, source };
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await.map_err(io)?;
    // Connected: the kernel drops datagrams from anyone but the server.
    socket.connect(server).await.map_err(io)?;
    socket.send(query).await.map_err(io)?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = socket.recv(&mut buf).await.map_err(io)?;
        if answers(&buf[..n], request) {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn tcp_exchange(
    server: SocketAddr,
    query: &[u8],
    request: &Message,
) -> Result<Vec<u8>, DnsError> {
    let io = |source| DnsError::Upstream { server, source };
    let mut stream = TcpStream::connect(server).await.map_err(io)?;
    let len = u16::try_from(query.len()).map_err(|_| DnsError::Proto("query too long".into()))?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await.map_err(io)?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.map_err(io)?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut answer).await.map_err(io)?;
    if !answers(&answer, request) {
        return Err(DnsError::Proto("upstream answered another question".into()));
    }
    Ok(answer)
}
