//! Tests of the cluster DNS: the zone's answers ([`Records::lookup`]), the
//! pods' resolv.conf, and the server through real sockets on 127.0.0.1.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::{
    PodDNSConfig, PodDNSConfigOption, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use super::{
    pod_resolv_conf, upstream_from_resolv_conf, Answer, ClusterDns, Records, StaticSource,
};

// ---------------------------------------------------------------- fixtures

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}

fn port(name: &str, protocol: &str, number: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        protocol: Some(protocol.into()),
        port: number,
        ..Default::default()
    }
}

/// A Service of `type_` with `cluster_ip` ("None": headless).
fn service(
    ns: &str,
    name: &str,
    type_: &str,
    cluster_ip: &str,
    ports: Vec<ServicePort>,
) -> Arc<Service> {
    Arc::new(Service {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            type_: Some(type_.into()),
            cluster_ip: Some(cluster_ip.into()),
            cluster_ips: Some(vec![cluster_ip.into()]),
            ports: Some(ports),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn external(ns: &str, name: &str, target: &str) -> Arc<Service> {
    Arc::new(Service {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            type_: Some("ExternalName".into()),
            external_name: Some(target.into()),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// An endpoint: address, `conditions.ready`, hostname.
type Ep<'a> = (&'a str, Option<bool>, Option<&'a str>);

/// An EndpointSlice of Service `ns/svc` with a port `(name, number)`.
fn slice(
    ns: &str,
    svc: &str,
    suffix: &str,
    endpoints: &[Ep<'_>],
    ports: &[(&str, i32)],
) -> Arc<EndpointSlice> {
    let mut metadata = meta(ns, &format!("{svc}-{suffix}"));
    metadata.labels = Some(BTreeMap::from([(
        "kubernetes.io/service-name".to_string(),
        svc.to_string(),
    )]));
    Arc::new(EndpointSlice {
        metadata,
        address_type: "IPv4".into(),
        endpoints: endpoints
            .iter()
            .map(|(ip, ready, hostname)| Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: *ready,
                    ..Default::default()
                }),
                hostname: hostname.map(str::to_string),
                ..Default::default()
            })
            .collect(),
        ports: Some(
            ports
                .iter()
                .map(|(name, number)| EndpointPort {
                    name: Some(name.to_string()),
                    port: Some(*number),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                })
                .collect(),
        ),
    })
}

/// A small cluster:
/// - `default/web`: ClusterIP 10.96.0.10, ports `http` 80/TCP and `dns` 53/UDP;
/// - `default/db`: headless, ready pods 10.244.1.5 (`db-0`) and 10.244.2.7
///   (`db-1`), a pod 10.244.3.9 not ready, port `pg` 5432 on the pods;
/// - `default/google`: ExternalName `www.example.com`;
/// - `default/alias`: ExternalName `web.default.svc.cluster.local`;
/// - `prod/api`: NodePort 10.96.5.5;
/// - `prod/many`: headless with 60 ready pods (a big answer).
fn cluster() -> StaticSource {
    let many: Vec<String> = (1..=60).map(|i| format!("10.250.0.{i}")).collect();
    let many_eps: Vec<Ep<'_>> = many
        .iter()
        .map(|ip| (ip.as_str(), Some(true), None))
        .collect();
    StaticSource {
        services: vec![
            service(
                "default",
                "web",
                "ClusterIP",
                "10.96.0.10",
                vec![port("http", "TCP", 80), port("dns", "UDP", 53)],
            ),
            service(
                "default",
                "db",
                "ClusterIP",
                "None",
                vec![port("pg", "TCP", 5432)],
            ),
            external("default", "google", "www.example.com"),
            external("default", "alias", "web.default.svc.cluster.local"),
            service(
                "prod",
                "api",
                "NodePort",
                "10.96.5.5",
                vec![port("https", "TCP", 443)],
            ),
            service("prod", "many", "ClusterIP", "None", vec![]),
        ],
        slices: vec![
            slice(
                "default",
                "db",
                "a",
                &[
                    ("10.244.2.7", Some(true), Some("db-1")),
                    ("10.244.3.9", Some(false), Some("db-2")),
                ],
                &[("pg", 5432)],
            ),
            // `ready` unset counts as ready.
            slice(
                "default",
                "db",
                "b",
                &[("10.244.1.5", None, Some("db-0"))],
                &[("pg", 5432)],
            ),
            // Same name in another namespace: not `default/db`'s.
            slice("prod", "db", "a", &[("10.9.9.9", Some(true), None)], &[]),
            slice("prod", "many", "a", &many_eps, &[]),
        ],
    }
}

fn records() -> Records {
    Records::new(cluster())
}

fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap()
}

/// The record data of an answer; panics if it is not `Found`.
fn found(answer: Answer) -> Vec<RData> {
    match answer {
        Answer::Found { answers, .. } => answers.into_iter().map(|r| r.data.clone()).collect(),
        other => panic!("expected records, got {other:?}"),
    }
}

fn a(ip: &str) -> RData {
    RData::A(A(ip.parse().unwrap()))
}

// ------------------------------------------------------------------ zone

#[test]
fn cluster_ip_service_answers_its_cluster_ip() {
    let zone = records();
    let answer = zone.lookup(&name("web.default.svc.cluster.local."), RecordType::A);
    let Answer::Found { answers, .. } = answer else {
        panic!("expected records, got {answer:?}");
    };
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].data, a("10.96.0.10"));
    assert_eq!(answers[0].ttl, 5);
    assert_eq!(answers[0].name, name("web.default.svc.cluster.local."));
    // NodePort (and LoadBalancer) Services have a cluster IP too.
    assert_eq!(
        found(zone.lookup(&name("api.prod.svc.cluster.local."), RecordType::A)),
        vec![a("10.96.5.5")]
    );
}

#[test]
fn names_are_case_insensitive() {
    assert_eq!(
        found(records().lookup(&name("WEB.Default.SVC.Cluster.LOCAL."), RecordType::A)),
        vec![a("10.96.0.10")]
    );
}

#[test]
fn aaaa_of_an_ipv4_service_is_nodata() {
    assert_eq!(
        found(records().lookup(&name("web.default.svc.cluster.local."), RecordType::AAAA)),
        vec![]
    );
}

#[test]
fn headless_service_answers_its_ready_endpoints() {
    assert_eq!(
        found(records().lookup(&name("db.default.svc.cluster.local."), RecordType::A)),
        vec![a("10.244.1.5"), a("10.244.2.7")],
        "ready pods only (10.244.3.9 is not ready), not prod/db's"
    );
}

#[test]
fn headless_endpoints_by_hostname() {
    let zone = records();
    assert_eq!(
        found(zone.lookup(&name("db-0.db.default.svc.cluster.local."), RecordType::A)),
        vec![a("10.244.1.5")]
    );
    assert_eq!(
        found(zone.lookup(&name("db-1.db.default.svc.cluster.local."), RecordType::A)),
        vec![a("10.244.2.7")]
    );
    // Not ready: not published.
    assert_eq!(
        zone.lookup(&name("db-2.db.default.svc.cluster.local."), RecordType::A),
        Answer::NxDomain
    );
    // Endpoints without a hostname are named by their dashed address.
    let many = zone.lookup(
        &name("10-250-0-7.many.prod.svc.cluster.local."),
        RecordType::A,
    );
    assert_eq!(found(many), vec![a("10.250.0.7")]);
}

#[test]
fn publish_not_ready_addresses_publishes_every_endpoint() {
    let mut source = cluster();
    let mut db = (*source.services[1]).clone();
    db.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
    source.services[1] = Arc::new(db);
    assert_eq!(
        found(Records::new(source).lookup(&name("db.default.svc.cluster.local."), RecordType::A)),
        vec![a("10.244.1.5"), a("10.244.2.7"), a("10.244.3.9")]
    );
}

#[test]
fn external_name_service_is_a_cname() {
    let zone = records();
    let target = name("www.example.com.");
    match zone.lookup(&name("google.default.svc.cluster.local."), RecordType::A) {
        Answer::Found { answers, chase, .. } => {
            assert_eq!(answers.len(), 1);
            assert_eq!(answers[0].data, RData::CNAME(CNAME(target.clone())));
            assert_eq!(
                chase,
                Some(target.clone()),
                "the server fetches the target's A upstream"
            );
        }
        other => panic!("expected a CNAME, got {other:?}"),
    }
    match zone.lookup(
        &name("google.default.svc.cluster.local."),
        RecordType::CNAME,
    ) {
        Answer::Found { answers, chase, .. } => {
            assert_eq!(answers[0].data, RData::CNAME(CNAME(target)));
            assert_eq!(chase, None);
        }
        other => panic!("expected a CNAME, got {other:?}"),
    }
    // A target inside the zone is followed here.
    assert_eq!(
        found(zone.lookup(&name("alias.default.svc.cluster.local."), RecordType::A)),
        vec![
            RData::CNAME(CNAME(name("web.default.svc.cluster.local."))),
            a("10.96.0.10")
        ]
    );
}

#[test]
fn srv_of_named_ports() {
    let zone = records();
    match zone.lookup(
        &name("_http._tcp.web.default.svc.cluster.local."),
        RecordType::SRV,
    ) {
        Answer::Found {
            answers,
            additionals,
            ..
        } => {
            assert_eq!(
                answers.iter().map(|r| r.data.clone()).collect::<Vec<_>>(),
                vec![RData::SRV(SRV::new(
                    0,
                    100,
                    80,
                    name("web.default.svc.cluster.local.")
                ))]
            );
            assert_eq!(additionals.len(), 1, "the target's address");
            assert_eq!(additionals[0].data, a("10.96.0.10"));
        }
        other => panic!("expected SRV, got {other:?}"),
    }
    assert_eq!(
        found(zone.lookup(
            &name("_DNS._UDP.web.default.svc.cluster.local."),
            RecordType::SRV
        )),
        vec![RData::SRV(SRV::new(
            0,
            100,
            53,
            name("web.default.svc.cluster.local.")
        ))]
    );
    // Wrong protocol or port name: no such name.
    for missing in [
        "_http._udp.web.default.svc.cluster.local.",
        "_ftp._tcp.web.default.svc.cluster.local.",
    ] {
        assert_eq!(
            zone.lookup(&name(missing), RecordType::SRV),
            Answer::NxDomain,
            "{missing}"
        );
    }
    // The protocol level exists (empty non-terminal).
    assert_eq!(
        found(zone.lookup(
            &name("_tcp.web.default.svc.cluster.local."),
            RecordType::SRV
        )),
        vec![]
    );
    // Headless: one SRV per ready pod, to the pod's name and port.
    assert_eq!(
        found(zone.lookup(
            &name("_pg._tcp.db.default.svc.cluster.local."),
            RecordType::SRV
        )),
        vec![
            RData::SRV(SRV::new(
                0,
                50,
                5432,
                name("db-0.db.default.svc.cluster.local.")
            )),
            RData::SRV(SRV::new(
                0,
                50,
                5432,
                name("db-1.db.default.svc.cluster.local.")
            )),
        ]
    );
}

#[test]
fn missing_names_are_nxdomain_and_parents_exist() {
    let zone = records();
    for missing in [
        "nope.default.svc.cluster.local.",
        "web.nowhere.svc.cluster.local.",
        "nowhere.svc.cluster.local.",
        "foo.cluster.local.",
        "a.b.c.web.default.svc.cluster.local.",
        "1-2-3.default.pod.cluster.local.",
        // What a pod's search path makes of an outside name.
        "example.com.default.svc.cluster.local.",
    ] {
        assert_eq!(
            zone.lookup(&name(missing), RecordType::A),
            Answer::NxDomain,
            "{missing}"
        );
    }
    for parent in [
        "cluster.local.",
        "svc.cluster.local.",
        "default.svc.cluster.local.",
    ] {
        assert_eq!(
            found(zone.lookup(&name(parent), RecordType::A)),
            vec![],
            "{parent}"
        );
    }
}

#[test]
fn pod_names_answer_their_address() {
    let zone = records();
    assert_eq!(
        found(zone.lookup(
            &name("10-244-1-5.default.pod.cluster.local."),
            RecordType::A
        )),
        vec![a("10.244.1.5")]
    );
    assert_eq!(
        found(zone.lookup(
            &name("fd00--5.default.pod.cluster.local."),
            RecordType::AAAA
        )),
        vec![RData::AAAA(AAAA("fd00::5".parse().unwrap()))]
    );
}

#[test]
fn outside_names_are_not_ours() {
    let zone = records();
    assert_eq!(
        zone.lookup(&name("example.com."), RecordType::A),
        Answer::NotInZone
    );
    assert_eq!(
        zone.lookup(&name("cluster.local.com."), RecordType::A),
        Answer::NotInZone
    );
    // Reverse names of unknown addresses go upstream too.
    assert_eq!(
        zone.lookup(&name("8.8.8.8.in-addr.arpa."), RecordType::PTR),
        Answer::NotInZone
    );
}

#[test]
fn reverse_names_of_services_and_pods() {
    let zone = records();
    assert_eq!(
        found(zone.lookup(&name("10.0.96.10.in-addr.arpa."), RecordType::PTR)),
        vec![RData::PTR(PTR(name("web.default.svc.cluster.local.")))]
    );
    assert_eq!(
        found(zone.lookup(&name("5.1.244.10.in-addr.arpa."), RecordType::PTR)),
        vec![RData::PTR(PTR(name("db-0.db.default.svc.cluster.local.")))]
    );
}

#[test]
fn domain_and_ttl_are_configurable() {
    let zone = records().with_domain("Corp.Example.").unwrap().with_ttl(30);
    let answer = zone.lookup(&name("web.default.svc.corp.example."), RecordType::A);
    let Answer::Found { answers, .. } = answer else {
        panic!("expected records, got {answer:?}");
    };
    assert_eq!(answers[0].ttl, 30);
    assert_eq!(answers[0].data, a("10.96.0.10"));
    assert_eq!(
        zone.lookup(&name("web.default.svc.cluster.local."), RecordType::A),
        Answer::NotInZone
    );
    assert!(records().with_domain("").is_err());
}

// ----------------------------------------------------------- resolv.conf

const HOST: &str = "# generated by NetworkManager\n\
                    nameserver 192.168.1.1\n\
                    nameserver 1.1.1.1\n\
                    search lan example.org.\n\
                    options edns0 timeout:2\n";

fn cluster_dns() -> Vec<IpAddr> {
    vec!["10.96.0.10".parse().unwrap()]
}

#[test]
fn cluster_first_pod_resolv_conf() {
    let conf = pod_resolv_conf(
        None,
        false,
        "shop",
        &cluster_dns(),
        "cluster.local",
        HOST,
        None,
    );
    assert_eq!(
        conf,
        "nameserver 10.96.0.10\n\
         search shop.svc.cluster.local svc.cluster.local cluster.local lan example.org\n\
         options ndots:5\n"
    );
    assert_eq!(
        pod_resolv_conf(
            Some("ClusterFirst"),
            false,
            "shop",
            &cluster_dns(),
            "cluster.local",
            HOST,
            None
        ),
        conf
    );
}

#[test]
fn host_network_pods_get_the_host_dns_unless_asked() {
    let host = "nameserver 192.168.1.1\nnameserver 1.1.1.1\nsearch lan example.org\noptions edns0 timeout:2\n";
    let conf = pod_resolv_conf(
        Some("ClusterFirst"),
        true,
        "shop",
        &cluster_dns(),
        "cluster.local",
        HOST,
        None,
    );
    assert_eq!(conf, host);
    assert_eq!(
        pod_resolv_conf(
            Some("Default"),
            false,
            "shop",
            &cluster_dns(),
            "cluster.local",
            HOST,
            None
        ),
        host
    );
    let conf = pod_resolv_conf(
        Some("ClusterFirstWithHostNet"),
        true,
        "shop",
        &cluster_dns(),
        "cluster.local",
        HOST,
        None,
    );
    assert!(
        conf.starts_with("nameserver 10.96.0.10\nsearch shop.svc.cluster.local "),
        "{conf}"
    );
    // No cluster DNS configured: the host's, as the kubelet falls back.
    assert_eq!(
        pod_resolv_conf(None, false, "shop", &[], "cluster.local", HOST, None),
        host
    );
}

#[test]
fn dns_config_is_merged_on_top() {
    let extra = PodDNSConfig {
        nameservers: Some(vec!["10.96.0.10".into(), "9.9.9.9".into()]),
        searches: Some(vec!["corp.internal".into(), "svc.cluster.local".into()]),
        options: Some(vec![
            PodDNSConfigOption {
                name: Some("ndots".into()),
                value: Some("2".into()),
            },
            PodDNSConfigOption {
                name: Some("single-request-reopen".into()),
                value: None,
            },
        ]),
    };
    let conf = pod_resolv_conf(
        Some("ClusterFirst"),
        false,
        "shop",
        &cluster_dns(),
        "cluster.local",
        HOST,
        Some(&extra),
    );
    assert_eq!(
        conf,
        "nameserver 10.96.0.10\n\
         nameserver 9.9.9.9\n\
         search shop.svc.cluster.local svc.cluster.local cluster.local lan example.org corp.internal\n\
         options ndots:2 single-request-reopen\n"
    );
    // `None`: nothing but the pod's own config.
    let conf = pod_resolv_conf(
        Some("None"),
        false,
        "shop",
        &cluster_dns(),
        "cluster.local",
        HOST,
        Some(&extra),
    );
    assert_eq!(
        conf,
        "nameserver 10.96.0.10\n\
         nameserver 9.9.9.9\n\
         search corp.internal svc.cluster.local\n\
         options ndots:2 single-request-reopen\n"
    );
}

#[test]
fn pod_resolv_conf_limits() {
    let extra = PodDNSConfig {
        nameservers: Some(vec!["1.1.1.1".into(), "8.8.8.8".into(), "9.9.9.9".into()]),
        searches: Some((0..40).map(|i| format!("d{i}.example")).collect()),
        options: None,
    };
    let conf = pod_resolv_conf(
        Some("None"),
        false,
        "x",
        &[],
        "cluster.local",
        "",
        Some(&extra),
    );
    let lines: Vec<&str> = conf.lines().collect();
    assert_eq!(
        lines[..3],
        [
            "nameserver 1.1.1.1",
            "nameserver 8.8.8.8",
            "nameserver 9.9.9.9"
        ]
    );
    assert_eq!(lines.len(), 4, "3 nameservers and a search line: {conf}");
    assert_eq!(
        lines[3].split_whitespace().count(),
        1 + 32,
        "32 search domains at most"
    );
}

#[test]
fn upstream_servers_from_the_hosts_resolv_conf() {
    let text = "; comment\n# nameserver 6.6.6.6\nnameserver 192.168.1.1\nnameserver  2001:4860:4860::8888 \n\
                nameserver fe80::1%2\nnameserver not-an-ip\nnameserver\nsearch lan\n";
    assert_eq!(
        upstream_from_resolv_conf(text),
        vec![
            "192.168.1.1:53".parse::<SocketAddr>().unwrap(),
            "[2001:4860:4860::8888]:53".parse().unwrap(),
            "[fe80::1%2]:53".parse().unwrap(),
        ]
    );
    assert!(upstream_from_resolv_conf("").is_empty());
}

// --------------------------------------------------------- real sockets

/// A stand-in for the node's upstream resolver (a test double, not a real
/// DNS server): answers every A question over UDP with 93.184.216.34 and
/// counts the questions it got.
async fn fake_upstream() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = asked.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut answer = Message::response(query.metadata.id, OpCode::Query);
            answer.metadata.recursion_available = true;
            answer.add_queries(query.queries.iter().cloned());
            for q in &query.queries {
                if q.query_type() == RecordType::A {
                    answer.add_answer(Record::from_rdata(
                        q.name().clone(),
                        300,
                        a("93.184.216.34"),
                    ));
                }
            }
            let _ = socket.send_to(&answer.to_vec().unwrap(), peer).await;
        }
    });
    (addr, asked)
}

/// Starts a cluster DNS on 127.0.0.1, port 0.
async fn start(
    upstream: Vec<SocketAddr>,
) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
    let server = ClusterDns::bind("127.0.0.1:0".parse().unwrap(), records(), upstream)
        .await
        .unwrap()
        .with_upstream_timeout(Duration::from_millis(300));
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    let stop = CancellationToken::new();
    let handle = server.spawn(stop.clone());
    (addr, stop, handle)
}

fn question(id: u16, qname: &str, qtype: RecordType) -> Message {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name(qname), qtype));
    message
}

async fn ask_udp_raw(server: SocketAddr, packet: &[u8], wait: Duration) -> Option<Message> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(packet, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = tokio::time::timeout(wait, socket.recv_from(&mut buf))
        .await
        .ok()?
        .unwrap();
    Some(Message::from_vec(&buf[..n]).unwrap())
}

async fn ask_udp(server: SocketAddr, message: &Message) -> Message {
    ask_udp_raw(server, &message.to_vec().unwrap(), Duration::from_secs(3))
        .await
        .expect("an answer over UDP")
}

async fn ask_tcp(server: SocketAddr, message: &Message) -> Message {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let bytes = message.to_vec().unwrap();
    stream
        .write_all(&(bytes.len() as u16).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(&bytes).await.unwrap();
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.unwrap();
    let mut answer = vec![0u8; u16::from_be_bytes(len).into()];
    stream.read_exact(&mut answer).await.unwrap();
    Message::from_vec(&answer).unwrap()
}

fn addresses(message: &Message) -> Vec<IpAddr> {
    message
        .answers
        .iter()
        .filter_map(|r| match r.data {
            RData::A(A(ip)) => Some(IpAddr::V4(ip)),
            RData::AAAA(AAAA(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        })
        .collect()
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|ip| ip.parse().unwrap()).collect()
}

#[tokio::test]
async fn serves_cluster_names_over_udp_and_tcp() {
    let (upstream, asked) = fake_upstream().await;
    let (server, stop, handle) = start(vec![upstream]).await;

    // A ClusterIP Service over UDP.
    let answer = ask_udp(
        server,
        &question(4242, "web.default.svc.cluster.local.", RecordType::A),
    )
    .await;
    assert_eq!(answer.metadata.id, 4242);
    assert_eq!(answer.metadata.message_type, MessageType::Response);
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.metadata.authoritative);
    assert_eq!(addresses(&answer), ips(&["10.96.0.10"]));
    assert_eq!(answer.answers[0].ttl, 5);

    // A headless Service over TCP: the ready pods.
    let answer = ask_tcp(
        server,
        &question(7, "db.default.svc.cluster.local.", RecordType::A),
    )
    .await;
    assert_eq!(answer.metadata.id, 7);
    assert_eq!(addresses(&answer), ips(&["10.244.1.5", "10.244.2.7"]));

    // A missing Service: NXDOMAIN, authoritative, with the SOA.
    let answer = ask_udp(
        server,
        &question(8, "nope.default.svc.cluster.local.", RecordType::A),
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    assert!(answer.metadata.authoritative);
    assert!(answer.answers.is_empty());
    assert_eq!(answer.authorities[0].record_type(), RecordType::SOA);

    // AAAA of an IPv4 Service: NODATA.
    let answer = ask_udp(
        server,
        &question(9, "web.default.svc.cluster.local.", RecordType::AAAA),
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.answers.is_empty());

    // SRV with the target's address in the additional section.
    let answer = ask_tcp(
        server,
        &question(
            10,
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
        ),
    )
    .await;
    assert_eq!(
        answer.answers[0].data,
        RData::SRV(SRV::new(0, 100, 80, name("web.default.svc.cluster.local.")))
    );
    assert_eq!(answer.additionals[0].data, a("10.96.0.10"));

    assert_eq!(
        asked.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "cluster names never go upstream"
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn forwards_other_names_upstream() {
    let (upstream, asked) = fake_upstream().await;
    // The first upstream never answers: the server moves on to the next.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (server, stop, _handle) = start(vec![silent.local_addr().unwrap(), upstream]).await;

    let answer = ask_udp(server, &question(31337, "example.com.", RecordType::A)).await;
    assert_eq!(answer.metadata.id, 31337, "the client's query id");
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&answer), ips(&["93.184.216.34"]));
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Over TCP too.
    let answer = ask_tcp(server, &question(5, "Example.COM.", RecordType::A)).await;
    assert_eq!(answer.metadata.id, 5);
    assert_eq!(addresses(&answer), ips(&["93.184.216.34"]));

    // An ExternalName Service: the CNAME, then the target's address from
    // upstream.
    let answer = ask_udp(
        server,
        &question(6, "google.default.svc.cluster.local.", RecordType::A),
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        answer.answers[0].data,
        RData::CNAME(CNAME(name("www.example.com.")))
    );
    assert_eq!(answer.answers[1].name, name("www.example.com."));
    assert_eq!(addresses(&answer), ips(&["93.184.216.34"]));
    stop.cancel();
}

#[tokio::test]
async fn without_upstream_other_names_fail() {
    let (server, stop, _handle) = start(vec![]).await;
    let answer = ask_udp(server, &question(11, "example.com.", RecordType::A)).await;
    assert_eq!(answer.metadata.id, 11);
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    // Upstream that never answers: SERVFAIL after the timeout too.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (server, stop2, _handle) = start(vec![silent.local_addr().unwrap()]).await;
    let answer = ask_udp(server, &question(12, "example.com.", RecordType::A)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    stop.cancel();
    stop2.cancel();
}

#[tokio::test]
async fn other_opcodes_and_bad_packets() {
    let (server, stop, _handle) = start(vec![]).await;

    let mut status = question(13, "web.default.svc.cluster.local.", RecordType::A);
    status.metadata.op_code = OpCode::Status;
    let answer = ask_udp(server, &status).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NotImp);

    let mut update = question(14, "cluster.local.", RecordType::SOA);
    update.metadata.op_code = OpCode::Update;
    let answer = ask_udp(server, &update).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::Refused);

    let answer = ask_tcp(server, &question(15, "cluster.local.", RecordType::AXFR)).await;
    assert_eq!(
        answer.metadata.response_code,
        ResponseCode::Refused,
        "no zone transfers"
    );

    // Garbage over UDP: no answer, and the server goes on serving.
    assert!(
        ask_udp_raw(server, b"\x01\x02garbage", Duration::from_millis(500))
            .await
            .is_none()
    );
    let answer = ask_udp(
        server,
        &question(16, "web.default.svc.cluster.local.", RecordType::A),
    )
    .await;
    assert_eq!(addresses(&answer), ips(&["10.96.0.10"]));

    // Garbage over TCP: the connection is closed.
    let mut stream = TcpStream::connect(server).await.unwrap();
    stream.write_all(&[0, 5, 1, 2, 3, 4, 5]).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf))
        .await
        .expect("closed, not left hanging");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    stop.cancel();
}

#[tokio::test]
async fn big_answers_are_truncated_over_udp_and_whole_over_tcp() {
    let (server, stop, _handle) = start(vec![]).await;
    let q = question(17, "many.prod.svc.cluster.local.", RecordType::A);

    let answer = ask_udp(server, &q).await;
    assert!(
        answer.metadata.truncation,
        "60 addresses do not fit in 512 bytes"
    );
    assert!(answer.answers.is_empty());

    // With EDNS the client takes up to its advertised size.
    let mut with_edns = q.clone();
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    with_edns.set_edns(edns);
    let answer = ask_udp(server, &with_edns).await;
    assert!(!answer.metadata.truncation);
    assert_eq!(addresses(&answer).len(), 60);
    assert!(answer.edns.is_some(), "EDNS answered with EDNS");

    // What a client does next: ask again over TCP.
    let answer = ask_tcp(server, &q).await;
    assert!(!answer.metadata.truncation);
    let expected: Vec<IpAddr> = (1..=60)
        .map(|i| IpAddr::V4(Ipv4Addr::new(10, 250, 0, i)))
        .collect();
    assert_eq!(addresses(&answer), expected);
    stop.cancel();
}
