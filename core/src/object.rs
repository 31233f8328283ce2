//! Object metadata the server owns: names, uid, timestamps,
//! resourceVersion and generation, and name validation.

use serde_json::{json, Value};

use crate::error::{ApiError, FieldCause};
use crate::resource::Resource;

/// `metadata.name` of an object, or "".
pub fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or("")
}

/// `metadata.namespace` of an object, if set.
pub fn namespace(object: &Value) -> Option<&str> {
    object["metadata"]["namespace"].as_str()
}

/// `metadata.resourceVersion` as a store revision, if set.
pub fn resource_version(object: &Value) -> Result<Option<i64>, ApiError> {
    match object["metadata"]["resourceVersion"].as_str() {
        None | Some("") => Ok(None),
        Some(rv) => rv
            .parse::<i64>()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}"))),
    }
}

/// `spec.selector.matchLabels` as `k=v,k=v`, the way kubectl prints it.
pub fn match_labels_string(object: &Value) -> String {
    object["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// Sets `metadata.resourceVersion`.
pub fn set_resource_version(object: &mut Value, revision: i64) {
    object["metadata"]["resourceVersion"] = json!(revision.to_string());
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Current time in RFC 3339, seconds precision, as Kubernetes writes it.
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::from_second(now_secs())
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// A random RFC 4122 version 4 UUID.
pub fn new_uid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Five lowercase alphanumerics, as generateName appends.
pub fn random_suffix() -> String {
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| CHARS[rand::random_range(0..CHARS.len())] as char)
        .collect()
}

/// Checks a DNS-1123 subdomain (most object names): lowercase
/// alphanumerics, '-' and '.', starting and ending alphanumeric, <= 253.
pub fn check_dns1123_subdomain(value: &str) -> Option<String> {
    if value.is_empty() {
        return Some("a name is required".into());
    }
    if value.len() > 253 {
        return Some("must be no more than 253 characters".into());
    }
    let ok = value.split('.').all(|label| {
        !label.is_empty()
            && label
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    (!ok).then(|| {
        format!(
            "Invalid value: {value:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        )
    })
}

/// Checks a DNS-1123 label (namespaces, services): like a subdomain
/// without dots, <= 63.
pub fn check_dns1123_label(value: &str) -> Option<String> {
    if value.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    if value.contains('.') {
        return Some(format!(
            "Invalid value: {value:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
        ));
    }
    check_dns1123_subdomain(value)
}

/// Checks what a body says about itself against the URL: a JSON object,
/// of the resource's kind and apiVersion (where it names them), in the URL's
/// namespace (where it names one).
pub fn check_envelope(
    resource: &Resource,
    object: &Value,
    url_namespace: Option<&str>,
) -> Result<(), ApiError> {
    if !object.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    let kind = object["kind"].as_str().unwrap_or("");
    let api_version = object["apiVersion"].as_str().unwrap_or("");
    if (!kind.is_empty() && kind != resource.kind)
        || (!api_version.is_empty() && api_version != resource.api_version())
    {
        return Err(ApiError::bad_request(format!(
            "the body of the request was in an unknown format: {api_version}, Kind={kind} does not match {}, Kind={}",
            resource.api_version(),
            resource.kind
        )));
    }
    if resource.namespaced {
        if let (Some(url_ns), Some(body_ns)) = (url_namespace, namespace(object)) {
            if url_ns != body_ns {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({url_ns})"
                )));
            }
        }
    }
    Ok(())
}

/// Checks `metadata.name`: a DNS-1123 label for namespaces and services, a
/// DNS-1123 subdomain otherwise.
pub fn check_name(resource: &Resource, object: &Value) -> Result<(), ApiError> {
    let name = name(object);
    let complaint = if resource.kind == "Namespace" || resource.kind == "Service" {
        check_dns1123_label(name)
    } else {
        check_dns1123_subdomain(name)
    };
    match complaint {
        None => Ok(()),
        Some(message) => Err(ApiError::invalid(
            resource.kind,
            name,
            vec![FieldCause {
                field: "metadata.name".into(),
                message,
            }],
        )),
    }
}

/// Checks the object's identity against the URL: [`check_envelope`], then
/// [`check_name`].
pub fn check_identity(
    resource: &Resource,
    object: &Value,
    url_namespace: Option<&str>,
) -> Result<(), ApiError> {
    check_envelope(resource, object, url_namespace)?;
    check_name(resource, object)
}

/// Fills what the server owns on create: kind/apiVersion, namespace,
/// generateName, uid, creationTimestamp, generation; drops client-set
/// server fields.
pub fn prepare_create(resource: &Resource, object: &mut Value, url_namespace: Option<&str>) {
    object["kind"] = json!(resource.kind);
    object["apiVersion"] = json!(resource.api_version());
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    let meta = &mut object["metadata"];
    if resource.namespaced {
        if let Some(ns) = url_namespace {
            meta["namespace"] = json!(ns);
        }
    } else if let Some(m) = meta.as_object_mut() {
        m.remove("namespace");
    }
    if meta["name"].as_str().unwrap_or("").is_empty() {
        if let Some(prefix) = meta["generateName"].as_str() {
            meta["name"] = json!(format!("{prefix}{}", random_suffix()));
        }
    }
    meta["uid"] = json!(new_uid());
    meta["creationTimestamp"] = json!(now_rfc3339());
    meta["generation"] = json!(1);
    if let Some(m) = meta.as_object_mut() {
        m.remove("resourceVersion");
        m.remove("deletionTimestamp");
        m.remove("deletionGracePeriodSeconds");
        m.remove("selfLink");
    }
    crate::defaults::apply(resource, object);
}

/// Carries server-owned metadata from the stored object into an update, and
/// bumps generation when the spec changed.
pub fn prepare_update(resource: &Resource, old: &Value, new: &mut Value) {
    new["kind"] = json!(resource.kind);
    new["apiVersion"] = json!(resource.api_version());
    if !new["metadata"].is_object() {
        new["metadata"] = json!({});
    }
    for field in [
        "uid",
        "creationTimestamp",
        "namespace",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        match old["metadata"].get(field) {
            Some(v) => new["metadata"][field] = v.clone(),
            None => {
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove(field);
                }
            }
        }
    }
    if resource.kind == "Service" {
        crate::node_ports::carry_over(old, new);
    }
    crate::defaults::apply(resource, new);
    let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
    let spec_changed = old.get("spec") != new.get("spec") || old.get("data") != new.get("data");
    new["metadata"]["generation"] = json!(if spec_changed {
        generation + 1
    } else {
        generation
    });
    // Field ownership stays with the object unless the writer replaced it
    // (see `managed_fields::record_update`).
    if new["metadata"].get("managedFields").is_none() {
        if let Some(managed) = old["metadata"].get("managedFields") {
            new["metadata"]["managedFields"] = managed.clone();
        }
    }
    if let Some(m) = new["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns1123_names_are_checked() {
        assert!(check_dns1123_subdomain("web-1.example").is_none());
        assert!(check_dns1123_subdomain("Web").is_some());
        assert!(check_dns1123_subdomain("-web").is_some());
        assert!(check_dns1123_subdomain("").is_some());
        assert!(check_dns1123_label("a.b").is_some());
        assert!(check_dns1123_label(&"a".repeat(64)).is_some());
    }

    #[test]
    fn uids_look_like_uuids() {
        let uid = new_uid();
        assert_eq!(uid.len(), 36);
        assert_eq!(&uid[14..15], "4");
        assert_ne!(uid, new_uid());
    }
}
