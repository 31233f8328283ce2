//! Parsing API paths into what they address.

use crate::error::ApiError;
use crate::resource::{self, Resource};

/// What a request path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/api`.
    CoreVersions,
    /// `/apis`.
    Groups,
    /// `/apis/{group}`.
    Group(String),
    /// `/api/v1` or `/apis/{group}/{version}`.
    Resources {
        /// API group ("" for core).
        group: String,
        /// Version.
        version: String,
    },
    /// `/version`.
    Version,
    /// `/healthz`, `/readyz`, `/livez` and their sub-checks.
    Health,
    /// `/metrics` (Prometheus text).
    Metrics,
    /// `/openapi/v2` or `/openapi/v3[/...]`.
    OpenApi(String),
    /// A collection: `.../{plural}` (all namespaces or one).
    Collection {
        /// The resource.
        resource: &'static Resource,
        /// The namespace, if the path names one.
        namespace: Option<String>,
    },
    /// One object, optionally a subresource of it.
    Object {
        /// The resource.
        resource: &'static Resource,
        /// The namespace, if namespaced.
        namespace: Option<String>,
        /// The object name.
        name: String,
        /// The subresource (`status`, `scale`, ...), if any.
        subresource: Option<String>,
    },
}

/// Parses a request path.
pub fn parse(path: &str) -> Result<Route, ApiError> {
    let parts: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api"] => return Ok(Route::CoreVersions),
        ["apis"] => return Ok(Route::Groups),
        ["version"] => return Ok(Route::Version),
        ["healthz" | "readyz" | "livez", ..] => return Ok(Route::Health),
        ["metrics"] => return Ok(Route::Metrics),
        ["openapi", rest @ ..] => return Ok(Route::OpenApi(rest.join("/"))),
        ["apis", group] => return Ok(Route::Group(group.to_string())),
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::no_route(path)),
    };
    if rest.is_empty() {
        return Ok(Route::Resources {
            group: group.to_string(),
            version: version.to_string(),
        });
    }
    let find = |plural: &str| {
        resource::find(group, version, plural).ok_or_else(|| ApiError::no_route(path))
    };
    let object =
        |resource: &'static Resource, namespace: Option<&str>, name: &str, sub: Option<&str>| {
            if let Some(sub) = sub {
                if !resource.has_subresource(sub) {
                    return Err(ApiError::no_route(path));
                }
            }
            Ok(Route::Object {
                resource,
                namespace: namespace.map(String::from),
                name: name.to_string(),
                subresource: sub.map(String::from),
            })
        };
    match rest {
        // /api/v1/namespaces/{ns}/{plural}[/{name}[/{sub}]]
        ["namespaces", ns, plural, tail @ ..] if find(plural).is_ok_and(|r| r.namespaced) => {
            let resource = find(plural)?;
            match tail {
                [] => Ok(Route::Collection {
                    resource,
                    namespace: Some(ns.to_string()),
                }),
                [name] => object(resource, Some(ns), name, None),
                [name, sub] => object(resource, Some(ns), name, Some(sub)),
                _ => Err(ApiError::no_route(path)),
            }
        }
        [plural] => Ok(Route::Collection {
            resource: find(plural)?,
            namespace: None,
        }),
        [plural, name] => {
            let resource = find(plural)?;
            if resource.namespaced {
                return Err(ApiError::no_route(path));
            }
            object(resource, None, name, None)
        }
        [plural, name, sub] => {
            let resource = find(plural)?;
            if resource.namespaced {
                return Err(ApiError::no_route(path));
            }
            object(resource, None, name, Some(sub))
        }
        _ => Err(ApiError::no_route(path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_collections_objects_and_subresources() {
        match parse("/api/v1/namespaces/default/pods").unwrap() {
            Route::Collection {
                resource,
                namespace,
            } => {
                assert_eq!(
                    (resource.plural, namespace.as_deref()),
                    ("pods", Some("default"))
                )
            }
            other => panic!("{other:?}"),
        }
        match parse("/api/v1/namespaces/kube-system").unwrap() {
            Route::Object { resource, name, .. } => assert_eq!(
                (resource.plural, name.as_str()),
                ("namespaces", "kube-system")
            ),
            other => panic!("{other:?}"),
        }
        match parse("/apis/apps/v1/namespaces/a/deployments/web/scale").unwrap() {
            Route::Object { subresource, .. } => assert_eq!(subresource.as_deref(), Some("scale")),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse("/apis/apps/v1").unwrap(),
            Route::Resources {
                group: "apps".into(),
                version: "v1".into()
            }
        );
        assert!(parse("/api/v1/namespaces/a/widgets").is_err());
        assert!(parse("/api/v1/namespaces/a/pods/p/nonsense").is_err());
        assert!(
            parse("/api/v1/pods/p").is_err(),
            "a namespaced object needs its namespace"
        );
    }
}
