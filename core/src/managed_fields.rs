//! Field ownership, as Kubernetes tracks it in `metadata.managedFields`:
//! which manager (kubectl, a controller, a script) set which field, with
//! which operation (`Apply` or `Update`), in the `FieldsV1` format.
//!
//! Server-side apply builds on it: a manager that applies a field another
//! manager set to a different value gets a 409 Conflict naming both (unless
//! it forces), and a field an applier stops applying is removed when no
//! other manager owns it. Updates (PUT and the other patches) take
//! ownership of the fields they change, from whoever held them.
//!
//! A field is named by a path of `FieldsV1` elements: `f:<name>` for an
//! object field, `k:<json>` for the item of a keyed list (containers by
//! `name`, ports by port...), `v:<json>` for a value of a set list
//! (`finalizers`). Lists of plain values and lists of objects without a
//! key are owned as a whole.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use crate::error::{ApiError, FieldCause};
use crate::patch;

/// How a manager wrote: by applying its configuration, or by any other
/// write (create, update, patch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Server-side apply.
    Apply,
    /// Create, update or a non-apply patch.
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// Who writes, how, and through which part of the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldManager {
    /// The manager's name (`fieldManager`, or the client's user agent).
    pub name: String,
    /// Apply or Update.
    pub operation: Operation,
    /// `status` for writes through the status subresource; `None` for the
    /// object itself.
    pub subresource: Option<String>,
}

impl FieldManager {
    /// The longest manager name the API accepts.
    pub const MAX_NAME: usize = 128;

    /// The manager of a request: its `fieldManager` parameter, else the
    /// product of its user agent (`kubectl/v1.32.0 ...` → `kubectl`).
    pub fn of_request(
        field_manager: Option<&str>,
        user_agent: &str,
        operation: Operation,
        subresource: Option<&str>,
    ) -> Result<FieldManager, ApiError> {
        let name = match field_manager.filter(|m| !m.is_empty()) {
            Some(name) => name.to_string(),
            None if operation == Operation::Apply => {
                return Err(ApiError::invalid(
                    "PatchOptions",
                    "",
                    vec![FieldCause {
                        field: "fieldManager".into(),
                        message: "Required value: is required for apply patch".into(),
                    }],
                ))
            }
            None => {
                let product = user_agent.split('/').next().unwrap_or("").trim();
                if product.is_empty() {
                    "unknown".to_string()
                } else {
                    product.chars().take(Self::MAX_NAME).collect()
                }
            }
        };
        if name.chars().count() > Self::MAX_NAME {
            return Err(ApiError::invalid(
                "PatchOptions",
                "",
                vec![FieldCause {
                    field: "fieldManager".into(),
                    message: format!("Too long: may not be longer than {}", Self::MAX_NAME),
                }],
            ));
        }
        Ok(FieldManager {
            name,
            operation,
            subresource: subresource.map(String::from),
        })
    }

    fn owns(&self, entry: &Entry) -> bool {
        entry.manager == self.name
            && entry.operation == self.operation.as_str()
            && entry.subresource == self.subresource
    }

    fn scope(&self) -> Scope {
        if self.subresource.as_deref() == Some("status") {
            Scope::Status
        } else {
            Scope::Object
        }
    }
}

/// Which part of an object a write may own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Everything but `status`.
    Object,
    /// Only `status`.
    Status,
}

/// One path element in `FieldsV1` notation (`f:spec`, `k:{"name":"a"}`...).
type Path = Vec<String>;

/// A set of owned fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FieldSet(BTreeSet<Path>);

/// Metadata fields the server sets; nobody owns them.
const SERVER_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

impl FieldSet {
    /// The fields `object` sets within `scope`.
    fn of(object: &Value, scope: Scope) -> FieldSet {
        let mut set = FieldSet::default();
        let Some(map) = object.as_object() else {
            return set;
        };
        for (key, value) in map {
            let in_scope = match scope {
                Scope::Object => !matches!(key.as_str(), "apiVersion" | "kind" | "status"),
                Scope::Status => key == "status",
            };
            if !in_scope {
                continue;
            }
            let path = vec![format!("f:{key}")];
            if key == "metadata" {
                for (field, value) in value.as_object().into_iter().flatten() {
                    if !SERVER_METADATA.contains(&field.as_str()) {
                        let mut path = path.clone();
                        path.push(format!("f:{field}"));
                        set.collect(value, path, field);
                    }
                }
            } else {
                set.collect(value, path, key);
            }
        }
        set
    }

    fn collect(&mut self, value: &Value, path: Path, field: &str) {
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (key, child) in map {
                    let mut child_path = path.clone();
                    child_path.push(format!("f:{key}"));
                    self.collect(child, child_path, key);
                }
            }
            Value::Array(items) if !items.is_empty() => {
                let sample = items.iter().find(|i| i.is_object());
                let key = patch::merge_key(field, sample)
                    .filter(|key| items.iter().all(|i| i.get(*key).is_some()));
                if let Some(key) = key {
                    for item in items {
                        let mut item_path = path.clone();
                        item_path.push(format!("k:{}", json!({ key: item[key] })));
                        self.0.insert(item_path.clone());
                        for (name, child) in item.as_object().into_iter().flatten() {
                            let mut child_path = item_path.clone();
                            child_path.push(format!("f:{name}"));
                            self.collect(child, child_path, name);
                        }
                    }
                } else if patch::is_set_list(field) && items.iter().all(|i| !i.is_object()) {
                    for item in items {
                        let mut item_path = path.clone();
                        item_path.push(format!("v:{item}"));
                        self.0.insert(item_path);
                    }
                } else {
                    self.0.insert(path);
                }
            }
            _ => {
                self.0.insert(path);
            }
        }
    }

    /// Reads a `FieldsV1` tree.
    fn from_fields_v1(tree: &Value) -> Result<FieldSet, String> {
        let mut set = FieldSet::default();
        set.read_tree(tree, &mut Vec::new())?;
        Ok(set)
    }

    fn read_tree(&mut self, tree: &Value, path: &mut Path) -> Result<(), String> {
        let map = tree
            .as_object()
            .ok_or_else(|| format!("fieldsV1 at {} is not an object", render(path)))?;
        if map.is_empty() && !path.is_empty() {
            self.0.insert(path.clone());
        }
        for (element, child) in map {
            if element == "." {
                if !path.is_empty() {
                    self.0.insert(path.clone());
                }
                continue;
            }
            check_element(element)?;
            path.push(element.clone());
            self.read_tree(child, path)?;
            path.pop();
        }
        Ok(())
    }

    /// Writes the set as a `FieldsV1` tree: nested maps, `{}` for an owned
    /// leaf, `".": {}` for an owned node with owned children.
    fn to_fields_v1(&self) -> Value {
        #[derive(Default)]
        struct Node {
            member: bool,
            children: BTreeMap<String, Node>,
        }
        fn render_node(node: &Node) -> Value {
            let mut map = Map::new();
            if node.member && !node.children.is_empty() {
                map.insert(".".into(), json!({}));
            }
            for (element, child) in &node.children {
                map.insert(element.clone(), render_node(child));
            }
            Value::Object(map)
        }
        let mut root = Node::default();
        for path in &self.0 {
            let mut node = &mut root;
            for element in path {
                node = node.children.entry(element.clone()).or_default();
            }
            node.member = true;
        }
        render_node(&root)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn check_element(element: &str) -> Result<(), String> {
    let ok = match element.split_at_checked(2) {
        Some(("f:", name)) => !name.is_empty(),
        Some(("k:", key)) => serde_json::from_str::<Value>(key).is_ok_and(|k| k.is_object()),
        Some(("v:", value)) => serde_json::from_str::<Value>(value).is_ok(),
        Some(("i:", index)) => index.parse::<usize>().is_ok(),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{element:?} is not a fieldsV1 path element"))
    }
}

/// The value a path names in `object`, if it is there.
fn value_at<'a>(object: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut value = object;
    for element in path {
        value = step(value, element)?;
    }
    Some(value)
}

fn step<'a>(value: &'a Value, element: &str) -> Option<&'a Value> {
    match element.split_at_checked(2)? {
        ("f:", name) => value.get(name),
        _ => {
            let items = value.as_array()?;
            items.get(item_index(items, element)?)
        }
    }
}

fn step_mut<'a>(value: &'a mut Value, element: &str) -> Option<&'a mut Value> {
    match element.split_at_checked(2)? {
        ("f:", name) => value.get_mut(name),
        _ => {
            let items = value.as_array_mut()?;
            let index = item_index(items, element)?;
            items.get_mut(index)
        }
    }
}

/// Where the list item a `k:`, `v:` or `i:` element names is in `items`.
fn item_index(items: &[Value], element: &str) -> Option<usize> {
    let (kind, rest) = element.split_at_checked(2)?;
    match kind {
        "k:" => {
            let key: Map<String, Value> = serde_json::from_str(rest).ok()?;
            items
                .iter()
                .position(|item| key.iter().all(|(k, v)| item.get(k) == Some(v)))
        }
        "v:" => {
            let wanted: Value = serde_json::from_str(rest).ok()?;
            items.iter().position(|item| *item == wanted)
        }
        "i:" => rest.parse::<usize>().ok().filter(|i| *i < items.len()),
        _ => None,
    }
}

/// Removes what a path names from `object`.
fn remove_at(object: &mut Value, path: &[String]) {
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    let mut parent = object;
    for element in parent_path {
        let Some(next) = step_mut(parent, element) else {
            return;
        };
        parent = next;
    }
    match (last.split_at_checked(2), parent) {
        (Some(("f:", name)), Value::Object(map)) => {
            map.remove(name);
        }
        (_, Value::Array(items)) => {
            if let Some(index) = item_index(items, last) {
                items.remove(index);
            }
        }
        _ => {}
    }
}

/// A path as users read it: `.spec.containers[name="web"].image`.
fn render(path: &[String]) -> String {
    let mut out = String::new();
    for element in path {
        match element.split_at_checked(2) {
            Some(("f:", name)) => {
                out.push('.');
                out.push_str(name);
            }
            Some(("k:", key)) => {
                let fields: Map<String, Value> = serde_json::from_str(key).unwrap_or_default();
                let inner: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                out.push_str(&format!("[{}]", inner.join(",")));
            }
            Some(("v:", value)) => out.push_str(&format!("[={value}]")),
            Some(("i:", index)) => out.push_str(&format!("[{index}]")),
            _ => out.push_str(element),
        }
    }
    out
}

/// One `managedFields` entry.
#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    subresource: Option<String>,
    fields: FieldSet,
}

impl Entry {
    fn parse(value: &Value) -> Result<Entry, String> {
        let text = |field: &str| value.get(field).and_then(Value::as_str).map(String::from);
        let operation = text("operation").unwrap_or_default();
        if operation != "Apply" && operation != "Update" {
            return Err(format!(
                "operation must be Apply or Update, not {operation:?}"
            ));
        }
        let fields = match value.get("fieldsV1") {
            Some(tree) => FieldSet::from_fields_v1(tree)?,
            None => FieldSet::default(),
        };
        Ok(Entry {
            manager: text("manager").unwrap_or_default(),
            operation,
            api_version: text("apiVersion").unwrap_or_default(),
            time: text("time").unwrap_or_default(),
            subresource: text("subresource").filter(|s| !s.is_empty()),
            fields,
        })
    }

    fn to_json(&self) -> Value {
        let mut entry = json!({
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": self.fields.to_fields_v1(),
        });
        if let Some(sub) = &self.subresource {
            entry["subresource"] = json!(sub);
        }
        entry
    }

    fn new(manager: &FieldManager, api_version: &str, fields: FieldSet) -> Entry {
        Entry {
            manager: manager.name.clone(),
            operation: manager.operation.as_str().to_string(),
            api_version: api_version.to_string(),
            time: crate::object::now_rfc3339(),
            subresource: manager.subresource.clone(),
            fields,
        }
    }
}

fn read_entries(object: &Value) -> Result<Vec<Entry>, ApiError> {
    match object["metadata"].get("managedFields") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                Entry::parse(item).map_err(|message| {
                    ApiError::bad_request(format!("metadata.managedFields[{i}]: {message}"))
                })
            })
            .collect(),
        Some(_) => Err(ApiError::bad_request(
            "metadata.managedFields must be a list",
        )),
    }
}

fn write_entries(object: &mut Value, entries: Vec<Entry>) {
    let entries: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(Entry::to_json)
        .collect();
    if let Some(meta) = object["metadata"].as_object_mut() {
        if entries.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(entries));
        }
    }
}

/// A path names a field that holds others (a list item), not a value.
fn is_item(path: &[String]) -> bool {
    path.last()
        .is_some_and(|e| e.starts_with("k:") || e.starts_with("v:"))
}

/// Records a create: `manager` owns every field of `object` it may own
/// (defaults included, as they are part of what was created). Entries the
/// client sent are kept as the starting point.
pub fn record_create(
    object: &mut Value,
    manager: &FieldManager,
    api_version: &str,
) -> Result<(), ApiError> {
    let mut entries = read_entries(object)?;
    entries.retain(|e| !manager.owns(e));
    let fields = FieldSet::of(object, manager.scope());
    entries.push(Entry::new(manager, api_version, fields));
    write_entries(object, entries);
    Ok(())
}

/// Records an update from `old` to `new`: `manager` takes the fields whose
/// value it changed (or added) from every other manager; removed fields
/// leave every manager. `managedFields` the client sent that differ from
/// the stored ones replace them first, as in Kubernetes (this is how
/// kubectl moves client-side apply ownership to server-side apply).
pub fn record_update(
    old: &Value,
    new: &mut Value,
    manager: &FieldManager,
    api_version: &str,
) -> Result<(), ApiError> {
    let sent = new["metadata"].get("managedFields").cloned();
    let mut entries = match sent {
        Some(sent) if Some(&sent) != old["metadata"].get("managedFields") => read_entries(new)?,
        _ => read_entries(old)?,
    };
    let scope = manager.scope();
    let before = FieldSet::of(old, scope);
    let after = FieldSet::of(new, scope);
    let changed: BTreeSet<Path> = after
        .0
        .iter()
        .filter(|path| {
            let was = value_at(old, path);
            if is_item(path) {
                was.is_none()
            } else {
                was != value_at(new, path)
            }
        })
        .cloned()
        .collect();
    let removed: BTreeSet<Path> = before.0.difference(&after.0).cloned().collect();
    for entry in &mut entries {
        entry
            .fields
            .0
            .retain(|p| !removed.contains(p) && !changed.contains(p));
    }
    if !changed.is_empty() {
        match entries.iter_mut().find(|e| manager.owns(e)) {
            Some(own) => {
                own.fields.0.extend(changed);
                own.time = crate::object::now_rfc3339();
                own.api_version = api_version.to_string();
            }
            None => entries.push(Entry::new(manager, api_version, FieldSet(changed))),
        }
    }
    write_entries(new, entries);
    Ok(())
}

/// One field two managers disagree on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Conflict {
    manager: String,
    api_version: String,
    path: Path,
}

fn conflict_error(resource: &str, name: &str, conflicts: &[Conflict]) -> ApiError {
    let mut by_manager: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for c in conflicts {
        by_manager
            .entry((c.manager.clone(), c.api_version.clone()))
            .or_default()
            .push(render(&c.path));
    }
    let count = conflicts.len();
    let mut message = format!(
        "Apply failed with {count} conflict{}: ",
        if count == 1 { "" } else { "s" }
    );
    let parts: Vec<String> = by_manager
        .iter()
        .map(|((manager, api_version), fields)| {
            if fields.len() == 1 {
                format!(
                    "conflict with {manager:?} using {api_version}: {}",
                    fields[0]
                )
            } else {
                let lines: Vec<String> = fields.iter().map(|f| format!("- {f}")).collect();
                format!(
                    "conflicts with {manager:?} using {api_version}:\n{}",
                    lines.join("\n")
                )
            }
        })
        .collect();
    message.push_str(&parts.join("\n"));
    let mut error = ApiError::conflict(resource, name);
    error.message = message;
    error.causes = conflicts
        .iter()
        .map(|c| FieldCause {
            field: render(&c.path),
            message: format!("conflict with {:?} using {}", c.manager, c.api_version),
        })
        .collect();
    error
}

/// Server-side apply of `config` by `manager` onto `live`, in place.
///
/// Fields of `config` that another manager owns with a different value are
/// conflicts: a 409 listing them, unless `force`, which takes them over.
/// The configuration is then merged in (keyed lists by key, other lists
/// whole), the fields this manager applied last time but no longer does
/// are removed unless another manager owns them, and the manager's entry
/// becomes exactly the applied fields.
pub fn apply(
    live: &mut Value,
    config: &Value,
    manager: &FieldManager,
    force: bool,
    api_version: &str,
) -> Result<(), ApiError> {
    let scope = manager.scope();
    // Each scope applies only its own part of the configuration.
    let mut config = match scope {
        Scope::Object => {
            let mut config = config.clone();
            if let Some(map) = config.as_object_mut() {
                map.remove("status");
            }
            config
        }
        Scope::Status => match config.get("status") {
            Some(status) => json!({ "status": status }),
            None => json!({}),
        },
    };
    if let Some(meta) = config["metadata"].as_object_mut() {
        meta.remove("managedFields");
        meta.remove("resourceVersion");
    }
    let mut entries = read_entries(live)?;
    let applied = FieldSet::of(&config, scope);
    let mut conflicts = Vec::new();
    for entry in entries.iter().filter(|e| !manager.owns(e)) {
        for path in applied.0.intersection(&entry.fields.0) {
            if !is_item(path) && value_at(&config, path) != value_at(live, path) {
                conflicts.push(Conflict {
                    manager: entry.manager.clone(),
                    api_version: entry.api_version.clone(),
                    path: path.clone(),
                });
            }
        }
    }
    if !conflicts.is_empty() {
        if !force && !set_by_client_side_apply(live, manager, &conflicts) {
            let plural = live["kind"].as_str().unwrap_or("object").to_lowercase();
            return Err(conflict_error(
                &plural,
                crate::object::name(live),
                &conflicts,
            ));
        }
        let taken: BTreeSet<&Path> = conflicts.iter().map(|c| &c.path).collect();
        for entry in entries.iter_mut().filter(|e| !manager.owns(e)) {
            entry.fields.0.retain(|p| !taken.contains(p));
        }
    }
    let previous = entries
        .iter()
        .find(|e| manager.owns(e))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let others: BTreeSet<&Path> = entries
        .iter()
        .filter(|e| !manager.owns(e))
        .flat_map(|e| e.fields.0.iter())
        .collect();
    patch::strategic_merge(live, &config);
    let mut dropped: Vec<&Path> = previous
        .0
        .iter()
        .filter(|p| !applied.0.contains(*p))
        .filter(|p| !others.iter().any(|o| o.starts_with(p)))
        .collect();
    // Shallowest first: a dropped list item goes whole (its fields are
    // dropped with it; removing them first would lose the item's key).
    dropped.sort_by_key(|p| p.len());
    for path in dropped {
        remove_at(live, path);
    }
    entries.retain(|e| !manager.owns(e));
    entries.push(Entry::new(manager, api_version, applied));
    write_entries(live, entries);
    keep_last_applied_current(live, &config, manager);
    Ok(())
}

/// kubectl's client-side apply records what it applied in this annotation.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The applier kubectl uses for `apply --server-side`.
const KUBECTL_APPLIER: &str = "kubectl";

/// As in Kubernetes: kubectl's server-side apply takes over, without a
/// conflict, the fields its client-side apply set, so that a user can move
/// from `kubectl apply` to `kubectl apply --server-side` (other appliers
/// opt out by using another manager name). True when every conflict is a
/// field of the object's last-applied configuration.
fn set_by_client_side_apply(live: &Value, manager: &FieldManager, conflicts: &[Conflict]) -> bool {
    if manager.name != KUBECTL_APPLIER || manager.subresource.is_some() {
        return false;
    }
    let Some(last_applied) = live["metadata"]["annotations"][LAST_APPLIED]
        .as_str()
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
    else {
        return false;
    };
    let allowed = FieldSet::of(&last_applied, Scope::Object);
    conflicts.iter().all(|c| allowed.0.contains(&c.path))
}

/// As in Kubernetes: while an object carries the client-side apply
/// annotation, kubectl's server-side apply keeps it equal to what it
/// applied, so a later client-side apply computes its patch from it.
fn keep_last_applied_current(live: &mut Value, config: &Value, manager: &FieldManager) {
    if manager.name != KUBECTL_APPLIER
        || manager.subresource.is_some()
        || !live["metadata"]["annotations"][LAST_APPLIED].is_string()
    {
        return;
    }
    let mut applied = config.clone();
    if let Some(annotations) = applied["metadata"]["annotations"].as_object_mut() {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            if let Some(meta) = applied["metadata"].as_object_mut() {
                meta.remove("annotations");
            }
        }
    }
    live["metadata"]["annotations"][LAST_APPLIED] = json!(applied.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager(name: &str, operation: Operation) -> FieldManager {
        FieldManager {
            name: name.into(),
            operation,
            subresource: None,
        }
    }

    fn owned(object: &Value, manager: &str) -> Vec<String> {
        let entries = read_entries(object).unwrap();
        let entry = entries.iter().find(|e| e.manager == manager);
        entry
            .map(|e| e.fields.0.iter().map(|p| render(p)).collect())
            .unwrap_or_default()
    }

    #[test]
    fn fields_v1_round_trips_with_keyed_items_and_set_values() {
        let object = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "uid": "u", "labels": {"app": "web"}, "finalizers": ["a/b"]},
            "spec": {"containers": [{"name": "c", "image": "i", "args": ["x", "y"]}]},
            "status": {"phase": "Running"}
        });
        let set = FieldSet::of(&object, Scope::Object);
        let tree = set.to_fields_v1();
        assert_eq!(
            tree,
            json!({
                "f:metadata": {"f:labels": {"f:app": {}}, "f:finalizers": {"v:\"a/b\"": {}}},
                "f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {
                    ".": {}, "f:args": {}, "f:image": {}, "f:name": {}
                }}}
            })
        );
        assert_eq!(FieldSet::from_fields_v1(&tree).unwrap(), set);
        assert!(FieldSet::from_fields_v1(&json!({"x:bad": {}})).is_err());
        let status = FieldSet::of(&object, Scope::Status);
        assert_eq!(status.to_fields_v1(), json!({"f:status": {"f:phase": {}}}));
    }

    #[test]
    fn apply_conflicts_with_another_managers_value_unless_forced() {
        let mut live = json!({"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});
        record_create(&mut live, &manager("creator", Operation::Update), "v1").unwrap();
        let config = json!({"metadata": {"name": "c"}, "data": {"a": "2", "b": "3"}});
        let applier = manager("kubectl", Operation::Apply);
        let err = apply(&mut live.clone(), &config, &applier, false, "v1").unwrap_err();
        assert_eq!(err.code, 409);
        assert!(
            err.message
                .contains("conflict with \"creator\" using v1: .data.a"),
            "{}",
            err.message
        );
        // The same value is shared ownership, not a conflict.
        let same = json!({"metadata": {"name": "c"}, "data": {"a": "1"}});
        let mut shared = live.clone();
        apply(&mut shared, &same, &applier, false, "v1").unwrap();
        assert_eq!(owned(&shared, "creator"), vec![".data.a"]);
        assert_eq!(owned(&shared, "kubectl"), vec![".data.a"]);
        // Forced: the applier takes the field.
        apply(&mut live, &config, &applier, true, "v1").unwrap();
        assert_eq!(live["data"], json!({"a": "2", "b": "3"}));
        assert!(owned(&live, "creator").is_empty());
        assert_eq!(owned(&live, "kubectl"), vec![".data.a", ".data.b"]);
    }

    #[test]
    fn apply_removes_fields_it_stopped_applying_unless_others_own_them() {
        let mut live = json!({"kind": "Deployment", "metadata": {"name": "d"}});
        let applier = manager("kubectl", Operation::Apply);
        let first = json!({"metadata": {"name": "d", "labels": {"a": "1", "b": "2"}},
            "spec": {"template": {"spec": {"containers": [
                {"name": "web", "image": "w"}, {"name": "side", "image": "s"}]}}}});
        apply(&mut live, &first, &applier, false, "apps/v1").unwrap();
        // Another manager changes label b.
        let old = live.clone();
        live["metadata"]["labels"]["b"] = json!("9");
        record_update(
            &old,
            &mut live,
            &manager("editor", Operation::Update),
            "apps/v1",
        )
        .unwrap();
        let second = json!({"metadata": {"name": "d"},
            "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "w2"}]}}}});
        apply(&mut live, &second, &applier, false, "apps/v1").unwrap();
        assert_eq!(live["metadata"]["labels"], json!({"b": "9"}));
        assert_eq!(
            live["spec"]["template"]["spec"]["containers"],
            json!([{"name": "web", "image": "w2"}])
        );
    }

    #[test]
    fn a_status_apply_touches_only_the_status() {
        let mut live = json!({"kind": "Pod", "metadata": {"name": "p"},
            "spec": {"nodeName": "n1"}, "status": {"phase": "Pending"}});
        let status_applier = FieldManager {
            name: "agent".into(),
            operation: Operation::Apply,
            subresource: Some("status".into()),
        };
        let config = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n2"},
            "status": {"phase": "Running"}});
        apply(&mut live, &config, &status_applier, false, "v1").unwrap();
        assert_eq!(live["status"]["phase"], "Running");
        assert_eq!(
            live["spec"]["nodeName"], "n1",
            "the spec is not the status's"
        );
        // A configuration without a status leaves the status alone.
        let bare = json!({"metadata": {"name": "p"}});
        apply(&mut live, &bare, &status_applier, false, "v1").unwrap();
        assert_eq!(live["status"]["phase"], "Running");
    }

    #[test]
    fn updates_take_the_fields_they_change() {
        let mut live =
            json!({"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}});
        record_create(&mut live, &manager("creator", Operation::Update), "v1").unwrap();
        let old = live.clone();
        live["data"]["a"] = json!("5");
        live["data"].as_object_mut().unwrap().remove("b");
        live["data"]["c"] = json!("3");
        record_update(&old, &mut live, &manager("editor", Operation::Update), "v1").unwrap();
        assert!(owned(&live, "creator").is_empty());
        assert_eq!(owned(&live, "editor"), vec![".data.a", ".data.c"]);
        // managedFields sent by the client replace the stored ones.
        let old = live.clone();
        live["metadata"]["managedFields"] = json!([{"manager": "mover", "operation": "Apply",
            "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:a": {}}}}]);
        record_update(
            &old,
            &mut live,
            &manager("kubectl", Operation::Update),
            "v1",
        )
        .unwrap();
        assert_eq!(owned(&live, "mover"), vec![".data.a"]);
        assert!(owned(&live, "editor").is_empty());
    }

    #[test]
    fn the_manager_comes_from_the_parameter_or_the_user_agent() {
        let m = FieldManager::of_request(
            None,
            "kubectl/v1.32.0 (linux/amd64)",
            Operation::Update,
            None,
        )
        .unwrap();
        assert_eq!(m.name, "kubectl");
        assert_eq!(
            FieldManager::of_request(None, "", Operation::Apply, None)
                .unwrap_err()
                .code,
            422
        );
        let long = "x".repeat(129);
        assert!(FieldManager::of_request(Some(&long), "", Operation::Update, None).is_err());
    }
}
