//! The `components.schemas` of an OpenAPI v3 group-version document, from
//! the `k8s-openapi` types' JSON schemas (which carry Kubernetes' field
//! documentation): what `kubectl explain` reads.
//!
//! Schemas keep Kubernetes' names (`io.k8s.api.apps.v1.Deployment`) and
//! refer to each other under `#/components/schemas/`; a `$ref` with a
//! description beside it becomes `allOf: [{$ref}]`, as in Kubernetes' own
//! documents. Each served kind's schema carries
//! `x-kubernetes-group-version-kind`, which is how kubectl finds it.

use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::JsonSchema;
use serde_json::{json, Map, Value};

use crate::resource::Resource;

/// Adds `T`'s schema and every schema it refers to; returns its name.
fn add<T: JsonSchema>(generator: &mut SchemaGenerator) -> String {
    generator.subschema_for::<T>();
    T::schema_name().into_owned()
}

/// Adds the schema of `kind`'s type; returns its name (`None` for a kind
/// without one).
fn add_kind(generator: &mut SchemaGenerator, kind: &str) -> Option<String> {
    use k8s_openapi::api::networking::v1 as networking;
    use k8s_openapi::api::{apps::v1 as apps, autoscaling::v2 as autoscaling, batch::v1 as batch};
    use k8s_openapi::api::{
        coordination::v1 as coordination, core::v1 as core, discovery::v1 as discovery,
    };
    let g = generator;
    Some(match kind {
        "Namespace" => add::<core::Namespace>(g),
        "Node" => add::<core::Node>(g),
        "Pod" => add::<core::Pod>(g),
        "Service" => add::<core::Service>(g),
        "Endpoints" => add::<core::Endpoints>(g),
        "ConfigMap" => add::<core::ConfigMap>(g),
        "Secret" => add::<core::Secret>(g),
        "Event" => add::<core::Event>(g),
        "ResourceQuota" => add::<core::ResourceQuota>(g),
        "LimitRange" => add::<core::LimitRange>(g),
        "Deployment" => add::<apps::Deployment>(g),
        "ReplicaSet" => add::<apps::ReplicaSet>(g),
        "StatefulSet" => add::<apps::StatefulSet>(g),
        "DaemonSet" => add::<apps::DaemonSet>(g),
        "Job" => add::<batch::Job>(g),
        "Lease" => add::<coordination::Lease>(g),
        "EndpointSlice" => add::<discovery::EndpointSlice>(g),
        "Ingress" => add::<networking::Ingress>(g),
        "HorizontalPodAutoscaler" => add::<autoscaling::HorizontalPodAutoscaler>(g),
        _ => return None,
    })
}

/// The schemas of `resources` (one group version) and of everything they
/// refer to, keyed by name.
pub fn components(resources: &[&Resource]) -> Map<String, Value> {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let named: Vec<(&Resource, String)> = resources
        .iter()
        .filter_map(|r| add_kind(&mut generator, r.kind).map(|name| (*r, name)))
        .collect();
    let mut schemas = generator.take_definitions(true);
    for (name, schema) in schemas.iter_mut() {
        if name != "io.k8s.api.core.v1.Event" {
            metadata_optional(schema);
        }
    }
    for (r, name) in named {
        if let Some(Value::Object(schema)) = schemas.get_mut(&name) {
            schema.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": r.group, "version": r.version, "kind": r.kind}]),
            );
        }
    }
    schemas
}

/// Drops `metadata` from an object schema's `required`: `k8s-openapi`
/// requires it of every object (its field is not an `Option`), Kubernetes'
/// own schemas only of core/v1 Event, and `kubectl explain` would print it
/// as `-required-`.
fn metadata_optional(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    if let Some(required) = object.get_mut("required").and_then(Value::as_array_mut) {
        required.retain(|field| field != "metadata");
        if required.is_empty() {
            object.remove("required");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::RESOURCES;

    fn apps() -> Map<String, Value> {
        let served: Vec<&Resource> = RESOURCES.iter().filter(|r| r.group == "apps").collect();
        components(&served)
    }

    #[test]
    fn every_served_kind_has_a_schema() {
        let mut generator = SchemaSettings::openapi3().into_generator();
        for r in RESOURCES {
            assert!(add_kind(&mut generator, r.kind).is_some(), "{}", r.kind);
        }
    }

    #[test]
    fn kinds_carry_their_group_version_kind_and_refs_resolve() {
        let schemas = apps();
        let deployment = &schemas["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deployment["x-kubernetes-group-version-kind"],
            json!([{"group": "apps", "version": "v1", "kind": "Deployment"}])
        );
        assert!(deployment.get("required").is_none(), "metadata is optional");
        let spec = &deployment["properties"]["spec"];
        assert!(spec["description"].is_string());
        let target = spec["allOf"][0]["$ref"].as_str().unwrap();
        let name = target.strip_prefix("#/components/schemas/").unwrap();
        let spec = &schemas[name];
        assert_eq!(spec["type"], "object");
        assert_eq!(spec["properties"]["replicas"]["type"], "integer");
        // Everything referred to is in the document.
        let text = Value::Object(schemas.clone()).to_string();
        for reference in text.split("\"$ref\":\"").skip(1) {
            let name = reference.split('"').next().unwrap();
            let name = name.strip_prefix("#/components/schemas/").unwrap();
            assert!(schemas.contains_key(name), "{name}");
        }
    }
}
