//! Verbs on collections, objects and subresources.

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode};
use serde_json::{json, Value};

use super::request::{wants_table, Query};
use super::route::{parse, Route};
use super::{discovery, json_response, table, ApiServer, Body};
use crate::error::ApiError;
use crate::managed_fields::{self, FieldManager, Operation};
use crate::object;
use crate::patch::{self, PatchType};
use crate::registry::{CreateOptions, DeleteOptions, EventType};
use crate::resource::Resource;

fn header<'a>(parts: &'a Parts, name: &str) -> &'a str {
    parts
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

use crate::typed::parse_body;

/// Checks an incoming or patched object against its kind's type; with
/// `fieldValidation=Strict`, unknown fields are refused as well.
fn validate(resource: &Resource, object: &Value, query: &Query) -> Result<(), ApiError> {
    let strict = query.get("fieldValidation") == Some("Strict");
    let mut typed = object.clone();
    if typed.is_object() {
        typed["kind"] = json!(resource.kind);
        typed["apiVersion"] = json!(resource.api_version());
    }
    crate::typed::check(resource, &typed, strict)
}

/// The field manager of a request (its `fieldManager` parameter or its
/// user agent).
fn request_manager(
    parts: &Parts,
    query: &Query,
    operation: Operation,
    subresource: Option<&str>,
) -> Result<FieldManager, ApiError> {
    FieldManager::of_request(
        query.get("fieldManager"),
        header(parts, "user-agent"),
        operation,
        subresource,
    )
}

fn ok(value: &Value) -> Response<Body> {
    json_response(StatusCode::OK, value)
}

/// Routes one request.
pub(crate) async fn dispatch(
    server: &ApiServer,
    parts: &Parts,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    let route = parse(parts.uri.path())?;
    // Objects are JSON (or YAML); kubectl's typed commands send protobuf,
    // decoded here to the JSON they would have sent.
    let body = if !body.is_empty() && header(parts, "content-type").contains("protobuf") {
        Bytes::from(super::protobuf::decode(&body)?)
    } else {
        body
    };
    let query = Query::parse(parts.uri.query());
    let method = &parts.method;
    let read_only = |value: Value| -> Result<Response<Body>, ApiError> {
        if method == Method::GET {
            Ok(ok(&value))
        } else {
            Err(ApiError::method_not_allowed(format!(
                "{method} is not allowed here"
            )))
        }
    };
    match route {
        Route::CoreVersions => read_only(discovery::core_versions()),
        Route::Groups => read_only(discovery::groups_list()),
        Route::Group(group) => read_only(discovery::group(&group)?),
        Route::Resources { group, version } => {
            read_only(discovery::resource_list(&group, &version)?)
        }
        Route::Version => read_only(discovery::version()),
        Route::Health => Ok(Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/plain")
            .body(http_body_util::Full::new(Bytes::from_static(b"ok")).boxed())
            .expect("static response")),
        Route::Metrics => Ok(Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/plain; version=0.0.4")
            .body(http_body_util::Full::new(Bytes::from(server.metrics_text())).boxed())
            .expect("static response")),
        Route::OpenApi(path) if path == "v3" => read_only(super::openapi::index()),
        Route::OpenApi(path) => match path.strip_prefix("v3/") {
            Some(gv) => read_only(super::openapi::group_version(gv)?),
            None => Err(ApiError::no_route(&format!("/openapi/{path}"))),
        },
        Route::Collection {
            resource,
            namespace,
        } => collection(server, parts, &query, resource, namespace.as_deref(), body).await,
        Route::Object {
            resource,
            namespace,
            name,
            subresource,
        } => {
            object_verb(
                server,
                parts,
                &query,
                resource,
                namespace.as_deref(),
                &name,
                subresource.as_deref(),
                body,
            )
            .await
        }
    }
}

fn list_object(
    resource: &Resource,
    items: Vec<Value>,
    resource_version: i64,
    continue_token: Option<String>,
) -> Value {
    let mut metadata = json!({"resourceVersion": resource_version.to_string()});
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    json!({
        "kind": format!("{}List", resource.kind),
        "apiVersion": resource.api_version(),
        "metadata": metadata,
        "items": items,
    })
}

async fn collection(
    server: &ApiServer,
    parts: &Parts,
    query: &Query,
    resource: &'static Resource,
    namespace: Option<&str>,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    let registry = server.registry();
    match parts.method {
        Method::GET if query.flag("watch") => {
            watch(server, parts, query, resource, namespace).await
        }
        Method::GET => {
            let options = query.list_options()?;
            let list = registry.list(resource, namespace, &options).await?;
            if wants_table(header(parts, "accept")) {
                return Ok(ok(&table::table(
                    resource,
                    &list.items,
                    Some(list.resource_version.to_string()),
                    list.continue_token,
                )));
            }
            Ok(ok(&list_object(
                resource,
                list.items,
                list.resource_version,
                list.continue_token,
            )))
        }
        Method::POST => {
            let object = parse_body(&body)?;
            validate(resource, &object, query)?;
            let manager = request_manager(parts, query, Operation::Update, None)?;
            let options = CreateOptions {
                manager: Some(&manager),
                dry_run: dry_run(query)?,
            };
            let created = registry
                .create_with(resource, namespace, object, options)
                .await?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        Method::DELETE => {
            let options = query.list_options()?;
            let delete = delete_options(query, &body)?;
            let list = registry.list(resource, namespace, &options).await?;
            let mut deleted = Vec::new();
            for item in list.items {
                let ns = object::namespace(&item).map(String::from);
                match registry
                    .delete(resource, ns.as_deref(), object::name(&item), &delete)
                    .await
                {
                    Ok(gone) => deleted.push(gone),
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(ok(&list_object(
                resource,
                deleted,
                list.resource_version,
                None,
            )))
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "{} is not allowed on a collection",
            parts.method
        ))),
    }
}

async fn watch(
    server: &ApiServer,
    parts: &Parts,
    query: &Query,
    resource: &'static Resource,
    namespace: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let options = query.list_options()?;
    let bookmarks = query.flag("allowWatchBookmarks");
    let as_table = wants_table(header(parts, "accept"));
    let stream = server
        .registry()
        .watch(
            resource,
            namespace,
            options,
            if bookmarks { 5_000 } else { 0 },
        )
        .await?;
    let lines = stream.map(move |event| {
        let line = match event {
            Ok(event) => {
                let object = if as_table && event.kind != EventType::Bookmark {
                    let rv = event.object["metadata"]["resourceVersion"]
                        .as_str()
                        .map(String::from);
                    table::table(resource, std::slice::from_ref(&event.object), rv, None)
                } else {
                    event.object
                };
                json!({"type": event.kind.as_str(), "object": object})
            }
            Err(e) => json!({"type": "ERROR", "object": e.to_status()}),
        };
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(bytes)))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(BodyExt::boxed(StreamBody::new(lines)))
        .expect("static response parts are valid"))
}

/// The `autoscaling/v1` Scale view of a workload.
fn scale_of(object: &Value) -> Value {
    let selector = object::match_labels_string(object);
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": object["metadata"]["name"],
            "namespace": object["metadata"]["namespace"],
            "uid": object["metadata"]["uid"],
            "resourceVersion": object["metadata"]["resourceVersion"],
            "creationTimestamp": object["metadata"]["creationTimestamp"],
        },
        "spec": {"replicas": object["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": object["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
}

#[allow(clippy::too_many_arguments)] // one argument per part of the request
async fn object_verb(
    server: &ApiServer,
    parts: &Parts,
    query: &Query,
    resource: &'static Resource,
    namespace: Option<&str>,
    name: &str,
    subresource: Option<&str>,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    let registry = server.registry();
    let dry_run = dry_run(query)?;
    match (&parts.method, subresource) {
        (&Method::GET, None | Some("status")) => {
            let object = registry.get(resource, namespace, name).await?;
            if wants_table(header(parts, "accept")) {
                let rv = object["metadata"]["resourceVersion"]
                    .as_str()
                    .map(String::from);
                return Ok(ok(&table::table(
                    resource,
                    std::slice::from_ref(&object),
                    rv,
                    None,
                )));
            }
            Ok(ok(&object))
        }
        (&Method::GET, Some("scale")) => {
            let object = registry.get(resource, namespace, name).await?;
            Ok(ok(&scale_of(&object)))
        }
        (&Method::PUT, None) => {
            let object = parse_body(&body)?;
            validate(resource, &object, query)?;
            if object::name(&object) != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    object::name(&object)
                )));
            }
            let manager = request_manager(parts, query, Operation::Update, None)?;
            let updated = update_with(
                server,
                resource,
                namespace,
                name,
                UpdateOptions {
                    expected: object::resource_version(&object)?,
                    manager: Some(&manager),
                    dry_run,
                },
                |current| {
                    *current = object.clone();
                    Ok(())
                },
            )
            .await?;
            Ok(ok(&updated))
        }
        (&Method::PUT, Some("status")) => {
            let incoming = parse_body(&body)?;
            let manager = request_manager(parts, query, Operation::Update, subresource)?;
            let updated = update_with(
                server,
                resource,
                namespace,
                name,
                UpdateOptions {
                    expected: object::resource_version(&incoming)?,
                    manager: Some(&manager),
                    dry_run,
                },
                |current| {
                    current["status"] = incoming["status"].clone();
                    Ok(())
                },
            )
            .await?;
            Ok(ok(&updated))
        }
        (&Method::PUT, Some("scale")) => {
            let scale = parse_body(&body)?;
            let replicas = scale["spec"]["replicas"]
                .as_i64()
                .ok_or_else(|| ApiError::bad_request("spec.replicas is required"))?;
            let manager = request_manager(parts, query, Operation::Update, subresource)?;
            let updated = update_with(
                server,
                resource,
                namespace,
                name,
                UpdateOptions {
                    expected: object::resource_version(&scale)?,
                    manager: Some(&manager),
                    dry_run,
                },
                |current| {
                    current["spec"]["replicas"] = json!(replicas);
                    Ok(())
                },
            )
            .await?;
            Ok(ok(&scale_of(&updated)))
        }
        (&Method::PATCH, None | Some("status") | Some("scale")) => {
            let kind =
                PatchType::from_content_type(header(parts, "content-type")).ok_or_else(|| {
                    ApiError::unsupported_media_type(format!(
                        "the patch content type {:?} is not supported",
                        header(parts, "content-type")
                    ))
                })?;
            let sub = subresource.map(String::from);
            // Server-side apply of the object or its status tracks field
            // ownership itself; every other patch is an update.
            let apply = kind == PatchType::Apply && subresource != Some("scale");
            let operation = if apply {
                Operation::Apply
            } else {
                Operation::Update
            };
            let manager = request_manager(parts, query, operation, subresource)?;
            let config = if apply {
                Some(patch::parse_apply_config(&body)?)
            } else {
                None
            };
            let force = query.flag("force");
            let api_version = resource.api_version();
            let updates = (!apply).then_some(&manager);
            let patched = update_with(
                server,
                resource,
                namespace,
                name,
                UpdateOptions {
                    expected: None,
                    manager: updates,
                    dry_run,
                },
                |current| {
                    match sub.as_deref() {
                        _ if apply => managed_fields::apply(
                            current,
                            config.as_ref().expect("parsed for apply"),
                            &manager,
                            force,
                            &api_version,
                        )?,
                        Some("scale") => {
                            let mut scale = scale_of(current);
                            patch::apply(kind, &mut scale, &body)?;
                            let replicas = scale["spec"]["replicas"].as_i64().ok_or_else(|| {
                                ApiError::invalid_patch("spec.replicas must be an integer")
                            })?;
                            current["spec"]["replicas"] = json!(replicas);
                        }
                        Some("status") => {
                            let mut copy = current.clone();
                            patch::apply(kind, &mut copy, &body)?;
                            current["status"] = copy["status"].clone();
                        }
                        _ => patch::apply(kind, current, &body)?,
                    }
                    validate(resource, current, query)
                },
            )
            .await;
            match (patched, kind) {
                (Ok(updated), _) if subresource == Some("scale") => Ok(ok(&scale_of(&updated))),
                (Ok(updated), _) => Ok(ok(&updated)),
                (Err(e), PatchType::Apply) if e.code == 404 && subresource.is_none() => {
                    // Server-side apply of a new object creates it; the
                    // applier owns what it applied (not the defaults).
                    let mut object = config.expect("parsed for apply");
                    validate(resource, &object, query)?;
                    if object["metadata"].is_object() {
                        managed_fields::record_create(&mut object, &manager, &api_version)?;
                    }
                    let options = CreateOptions {
                        manager: None,
                        dry_run,
                    };
                    let created = registry
                        .create_with(resource, namespace, object, options)
                        .await?;
                    Ok(json_response(StatusCode::CREATED, &created))
                }
                (Err(e), _) => Err(e),
            }
        }
        (&Method::DELETE, None) => {
            let options = delete_options(query, &body)?;
            Ok(ok(&registry
                .delete(resource, namespace, name, &options)
                .await?))
        }
        (&Method::GET, Some("log")) if resource.plural == "pods" => {
            super::proxy::pod_log(
                server.node_proxy(),
                registry,
                namespace.unwrap_or("default"),
                name,
                parts.uri.query(),
            )
            .await
        }
        (&Method::GET | &Method::POST, Some("exec")) if resource.plural == "pods" => {
            Err(ApiError::bad_request("Upgrade request required"))
        }
        (&Method::POST, Some("binding")) => {
            let binding = parse_body(&body)?;
            let node = binding["target"]["name"]
                .as_str()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| ApiError::bad_request("binding target.name is required"))?
                .to_string();
            // As kube-apiserver does: the bind and the PodScheduled
            // condition in one write.
            let options = UpdateOptions {
                expected: None,
                manager: None,
                dry_run,
            };
            let bound = update_with(server, resource, namespace, name, options, |pod| {
                let current = pod["spec"]["nodeName"].as_str().unwrap_or("");
                if !current.is_empty() {
                    return Err(ApiError::conflict("pods", name));
                }
                pod["spec"]["nodeName"] = json!(node);
                set_pod_condition(pod, "PodScheduled", "True");
                Ok(())
            })
            .await?;
            Ok(json_response(
                StatusCode::CREATED,
                &json!({
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": bound["metadata"]["resourceVersion"]},
                    "status": "Success",
                    "code": 201
                }),
            ))
        }
        (method, Some(sub)) => Err(ApiError::method_not_allowed(format!(
            "{method} on {}/{sub} is not served yet",
            resource.plural
        ))),
        (method, None) => Err(ApiError::method_not_allowed(format!(
            "{method} is not allowed on an object"
        ))),
    }
}

/// Sets condition `type_` of a pod's status to `status` (keeping its
/// transition time if it already had that status).
fn set_pod_condition(pod: &mut Value, type_: &str, status: &str) {
    let now = object::now_rfc3339();
    if !pod["status"]["conditions"].is_array() {
        pod["status"]["conditions"] = json!([]);
    }
    let conditions = pod["status"]["conditions"]
        .as_array_mut()
        .expect("conditions is an array");
    match conditions.iter_mut().find(|c| c["type"] == type_) {
        Some(c) if c["status"] == status => {}
        Some(c) => {
            *c = json!({"type": type_, "status": status, "lastProbeTime": null, "lastTransitionTime": now});
        }
        None => conditions.push(
            json!({"type": type_, "status": status, "lastProbeTime": null, "lastTransitionTime": now}),
        ),
    }
}

/// The `DeleteOptions` of a delete: the body, with the query parameters
/// kubectl may send instead.
fn delete_options(query: &Query, body: &[u8]) -> Result<DeleteOptions, ApiError> {
    let mut options: Value = if body.is_empty() {
        json!({})
    } else {
        parse_body(body)?
    };
    if !options.is_object() {
        return Err(ApiError::bad_request("DeleteOptions must be an object"));
    }
    if dry_run(query)? {
        options["dryRun"] = json!(["All"]);
    }
    for field in [
        "propagationPolicy",
        "gracePeriodSeconds",
        "orphanDependents",
    ] {
        if let Some(value) = query.get(field) {
            options[field] = match field {
                "orphanDependents" => json!(value == "true"),
                _ => json!(value),
            };
        }
    }
    DeleteOptions::from_json(&options)
}

/// How [`update_with`] writes.
struct UpdateOptions<'a> {
    /// The resourceVersion the client read: a 409 if the object moved on
    /// since. `None`: concurrent changes are retried.
    expected: Option<i64>,
    /// Who writes: field ownership is recorded for it (`None`: the entries
    /// stay as they are).
    manager: Option<&'a FieldManager>,
    /// `dryRun=All`: everything is checked, nothing written.
    dry_run: bool,
}

/// `dryRun=All` asks for every check of a write without the write; no
/// other value exists.
fn dry_run(query: &Query) -> Result<bool, ApiError> {
    match query.get("dryRun") {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "dryRun {other:?} is not supported: the only value is All"
        ))),
    }
}

/// Reads the object, applies `change`, and writes it back if nothing
/// changed in between; retries on a concurrent change unless the client
/// named a resourceVersion (then a mismatch is a 409).
async fn update_with(
    server: &ApiServer,
    resource: &'static Resource,
    namespace: Option<&str>,
    name: &str,
    options: UpdateOptions<'_>,
    mut change: impl FnMut(&mut Value) -> Result<(), ApiError>,
) -> Result<Value, ApiError> {
    let UpdateOptions {
        expected,
        manager,
        dry_run,
    } = options;
    let registry = server.registry();
    for _ in 0..16 {
        let current = registry.get(resource, namespace, name).await?;
        let revision = object::resource_version(&current)?.unwrap_or(0);
        if expected.is_some_and(|rv| rv != revision) {
            return Err(ApiError::conflict(resource.plural, name));
        }
        let mut updated = current.clone();
        change(&mut updated)?;
        if object::name(&updated) != name {
            return Err(ApiError::invalid(
                resource.kind,
                name,
                vec![crate::error::FieldCause {
                    field: "metadata.name".into(),
                    message: "field is immutable".into(),
                }],
            ));
        }
        object::check_identity(resource, &updated, namespace)?;
        object::prepare_update(resource, &current, &mut updated);
        if let Some(manager) = manager {
            managed_fields::record_update(
                &current,
                &mut updated,
                manager,
                &resource.api_version(),
            )?;
        }
        crate::validation::check_update(resource, &current, &updated)?;
        if dry_run {
            object::set_resource_version(&mut updated, revision);
            return Ok(updated);
        }
        let key = resource.key(namespace, name);
        match registry
            .write_if_unchanged(resource, &key, name, revision, updated)
            .await
        {
            Err(e) if e.reason == "Conflict" && expected.is_none() => continue,
            other => return other,
        }
    }
    Err(ApiError::conflict(resource.plural, name))
}
