//! The OpenAPI v3 documents: the index, and one document per served group
//! version with its kinds' object operations and schemas.
//!
//! kubectl asks whether each kind's PATCH operation takes the
//! `fieldValidation` query parameter; when it does, kubectl leaves field
//! validation to the server (`fieldValidation=Strict`), which orch performs
//! with the `k8s-openapi` types (see `typed.rs`). `kubectl explain` reads
//! the schemas (`schemas.rs`). Each document is built once, on first
//! request.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::resource::{Resource, RESOURCES};

fn group_version_path(r: &Resource) -> String {
    if r.group.is_empty() {
        format!("api/{}", r.version)
    } else {
        format!("apis/{}/{}", r.group, r.version)
    }
}

/// `/openapi/v3`: one entry per served group version.
pub fn index() -> Value {
    let mut paths = Map::new();
    for r in RESOURCES {
        let gv = group_version_path(r);
        paths
            .entry(gv.clone())
            .or_insert_with(|| json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash={}", env!("CARGO_PKG_VERSION"))}));
    }
    json!({"paths": paths})
}

fn object_path(r: &Resource) -> String {
    let base = format!("/{}", group_version_path(r));
    if r.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
    } else {
        format!("{base}/{}/{{name}}", r.plural)
    }
}

/// `/openapi/v3/{api/v1 | apis/group/version}`: the object operations of
/// each kind with their query parameters, and the kinds' schemas.
pub fn group_version(path: &str) -> Result<Value, ApiError> {
    static DOCUMENTS: OnceLock<BTreeMap<String, OnceLock<Value>>> = OnceLock::new();
    let documents = DOCUMENTS.get_or_init(|| {
        RESOURCES
            .iter()
            .map(|r| (group_version_path(r), OnceLock::new()))
            .collect()
    });
    let document = documents
        .get(path)
        .ok_or_else(|| ApiError::no_route(&format!("/openapi/v3/{path}")))?;
    Ok(document.get_or_init(|| build(path)).clone())
}

/// Builds the document of the group version at `path` (`api/v1`,
/// `apis/apps/v1`).
fn build(path: &str) -> Value {
    let served: Vec<&Resource> = RESOURCES
        .iter()
        .filter(|r| group_version_path(r) == path)
        .collect();
    let params = json!([
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
    ]);
    // No `requestBody` on PATCH: with one naming strategic merge patch,
    // `kubectl apply` would compute its patches from these schemas, which
    // lack Kubernetes' merge keys, instead of from its built-in types.
    let mut paths = Map::new();
    for r in &served {
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let op = |verb: &str| {
            json!({
                "operationId": format!("{verb}{}", r.kind),
                "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": params,
                "responses": {"200": {"description": "OK"}},
            })
        };
        paths.insert(
            object_path(r),
            json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}),
        );
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{}.0", super::discovery::KUBERNETES_MINOR)},
        "paths": paths,
        "components": {"schemas": super::schemas::components(&served)},
    })
}
