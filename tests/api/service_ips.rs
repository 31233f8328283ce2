//! ClusterIPs as a kubectl user sees them: each Service gets its own
//! address from the service range, a requested one if it is free and in
//! range, none for headless and ExternalName Services; a deleted
//! Service's address can be taken again.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use orch_tests::api::TestApi;

fn in_service_range(ip: &str) -> bool {
    let ip: Ipv4Addr = ip.parse().expect("an IPv4 address");
    let base = u32::from(Ipv4Addr::new(10, 96, 0, 0));
    (u32::from(ip) - base) < (1 << 20) && u32::from(ip) >= base
}

#[tokio::test]
async fn services_get_distinct_cluster_ips_from_the_service_range() {
    let api = TestApi::start().await;
    let mut seen = HashSet::new();
    for i in 0..5 {
        let name = format!("web-{i}");
        api.kubectl_ok(&["create", "service", "clusterip", &name, "--tcp=80:8080"])
            .await;
        let ip = api
            .jsonpath("service", &name, "default", "{.spec.clusterIP}")
            .await;
        assert!(in_service_range(&ip), "{ip}");
        assert!(seen.insert(ip.clone()), "{ip} handed out twice");
        let ips = api
            .jsonpath("service", &name, "default", "{.spec.clusterIPs[0]}")
            .await;
        assert_eq!(ips, ip);
    }
    let table = api.kubectl_ok(&["get", "service", "web-0"]).await;
    let ip = api
        .jsonpath("service", "web-0", "default", "{.spec.clusterIP}")
        .await;
    assert!(table.contains(&ip), "{table}");

    // A requested address: granted once, refused to a second Service.
    api.kubectl_ok(&[
        "create",
        "service",
        "clusterip",
        "fixed",
        "--tcp=80",
        "--clusterip=10.96.7.7",
    ])
    .await;
    assert_eq!(
        api.jsonpath("service", "fixed", "default", "{.spec.clusterIP}")
            .await,
        "10.96.7.7"
    );
    let out = api
        .kubectl(&[
            "create",
            "service",
            "clusterip",
            "twin",
            "--tcp=80",
            "--clusterip=10.96.7.7",
        ])
        .await;
    assert!(!out.success);
    assert!(
        out.stderr.contains("provided IP is already allocated"),
        "{out:?}"
    );
    let out = api
        .kubectl(&[
            "create",
            "service",
            "clusterip",
            "far",
            "--tcp=80",
            "--clusterip=192.168.1.1",
        ])
        .await;
    assert!(!out.success);
    assert!(out.stderr.contains("not in the valid range"), "{out:?}");
    assert!(!api.kubectl(&["get", "service", "twin"]).await.success);
    assert!(!api.kubectl(&["get", "service", "far"]).await.success);

    // Headless and ExternalName Services hold no address.
    api.kubectl_ok(&[
        "create",
        "service",
        "clusterip",
        "headless",
        "--clusterip=None",
    ])
    .await;
    assert_eq!(
        api.jsonpath("service", "headless", "default", "{.spec.clusterIP}")
            .await,
        "None"
    );
    api.kubectl_ok(&[
        "create",
        "service",
        "externalname",
        "ext",
        "--external-name=example.com",
    ])
    .await;
    assert_eq!(
        api.jsonpath("service", "ext", "default", "{.spec.clusterIP}")
            .await,
        ""
    );

    // Deleting a Service frees its address.
    api.kubectl_ok(&["delete", "service", "fixed"]).await;
    api.kubectl_ok(&[
        "create",
        "service",
        "clusterip",
        "again",
        "--tcp=80",
        "--clusterip=10.96.7.7",
    ])
    .await;
    assert_eq!(
        api.jsonpath("service", "again", "default", "{.spec.clusterIP}")
            .await,
        "10.96.7.7"
    );
    api.shutdown().await;
}

#[tokio::test]
async fn node_ports_come_from_their_range_once_each_and_are_freed_with_their_service() {
    let api = TestApi::start().await;
    api.kubectl_ok(&["create", "service", "nodeport", "any", "--tcp=80:8080"])
        .await;
    let port: u16 = api
        .jsonpath("service", "any", "default", "{.spec.ports[0].nodePort}")
        .await
        .parse()
        .expect("a node port");
    assert!((30000..=32767).contains(&port), "{port}");
    let table = api.kubectl_ok(&["get", "service", "any"]).await;
    assert!(table.contains(&format!("80:{port}/TCP")), "{table}");

    api.kubectl_ok(&[
        "create",
        "service",
        "nodeport",
        "fixed",
        "--tcp=80",
        "--node-port=30080",
    ])
    .await;
    let taken = api
        .kubectl(&[
            "create",
            "service",
            "nodeport",
            "twin",
            "--tcp=80",
            "--node-port=30080",
        ])
        .await;
    assert!(!taken.success);
    assert!(
        taken.stderr.contains("provided port is already allocated"),
        "{taken:?}"
    );
    let far = api
        .kubectl(&[
            "create",
            "service",
            "nodeport",
            "far",
            "--tcp=80",
            "--node-port=8080",
        ])
        .await;
    assert!(!far.success);
    assert!(far.stderr.contains("not in the valid range"), "{far:?}");
    assert!(!api.kubectl(&["get", "service", "twin"]).await.success);
    assert!(!api.kubectl(&["get", "service", "far"]).await.success);

    // Two ports of one Service may not share a port number and protocol.
    let dup = api
        .kubectl_fed(
            &["apply", "-f", "-"],
            br#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "dup"},
                "spec": {"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}}"#,
        )
        .await;
    assert!(!dup.success);
    assert!(dup.stderr.contains("spec.ports[1]"), "{dup:?}");

    // Turning the Service into a ClusterIP one frees its node port; a
    // replace without the field keeps the ClusterIP it had.
    let ip = api
        .jsonpath("service", "fixed", "default", "{.spec.clusterIP}")
        .await;
    api.kubectl_ok(&[
        "patch",
        "service",
        "fixed",
        "--type=merge",
        "-p",
        r#"{"spec": {"type": "ClusterIP"}}"#,
    ])
    .await;
    assert_eq!(
        api.jsonpath("service", "fixed", "default", "{.spec.ports[0].nodePort}")
            .await,
        ""
    );
    assert_eq!(
        api.jsonpath("service", "fixed", "default", "{.spec.clusterIP}")
            .await,
        ip
    );
    api.kubectl_ok(&[
        "create",
        "service",
        "nodeport",
        "second",
        "--tcp=80",
        "--node-port=30080",
    ])
    .await;
    // And back: a patch to NodePort gets a fresh port, not the taken one.
    api.kubectl_ok(&[
        "patch",
        "service",
        "fixed",
        "--type=merge",
        "-p",
        r#"{"spec": {"type": "NodePort"}}"#,
    ])
    .await;
    let fresh: u16 = api
        .jsonpath("service", "fixed", "default", "{.spec.ports[0].nodePort}")
        .await
        .parse()
        .expect("a node port");
    assert_ne!(fresh, 30080);
    assert_ne!(fresh, port);

    // Deleting a Service frees its node port.
    api.kubectl_ok(&["delete", "service", "second"]).await;
    api.kubectl_ok(&[
        "create",
        "service",
        "nodeport",
        "third",
        "--tcp=80",
        "--node-port=30080",
    ])
    .await;
    api.shutdown().await;
}
