//! Routing tests: hosts, wildcards, path types, precedence, default
//! backends, classes, and backend resolution to endpoints.

use std::net::SocketAddr;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::Ingress;
use serde_json::{json, Value};

use super::error::IngressError;
use super::routes::{
    endpoints, host_matches, normalize_host, route, HostMatch, Matched, PathMatch, PortRef,
    DEFAULT_CLASS,
};
use super::source::MemorySource;

/// An Ingress in `default` created at second `age` of 2024-01-01.
fn ingress_at(name: &str, age: u32, spec: Value) -> Arc<Ingress> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "namespace": "default",
                "creationTimestamp": format!("2024-01-01T00:00:{age:02}Z"),
                "generation": 1,
            },
            "spec": spec,
        }))
        .unwrap(),
    )
}

fn ingress(name: &str, spec: Value) -> Arc<Ingress> {
    ingress_at(name, 0, spec)
}

fn path(p: &str, path_type: &str, service: &str) -> Value {
    json!({
        "path": p,
        "pathType": path_type,
        "backend": { "service": { "name": service, "port": { "number": 80 } } },
    })
}

fn rule(host: Option<&str>, paths: Vec<Value>) -> Value {
    match host {
        Some(host) => json!({ "host": host, "http": { "paths": paths } }),
        None => json!({ "http": { "paths": paths } }),
    }
}

/// The name of the Service a request goes to.
fn target(ingresses: &[Arc<Ingress>], host: &str, request_path: &str) -> Option<String> {
    route(ingresses, DEFAULT_CLASS, host, request_path).map(|r| r.service().unwrap().name)
}

#[test]
fn hosts_are_normalized() {
    assert_eq!(normalize_host("Web.Example.COM:8080"), "web.example.com");
    assert_eq!(normalize_host("web.example.com."), "web.example.com");
    assert_eq!(normalize_host("[::1]:80"), "::1");
    assert_eq!(normalize_host("10.0.0.1"), "10.0.0.1");
    assert_eq!(normalize_host(""), "");
}

#[test]
fn wildcards_match_exactly_one_label() {
    assert_eq!(
        host_matches(Some("*.example.com"), "a.example.com"),
        Some(HostMatch::Wildcard)
    );
    assert_eq!(host_matches(Some("*.example.com"), "a.b.example.com"), None);
    assert_eq!(host_matches(Some("*.example.com"), "example.com"), None);
    assert_eq!(host_matches(Some("*.example.com"), ".example.com"), None);
    assert_eq!(
        host_matches(Some("a.example.com"), "a.example.com"),
        Some(HostMatch::Exact)
    );
    assert_eq!(host_matches(None, "anything"), Some(HostMatch::Any));
    assert_eq!(host_matches(Some(""), ""), Some(HostMatch::Any));
}

#[test]
fn exact_host_beats_wildcard_beats_none() {
    let ingresses = vec![ingress(
        "web",
        json!({ "rules": [
            rule(None, vec![path("/", "Prefix", "any")]),
            rule(Some("*.example.com"), vec![path("/", "Prefix", "wild")]),
            rule(Some("a.example.com"), vec![path("/", "Prefix", "exact")]),
        ]}),
    )];
    assert_eq!(target(&ingresses, "a.example.com", "/x").unwrap(), "exact");
    assert_eq!(
        target(&ingresses, "A.Example.com:8443", "/").unwrap(),
        "exact"
    );
    assert_eq!(target(&ingresses, "b.example.com", "/x").unwrap(), "wild");
    assert_eq!(target(&ingresses, "x.b.example.com", "/x").unwrap(), "any");
    assert_eq!(target(&ingresses, "example.com", "/x").unwrap(), "any");
    assert_eq!(target(&ingresses, "", "/x").unwrap(), "any");
    let r = route(&ingresses, DEFAULT_CLASS, "b.example.com", "/x").unwrap();
    assert_eq!(
        r.matched,
        Matched::Rule {
            host: HostMatch::Wildcard,
            path: "/".into(),
            path_match: PathMatch::Prefix
        }
    );
}

#[test]
fn a_host_without_a_matching_path_falls_back_to_less_specific_hosts() {
    let ingresses = vec![ingress(
        "web",
        json!({ "rules": [
            rule(Some("a.example.com"), vec![path("/api", "Prefix", "api")]),
            rule(None, vec![path("/", "Prefix", "site")]),
        ]}),
    )];
    assert_eq!(
        target(&ingresses, "a.example.com", "/api/v1").unwrap(),
        "api"
    );
    assert_eq!(
        target(&ingresses, "a.example.com", "/other").unwrap(),
        "site"
    );
    assert_eq!(target(&ingresses, "b.example.com", "/api").unwrap(), "site");
}

#[test]
fn a_rule_host_wins_over_a_longer_path_of_a_less_specific_host() {
    let ingresses = vec![ingress(
        "web",
        json!({ "rules": [
            rule(Some("a.example.com"), vec![path("/", "Prefix", "exact-host")]),
            rule(None, vec![path("/api/v1", "Prefix", "any-host")]),
        ]}),
    )];
    assert_eq!(
        target(&ingresses, "a.example.com", "/api/v1").unwrap(),
        "exact-host"
    );
    assert_eq!(
        target(&ingresses, "b.example.com", "/api/v1").unwrap(),
        "any-host"
    );
}

#[test]
fn prefixes_match_element_by_element() {
    let ingresses = vec![ingress(
        "web",
        json!({ "rules": [rule(None, vec![path("/foo", "Prefix", "foo")])] }),
    )];
    for matching in ["/foo", "/foo/", "/foo/bar", "/foo/bar/baz"] {
        assert_eq!(
            target(&ingresses, "h", matching).as_deref(),
            Some("foo"),
            "{matching}"
        );
    }
    for other in ["/foobar", "/fo", "/", "/bar/foo"] {
        assert_eq!(target(&ingresses, "h", other), None, "{other}");
    }
    // A trailing slash in the rule is the same prefix.
    let ingresses = vec![ingress(
        "web",
        json!({ "rules": [rule(None, vec![path("/foo/", "Prefix", "foo")])] }),
    )];
    assert_eq!(target(&ingresses, "h", "/foo").as_deref(), Some("foo"));
    assert_eq!(target(&ingresses, "h", "/foo/x").as_deref(), Some("foo"));
    assert_eq!(target(&ingresses, "h", "/foox"), None);
    // `/` is every path.
    let ingresses = vec![ingress(
        "web",
        json!({ "rules": [rule(None, vec![path("/", "Prefix", "root")])] }),
    )];
    assert_eq!(target(&ingresses, "h", "/").as_deref(), Some("root"));
    assert_eq!(
        target(&ingresses, "h", "/any/thing").as_deref(),
        Some("root")
    );
}

#[test]
fn exact_paths_match_only_themselves() {
    let ingresses = vec![ingress(
        "web",
        json!({ "rules": [rule(None, vec![path("/foo", "Exact", "foo")])] }),
    )];
    assert_eq!(target(&ingresses, "h", "/foo").as_deref(), Some("foo"));
    assert_eq!(target(&ingresses, "h", "/foo/"), None);
    assert_eq!(target(&ingresses, "h", "/foo/bar"), None);
    assert_eq!(target(&ingresses, "h", "/Foo"), None);
}

#[test]
fn implementation_specific_is_a_prefix() {
    let ingresses = vec![ingress(
        "web",
        json!({ "rules": [rule(None, vec![path("/foo", "ImplementationSpecific", "foo")])] }),
    )];
    assert_eq!(target(&ingresses, "h", "/foo/bar").as_deref(), Some("foo"));
    assert_eq!(target(&ingresses, "h", "/foobar"), None);
}

#[test]
fn the_longest_path_wins() {
    let ingresses = vec![ingress(
        "web",
        json!({ "rules": [rule(None, vec![
            path("/", "Prefix", "root"),
            path("/api/v2", "Prefix", "v2"),
            path("/api", "Prefix", "api"),
        ])]}),
    )];
    assert_eq!(target(&ingresses, "h", "/api/v2/users").unwrap(), "v2");
    assert_eq!(target(&ingresses, "h", "/api/v1").unwrap(), "api");
    assert_eq!(target(&ingresses, "h", "/api").unwrap(), "api");
    assert_eq!(target(&ingresses, "h", "/apis").unwrap(), "root");
    assert_eq!(target(&ingresses, "h", "/").unwrap(), "root");
}

#[test]
fn the_longest_path_wins_across_ingresses() {
    let ingresses = vec![
        ingress(
            "site",
            json!({ "rules": [rule(None, vec![path("/", "Prefix", "site")])] }),
        ),
        ingress(
            "api",
            json!({ "rules": [rule(None, vec![path("/api", "Prefix", "api")])] }),
        ),
    ];
    assert_eq!(target(&ingresses, "h", "/api/x").unwrap(), "api");
    assert_eq!(target(&ingresses, "h", "/x").unwrap(), "site");
}

#[test]
fn exact_beats_prefix_at_equal_length() {
    let ingresses = vec![ingress(
        "web",
        json!({ "rules": [rule(None, vec![
            path("/foo", "Prefix", "prefix"),
            path("/foo", "Exact", "exact"),
        ])]}),
    )];
    assert_eq!(target(&ingresses, "h", "/foo").unwrap(), "exact");
    assert_eq!(target(&ingresses, "h", "/foo/bar").unwrap(), "prefix");
}

#[test]
fn the_oldest_ingress_wins_a_tie() {
    let ingresses = vec![
        ingress_at(
            "young",
            30,
            json!({ "rules": [rule(None, vec![path("/", "Prefix", "young")])] }),
        ),
        ingress_at(
            "old",
            10,
            json!({ "rules": [rule(None, vec![path("/", "Prefix", "old")])] }),
        ),
    ];
    assert_eq!(target(&ingresses, "h", "/").unwrap(), "old");
}

#[test]
fn the_default_backend_takes_what_no_rule_matches() {
    let default_backend =
        |service: &str| json!({ "service": { "name": service, "port": { "number": 80 } } });
    let ingresses = vec![
        ingress(
            "api",
            json!({ "rules": [rule(None, vec![path("/api", "Prefix", "api")])] }),
        ),
        ingress(
            "fallback",
            json!({ "defaultBackend": default_backend("fallback") }),
        ),
    ];
    assert_eq!(target(&ingresses, "h", "/api").unwrap(), "api");
    assert_eq!(target(&ingresses, "h", "/other").unwrap(), "fallback");
    let r = route(&ingresses, DEFAULT_CLASS, "h", "/other").unwrap();
    assert_eq!(r.matched, Matched::DefaultBackend);
    assert_eq!(r.ingress_key(), "default/fallback");

    // Nothing matches and no default backend: nowhere (404).
    let ingresses = vec![ingress(
        "api",
        json!({ "rules": [rule(None, vec![path("/api", "Prefix", "api")])] }),
    )];
    assert_eq!(target(&ingresses, "h", "/other"), None);
    assert_eq!(target(&[], "h", "/"), None);

    // The default backend of an Ingress with rules for the host comes first.
    let ingresses = vec![
        ingress_at(
            "generic",
            0,
            json!({ "defaultBackend": default_backend("generic") }),
        ),
        ingress_at(
            "shop",
            5,
            json!({
                "defaultBackend": default_backend("shop-default"),
                "rules": [rule(Some("shop.example.com"), vec![path("/cart", "Prefix", "cart")])],
            }),
        ),
    ];
    assert_eq!(
        target(&ingresses, "shop.example.com", "/x").unwrap(),
        "shop-default"
    );
    assert_eq!(
        target(&ingresses, "blog.example.com", "/x").unwrap(),
        "generic"
    );
}

#[test]
fn only_ingresses_of_the_class_are_served() {
    let with = |name: &str, class: Option<&str>, annotation: Option<&str>| {
        let mut spec = json!({ "rules": [rule(Some(&format!("{name}.example.com")), vec![path("/", "Prefix", name)])] });
        if let Some(class) = class {
            spec["ingressClassName"] = json!(class);
        }
        let mut ingress = (*ingress(name, spec)).clone();
        if let Some(annotation) = annotation {
            ingress.metadata.annotations = Some(
                [(
                    "kubernetes.io/ingress.class".to_string(),
                    annotation.to_string(),
                )]
                .into(),
            );
        }
        Arc::new(ingress)
    };
    let ingresses = vec![
        with("unset", None, None),
        with("ours", Some("orch"), None),
        with("theirs", Some("nginx"), None),
        with("legacy-ours", None, Some("orch")),
        with("legacy-theirs", None, Some("nginx")),
        with("field-wins", Some("orch"), Some("nginx")),
    ];
    let served = |class: &str| -> Vec<String> {
        [
            "unset",
            "ours",
            "theirs",
            "legacy-ours",
            "legacy-theirs",
            "field-wins",
        ]
        .into_iter()
        .filter(|name| route(&ingresses, class, &format!("{name}.example.com"), "/").is_some())
        .map(str::to_string)
        .collect()
    };
    assert_eq!(
        served("orch"),
        vec!["unset", "ours", "legacy-ours", "field-wins"]
    );
    assert_eq!(served("nginx"), vec!["unset", "theirs", "legacy-theirs"]);
}

#[test]
fn backends_name_a_port_by_number_or_name() {
    let ingresses = vec![ingress(
        "web",
        json!({ "rules": [rule(None, vec![
            path("/num", "Prefix", "svc"),
            json!({ "path": "/name", "pathType": "Prefix",
                    "backend": { "service": { "name": "svc", "port": { "name": "http" } } } }),
            json!({ "path": "/none", "pathType": "Prefix",
                    "backend": { "service": { "name": "svc" } } }),
            json!({ "path": "/res", "pathType": "Prefix",
                    "backend": { "resource": { "kind": "Bucket", "name": "b" } } }),
        ])]}),
    )];
    let service = |p: &str| route(&ingresses, DEFAULT_CLASS, "h", p).unwrap().service();
    assert_eq!(service("/num").unwrap().port, PortRef::Number(80));
    assert_eq!(service("/name").unwrap().port, PortRef::Name("http".into()));
    assert_eq!(service("/name").unwrap().namespace, "default");
    assert!(matches!(
        service("/none"),
        Err(IngressError::InvalidBackend { .. })
    ));
    assert!(matches!(
        service("/res"),
        Err(IngressError::InvalidBackend { .. })
    ));
}

/// A source with Service `default/web` (ports `http` 80 and `metrics`
/// 9090) and its slices.
fn web_source() -> MemorySource {
    let source = MemorySource::new();
    source.put_service(
        serde_json::from_value(json!({
            "metadata": { "name": "web", "namespace": "default" },
            "spec": { "ports": [
                { "name": "http", "port": 80, "targetPort": "web" },
                { "name": "metrics", "port": 9090 },
            ]},
        }))
        .unwrap(),
    );
    let slice = |name: &str, service: &str, address_type: &str, endpoints: Value| {
        serde_json::from_value(json!({
            "metadata": {
                "name": name, "namespace": "default",
                "labels": { "kubernetes.io/service-name": service },
            },
            "addressType": address_type,
            "ports": [{ "name": "http", "port": 8080 }, { "name": "metrics", "port": 9100 }],
            "endpoints": endpoints,
        }))
        .unwrap()
    };
    source.put_slice(slice(
        "web-1",
        "web",
        "IPv4",
        json!([
            { "addresses": ["10.0.0.1"], "conditions": { "ready": true } },
            { "addresses": ["10.0.0.2"], "conditions": { "ready": false } },
            { "addresses": ["10.0.0.3"] },
        ]),
    ));
    source.put_slice(slice(
        "web-2",
        "web",
        "IPv4",
        json!([
            { "addresses": ["10.0.0.4"], "conditions": { "ready": true, "terminating": false } },
            // Also in web-1 (slices overlap while they are rewritten).
            { "addresses": ["10.0.0.1"], "conditions": { "ready": true } },
        ]),
    ));
    source.put_slice(slice(
        "web-fqdn",
        "web",
        "FQDN",
        json!([{ "addresses": ["web.example.com"] }]),
    ));
    source.put_slice(slice(
        "other-1",
        "other",
        "IPv4",
        json!([{ "addresses": ["10.9.9.9"] }]),
    ));
    source
}

fn backend(name: &str, port: PortRef) -> super::routes::ServiceRef {
    super::routes::ServiceRef {
        namespace: "default".into(),
        name: name.into(),
        port,
    }
}

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

#[test]
fn endpoints_are_the_ready_ones_of_the_service_slices_on_the_named_port() {
    let source = web_source();
    let by_number =
        endpoints(&source, "default/ing", &backend("web", PortRef::Number(80))).unwrap();
    assert_eq!(
        by_number,
        addrs(&["10.0.0.1:8080", "10.0.0.3:8080", "10.0.0.4:8080"])
    );
    let by_name = endpoints(
        &source,
        "default/ing",
        &backend("web", PortRef::Name("http".into())),
    )
    .unwrap();
    assert_eq!(by_name, by_number);
    let metrics = endpoints(
        &source,
        "default/ing",
        &backend("web", PortRef::Number(9090)),
    )
    .unwrap();
    assert_eq!(
        metrics,
        addrs(&["10.0.0.1:9100", "10.0.0.3:9100", "10.0.0.4:9100"])
    );
}

#[test]
fn missing_services_ports_and_endpoints_are_errors() {
    let source = web_source();
    let err = endpoints(
        &source,
        "default/ing",
        &backend("nope", PortRef::Number(80)),
    )
    .unwrap_err();
    assert!(matches!(err, IngressError::ServiceNotFound { .. }));
    assert_eq!(err.event_reason(), Some("ServiceNotFound"));
    assert_eq!(err.status(), hyper::StatusCode::SERVICE_UNAVAILABLE);
    assert!(err.to_string().contains("default/nope"), "{err}");

    let err = endpoints(&source, "default/ing", &backend("web", PortRef::Number(81))).unwrap_err();
    assert!(matches!(err, IngressError::PortNotFound { .. }), "{err}");
    let err = endpoints(
        &source,
        "default/ing",
        &backend("web", PortRef::Name("grpc".into())),
    )
    .unwrap_err();
    assert!(matches!(err, IngressError::PortNotFound { .. }), "{err}");

    // A Service whose endpoints are all not ready.
    source.remove_slice("default", "web-2");
    source.put_slice(
        serde_json::from_value(json!({
            "metadata": { "name": "web-1", "namespace": "default",
                          "labels": { "kubernetes.io/service-name": "web" } },
            "addressType": "IPv4",
            "ports": [{ "name": "http", "port": 8080 }],
            "endpoints": [{ "addresses": ["10.0.0.2"], "conditions": { "ready": false } }],
        }))
        .unwrap(),
    );
    let err = endpoints(&source, "default/ing", &backend("web", PortRef::Number(80))).unwrap_err();
    assert!(matches!(err, IngressError::NoEndpoints { .. }), "{err}");
    assert_eq!(err.event_reason(), Some("NoEndpoints"));
    // The slice has no port of the Service port's name.
    let err = endpoints(
        &source,
        "default/ing",
        &backend("web", PortRef::Number(9090)),
    )
    .unwrap_err();
    assert!(matches!(err, IngressError::NoEndpoints { .. }), "{err}");
}

#[test]
fn unnamed_service_ports_match_unnamed_slice_ports() {
    let source = MemorySource::new();
    source.put_service(
        serde_json::from_value(json!({
            "metadata": { "name": "one", "namespace": "default" },
            "spec": { "ports": [{ "port": 80, "targetPort": 8080 }] },
        }))
        .unwrap(),
    );
    source.put_slice(
        serde_json::from_value(json!({
            "metadata": { "name": "one-x", "namespace": "default",
                          "labels": { "kubernetes.io/service-name": "one" } },
            "addressType": "IPv4",
            "ports": [{ "name": "", "port": 8080 }],
            "endpoints": [{ "addresses": ["10.1.0.1"] }],
        }))
        .unwrap(),
    );
    let found = endpoints(&source, "default/ing", &backend("one", PortRef::Number(80))).unwrap();
    assert_eq!(found, addrs(&["10.1.0.1:8080"]));
}
