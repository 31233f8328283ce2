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
