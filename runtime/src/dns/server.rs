//! [`ClusterDns`]: the UDP and TCP listeners and the answer to each query.
//!
//! Each UDP datagram and each TCP connection is a task of its own (a
//! forwarded query may wait on upstream for seconds), with bounds on how
//! many run at once; past them queries are dropped, as an overloaded DNS
//! server does, and clients retry. A packet that is not a DNS query is
//! dropped (UDP) or ends the connection (TCP).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::forward::Upstream;
use super::records::{Answer, Records};
use super::DnsError;

/// How long to wait for an upstream server before trying the next.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// UDP queries answered at once; more are dropped.
const MAX_UDP_IN_FLIGHT: usize = 1024;
/// TCP connections served at once; more are closed.
const MAX_TCP_CONNECTIONS: usize = 256;
/// A TCP connection idle this long is closed (RFC 7766 suggests seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);
/// The UDP payload size we advertise in EDNS answers (the DNS flag day
/// 2020 value, which avoids IP fragmentation).
const EDNS_PAYLOAD: u16 = 1232;
/// The largest UDP answer we send, whatever the client advertises.
const MAX_UDP_ANSWER: usize = 4096;

/// How a query arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// The cluster DNS server: answers names under the cluster domain from
/// [`Records`], forwards the others to upstream servers.
pub struct ClusterDns {
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    local_addr: SocketAddr,
    handler: Arc<Handler>,
}

impl ClusterDns {
    /// Binds UDP and TCP on `addr` (port 53 in production; port 0 picks a
    /// free port, the same for both, see [`ClusterDns::local_addr`]).
    /// `upstream`: the servers to forward other names to, in order; none
    /// answers those names SERVFAIL.
    pub async fn bind(
        addr: SocketAddr,
        records: Records,
        upstream: Vec<SocketAddr>,
    ) -> Result<ClusterDns, DnsError> {
        let (udp, tcp) = bind_pair(addr).await?;
        let local_addr = udp.local_addr().map_err(|source| DnsError::Bind {
            proto: "udp",
            addr,
            source,
        })?;
        Ok(ClusterDns {
            udp: Arc::new(udp),
            tcp,
            local_addr,
            handler: Arc::new(Handler {
                records,
                upstream: Upstream {
                    servers: upstream,
                    timeout: DEFAULT_UPSTREAM_TIMEOUT,
                },
            }),
        })
    }

    /// The same server waiting `timeout` (instead of 2 s) for each upstream
    /// server.
    pub fn with_upstream_timeout(mut self, timeout: Duration) -> Self {
        if let Some(handler) = Arc::get_mut(&mut self.handler) {
            handler.upstream.timeout = timeout;
        }
        self
    }

    /// The address the server listens on (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves queries until `stop` is cancelled; queries under way are
    /// then abandoned.
    pub async fn run(self, stop: CancellationToken) {
        let ClusterDns {
            udp,
            tcp,
            local_addr,
            handler,
        } = self;
        tracing::info!(%local_addr, domain = %handler.records.domain(), "cluster DNS serving");
        let udp_slots = Arc::new(Semaphore::new(MAX_UDP_IN_FLIGHT));
        let tcp_slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
        let mut tasks = JoinSet::new();
        let mut buf = vec![0u8; 65535];
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                received = udp.recv_from(&mut buf) => match received {
                    Ok((n, peer)) => {
                        let Ok(slot) = udp_slots.clone().try_acquire_owned() else {
                            tracing::debug!(%peer, "too many DNS queries under way, dropping one");
                            continue;
                        };
                        let packet = buf[..n].to_vec();
                        let (udp, handler) = (udp.clone(), handler.clone());
                        tasks.spawn(async move {
                            let _slot = slot;
                            if let Some(answer) = handler.handle(&packet, Transport::Udp).await {
                                if let Err(error) = udp.send_to(&answer, peer).await {
                                    tracing::debug!(%peer, %error, "sending DNS answer");
                                }
                            }
                        });
                    }
                    // e.g. an ICMP error about an earlier answer: not fatal.
                    Err(error) => tracing::debug!(%error, "receiving DNS query"),
                },
                accepted = tcp.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let Ok(slot) = tcp_slots.clone().try_acquire_owned() else {
                            tracing::debug!(%peer, "too many DNS connections, closing one");
                            continue;
                        };
                        let handler = handler.clone();
                        tasks.spawn(async move {
                            let _slot = slot;
                            serve_tcp(&handler, stream).await;
                        });
                    }
                    Err(error) => {
                        tracing::warn!(%error, "accepting DNS connection");
                        // Out of file descriptors, say: let some close.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        tasks.shutdown().await;
        tracing::info!(%local_addr, "cluster DNS stopped");
    }

    /// Runs the server on a task of its own until `stop` is cancelled.
    pub fn spawn(self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run(stop))
    }
}

/// Binds UDP then TCP on `addr`; with port 0, retries until the port UDP
/// got is free for TCP too.
async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let mut attempts = 0;
    loop {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|source| DnsError::Bind {
                proto: "udp",
                addr,
                source,
            })?;
        let bound = udp.local_addr().map_err(|source| DnsError::Bind {
            proto: "udp",
            addr,
            source,
        })?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(_) if addr.port() == 0 && attempts < 16 => attempts += 1,
            Err(source) => {
                return Err(DnsError::Bind {
                    proto: "tcp",
                    addr: bound,
                    source,
                })
            }
        }
    }
}

/// Serves the queries of one TCP connection, in order, until the client
/// closes it, stays idle, or sends something that is not a query.
async fn serve_tcp(handler: &Handler, mut stream: TcpStream) {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut packet = vec![0u8; usize::from(u16::from_be_bytes(len))];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut packet)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Some(answer) = handler.handle(&packet, Transport::Tcp).await else {
            return;
        };
        let Ok(len) = u16::try_from(answer.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(answer.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&answer);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// Answers queries: from the zone, or from upstream.
struct Handler {
    records: Records,
    upstream: Upstream,
}

impl Handler {
    /// The answer to one DNS message, or `None` to drop it (not a DNS
    /// query).
    async fn handle(&self, packet: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let request = match Message::from_vec(packet) {
            Ok(request) => request,
            Err(error) => {
                tracing::debug!(%error, ?transport, "dropping malformed DNS packet");
                return None;
            }
        };
        if request.metadata.message_type != MessageType::Query {
            return None; // Never answer answers: no loops, no reflection.
        }
        let (name, qtype) = request
            .queries
            .first()
            .map(|q| (q.name().to_string(), q.query_type().to_string()))
            .unwrap_or_default();
        let span =
            tracing::debug_span!("dns_query", id = request.metadata.id, %name, %qtype, ?transport);
        async {
            let answer = self.answer(&request, packet, transport).await;
            if answer.is_empty() {
                return None; // Not even SERVFAIL could be encoded.
            }
            tracing::debug!(bytes = answer.len(), "answered");
            Some(answer)
        }
        .instrument(span)
        .await
    }

    async fn answer(&self, request: &Message, packet: &[u8], transport: Transport) -> Vec<u8> {
        let limit = match transport {
            Transport::Tcp => usize::from(u16::MAX),
            Transport::Udp => request.edns.as_ref().map_or(512, |e| {
                usize::from(e.max_payload()).clamp(512, MAX_UDP_ANSWER)
            }),
        };
        match request.metadata.op_code {
            OpCode::Query => {}
            // We hold the zone but take no dynamic updates.
            OpCode::Update => {
                return self.encode(self.response(request, ResponseCode::Refused), limit)
            }
            _ => return self.encode(self.response(request, ResponseCode::NotImp), limit),
        }
        let [query] = request.queries.as_slice() else {
            return self.encode(self.response(request, ResponseCode::FormErr), limit);
        };
        let in_zone = self.records.domain().zone_of(query.name());
        if matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR) {
            return self.encode(self.response(request, ResponseCode::Refused), limit);
        }
        if query.query_class() != DNSClass::IN && query.query_class() != DNSClass::ANY {
            return if in_zone {
                self.encode(self.response(request, ResponseCode::Refused), limit)
            } else {
                self.forward(request, packet, transport, limit).await
            };
        }
        let mut response = self.response(request, ResponseCode::NoError);
        match self.records.lookup(query.name(), query.query_type()) {
            Answer::NotInZone => return self.forward(request, packet, transport, limit).await,
            Answer::NxDomain => {
                tracing::debug!("NXDOMAIN");
                response.metadata.authoritative = true;
                response.metadata.response_code = ResponseCode::NXDomain;
                response.add_authority(self.records.soa());
            }
            Answer::Found {
                answers,
                additionals,
                chase,
            } => {
                response.metadata.authoritative = true;
                response.add_answers(answers);
                response.add_additionals(additionals);
                if let Some(target) = chase {
                    response.add_answers(self.chase(request, target, query.query_type()).await);
                }
                if response.answers.is_empty() {
                    tracing::debug!("NODATA");
                    response.add_authority(self.records.soa());
                }
            }
        }
        self.encode(response, limit)
    }

    /// The records of `target` (an ExternalName Service's CNAME target)
    /// from upstream, to append after the CNAME as CoreDNS does; none if
    /// upstream does not know them.
    async fn chase(
        &self,
        request: &Message,
        target: hickory_proto::rr::Name,
        qtype: RecordType,
    ) -> Vec<hickory_proto::rr::Record> {
        if self.upstream.servers.is_empty() {
            return Vec::new();
        }
        let mut query = Message::query();
        query.metadata.id = request.metadata.id;
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(target, qtype));
        let Ok(bytes) = query.to_vec() else {
            return Vec::new();
        };
        match self
            .upstream
            .exchange(&bytes, true)
            .await
            .map(|a| Message::from_vec(&a))
        {
            Ok(Ok(answer)) => answer.answers,
            Ok(Err(error)) => {
                tracing::debug!(%error, "malformed upstream answer");
                Vec::new()
            }
            Err(error) => {
                tracing::debug!(%error, "chasing CNAME upstream");
                Vec::new()
            }
        }
    }

    /// The client's query relayed to the upstream servers; their answer,
    /// or SERVFAIL.
    async fn forward(
        &self,
        request: &Message,
        packet: &[u8],
        transport: Transport,
        limit: usize,
    ) -> Vec<u8> {
        if self.upstream.servers.is_empty() {
            tracing::debug!("no upstream DNS server: SERVFAIL");
            return self.encode(self.response(request, ResponseCode::ServFail), limit);
        }
        match self
            .upstream
            .exchange(packet, transport == Transport::Tcp)
            .await
        {
            Ok(mut answer) => {
                tracing::debug!("forwarded");
                // The id is the client's already (we relay its query); make
                // sure of it.
                answer[..2].copy_from_slice(&request.metadata.id.to_be_bytes());
                answer
            }
            Err(error) => {
                tracing::debug!(%error, "forwarding: SERVFAIL");
                self.encode(self.response(request, ResponseCode::ServFail), limit)
            }
        }
    }

    /// An empty response to `request` with `code`.
    fn response(&self, request: &Message, code: ResponseCode) -> Message {
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.checking_disabled = request.metadata.checking_disabled;
        response.metadata.recursion_available = !self.upstream.servers.is_empty();
        response.metadata.response_code = code;
        response.add_queries(request.queries.iter().cloned());
        if request.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_PAYLOAD);
            response.set_edns(edns);
        }
        response
    }

    /// `response` on the wire, truncated (TC, no records) if longer than
    /// `limit`; SERVFAIL if it cannot be encoded.
    fn encode(&self, response: Message, limit: usize) -> Vec<u8> {
        match response.to_vec() {
            Ok(bytes) if bytes.len() <= limit => bytes,
            Ok(_) => response.truncate().to_vec().unwrap_or_default(),
            Err(error) => {
                tracing::warn!(%error, "encoding DNS answer");
                let mut failed = Message::error_msg(
                    response.metadata.id,
                    response.metadata.op_code,
                    ResponseCode::ServFail,
                );
                failed.add_queries(response.queries.iter().cloned());
                failed.to_vec().unwrap_or_default()
            }
        }
    }
}
