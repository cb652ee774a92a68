//! Field ownership (`metadata.managedFields`) and server-side apply.
//!
//! Every write records which manager owns which fields, in upstream's `FieldsV1` form
//! (`f:<field>`, `k:<key object>` for items of keyed lists, `v:<value>` for set items, `.` for
//! an item itself). An update takes ownership of the fields it changed; an apply owns exactly
//! the fields of its configuration, conflicts with other owners of fields it would change
//! (unless forced), and removes fields it applied before but no longer does and nobody else
//! owns. Lists are merged with the built-in merge keys (see `patch`); other lists are atomic.
//! Everything here is pure: the registry calls it inside its compare-and-swap loop.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::patch::{ListStrategy, list_strategy};
use crate::status::{ApiError, Cause};

/// A path to one field, as a list of FieldsV1 elements (`f:spec`, `k:{"name":"web"}`, ...).
type Path = Vec<String>;
type FieldSet = BTreeSet<Path>;

/// Identity and bookkeeping fields nobody owns.
const UNOWNED_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
];

/// The part of `object` whose fields are tracked for a write to `subresource`.
fn tracked(object: &Value, subresource: Option<&str>) -> Value {
    let Some(map) = object.as_object() else { return json!({}) };
    let mut out = Map::new();
    for (key, value) in map {
        match key.as_str() {
            "apiVersion" | "kind" => {}
            "status" if subresource != Some("status") => {}
            "status" => {
                out.insert(key.clone(), value.clone());
            }
            "metadata" => {
                let mut meta = value.as_object().cloned().unwrap_or_default();
                meta.retain(|k, _| !UNOWNED_METADATA.contains(&k.as_str()));
                if !meta.is_empty() && subresource != Some("status") {
                    out.insert(key.clone(), Value::Object(meta));
                }
            }
            _ if subresource == Some("status") => {}
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    Value::Object(out)
}

fn dotted(parent: &str, field: &str) -> String {
    if parent.is_empty() { field.to_owned() } else { format!("{parent}.{field}") }
}

fn key_element(item: &Value, key: &str) -> Option<String> {
    let value = item.get(key)?;
    Some(format!("k:{}", json!({ key: value })))
}

/// Every owned path of `value`: leaves, plus the items of keyed and set lists.
fn leaves(kind: &str, value: &Value, path: &mut Path, dotted_path: &str, out: &mut FieldSet) {
    let Some(map) = value.as_object() else { return };
    for (field, child) in map {
        path.push(format!("f:{field}"));
        value_paths(kind, child, path, &dotted(dotted_path, field), out);
        path.pop();
    }
}

/// The owned paths of `value` found at `path` (`dotted_path` names it for list strategies).
fn value_paths(kind: &str, value: &Value, path: &mut Path, dotted_path: &str, out: &mut FieldSet) {
    match value {
        Value::Object(inner) if !inner.is_empty() => leaves(kind, value, path, dotted_path, out),
        Value::Array(items) => match list_strategy(kind, dotted_path) {
            ListStrategy::MergeKey(key) => {
                for item in items {
                    let Some(element) = key_element(item, key) else { continue };
                    path.push(element);
                    out.insert(path.clone());
                    leaves(kind, item, path, dotted_path, out);
                    path.pop();
                }
            }
            ListStrategy::Primitive => {
                for item in items {
                    path.push(format!("v:{item}"));
                    out.insert(path.clone());
                    path.pop();
                }
            }
            ListStrategy::Replace => {
                out.insert(path.clone());
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
}

/// What a write changed, as owned paths: `changed` gets every path whose value differs
/// between `old` and `new` (including paths only one side has), `owned` those of them that
/// exist in `new`. Equal subtrees are skipped whole, so the cost follows the change, not
/// the object (a Lease renewal touches one field of a small object; a pod status write
/// leaves the spec alone).
struct Diff<'k> {
    kind: &'k str,
    changed: FieldSet,
    owned: FieldSet,
}

impl Diff<'_> {
    fn value(&mut self, old: Option<&Value>, new: Option<&Value>, path: &mut Path, dotted: &str) {
        if old == new {
            return;
        }
        match (old, new) {
            (Some(Value::Object(o)), Some(Value::Object(n))) if !o.is_empty() && !n.is_empty() => {
                self.fields(Some(o), Some(n), path, dotted);
            }
            (Some(Value::Array(o)), Some(Value::Array(n))) => {
                match list_strategy(self.kind, dotted) {
                    ListStrategy::MergeKey(key) => self.keyed_items(o, n, key, path, dotted),
                    ListStrategy::Primitive => {
                        for item in n.iter().filter(|i| !o.contains(i)) {
                            path.push(format!("v:{item}"));
                            self.owned.insert(path.clone());
                            self.changed.insert(path.clone());
                            path.pop();
                        }
                        for item in o.iter().filter(|i| !n.contains(i)) {
                            path.push(format!("v:{item}"));
                            self.changed.insert(path.clone());
                            path.pop();
                        }
                    }
                    ListStrategy::Replace => {
                        self.owned.insert(path.clone());
                        self.changed.insert(path.clone());
                    }
                }
            }
            _ => {
                // Different shapes (or scalars): everything either side has here changed.
                if let Some(new) = new {
                    let mut paths = FieldSet::new();
                    value_paths(self.kind, new, path, dotted, &mut paths);
                    self.changed.extend(paths.iter().cloned());
                    self.owned.extend(paths);
                }
                if let Some(old) = old {
                    value_paths(self.kind, old, path, dotted, &mut self.changed);
                }
            }
        }
    }

    fn fields(
        &mut self,
        old: Option<&Map<String, Value>>,
        new: Option<&Map<String, Value>>,
        path: &mut Path,
        dotted_path: &str,
    ) {
        for (field, value) in new.into_iter().flatten() {
            path.push(format!("f:{field}"));
            let old_value = old.and_then(|o| o.get(field));
            self.value(old_value, Some(value), path, &dotted(dotted_path, field));
            path.pop();
        }
        for (field, value) in old.into_iter().flatten() {
            if new.is_some_and(|n| n.contains_key(field)) {
                continue;
            }
            path.push(format!("f:{field}"));
            self.value(Some(value), None, path, &dotted(dotted_path, field));
            path.pop();
        }
    }

    fn keyed_items(
        &mut self,
        old: &[Value],
        new: &[Value],
        key: &str,
        path: &mut Path,
        dotted: &str,
    ) {
        // An item is found by the first one with its key, as `get` finds it.
        let find = |items: &'_ [Value], item: &Value| -> Option<usize> {
            let wanted = item.get(key)?;
            items.iter().position(|i| i.get(key) == Some(wanted))
        };
        for item in new {
            let Some(element) = key_element(item, key) else { continue };
            let before = find(old, item).map(|i| &old[i]);
            if before == Some(item) {
                continue;
            }
            path.push(element);
            self.owned.insert(path.clone());
            self.changed.insert(path.clone());
            self.fields(before.and_then(Value::as_object), item.as_object(), path, dotted);
            path.pop();
        }
        for item in old {
            let Some(element) = key_element(item, key) else { continue };
            if find(new, item).is_some() {
                continue;
            }
            path.push(element);
            self.changed.insert(path.clone());
            leaves(self.kind, item, path, dotted, &mut self.changed);
            path.pop();
        }
    }

    /// Compares what `subresource` tracks of both objects (see `tracked`) without copying them.
    fn objects(&mut self, old: &Value, new: &Value, subresource: Option<&str>) {
        let empty = Map::new();
        let old = old.as_object().unwrap_or(&empty);
        let new = new.as_object().unwrap_or(&empty);
        let status = subresource == Some("status");
        let mut path = Vec::new();
        let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
        for key in keys {
            match key.as_str() {
                "apiVersion" | "kind" => {}
                "status" if !status => {}
                "metadata" if !status => {
                    let (o, n) = (
                        old.get("metadata").and_then(Value::as_object),
                        new.get("metadata").and_then(Value::as_object),
                    );
                    let fields: BTreeSet<&String> = o
                        .into_iter()
                        .chain(n)
                        .flat_map(Map::keys)
                        .filter(|k| !UNOWNED_METADATA.contains(&k.as_str()))
                        .collect();
                    path.push("f:metadata".to_owned());
                    for field in fields {
                        path.push(format!("f:{field}"));
                        let (before, after) =
                            (o.and_then(|m| m.get(field)), n.and_then(|m| m.get(field)));
                        self.value(before, after, &mut path, &dotted("metadata", field));
                        path.pop();
                    }
                    path.pop();
                }
                "metadata" => {}
                _ if status && key != "status" => {}
                _ => {
                    path.push(format!("f:{key}"));
                    self.value(old.get(key), new.get(key), &mut path, key);
                    path.pop();
                }
            }
        }
    }
}

/// The `fieldsV1` of a writer that owns every tracked field of `object` (a create),
/// rendered straight from the object: the same tree `render_fields(&field_set(..))` gives
/// (a unit test holds them together) without building a path per field, which made the
/// managed fields a tenth of the cost of creating a pod.
fn owned_fields_v1(kind: &str, object: &Value, subresource: Option<&str>) -> Map<String, Value> {
    let mut out = Map::new();
    let Some(map) = object.as_object() else { return out };
    let status_write = subresource == Some("status");
    for (key, value) in map {
        let node = match key.as_str() {
            "apiVersion" | "kind" => None,
            "status" if status_write => owned_node(kind, value, key),
            _ if status_write => None,
            "status" => None,
            "metadata" => {
                let Some(meta) = value.as_object() else { continue };
                let fields: Map<String, Value> = meta
                    .iter()
                    .filter(|(k, _)| !UNOWNED_METADATA.contains(&k.as_str()))
                    .filter_map(|(k, v)| {
                        let node = owned_node(kind, v, &dotted("metadata", k))?;
                        Some((format!("f:{k}"), node))
                    })
                    .collect();
                (!fields.is_empty()).then_some(Value::Object(fields))
            }
            _ => owned_node(kind, value, key),
        };
        if let Some(node) = node {
            out.insert(format!("f:{key}"), node);
        }
    }
    out
}

/// The `fieldsV1` node of a field holding `value` at `dotted_path`; None when it owns
/// nothing (an empty keyed or set list, an object of such).
fn owned_node(kind: &str, value: &Value, dotted_path: &str) -> Option<Value> {
    match value {
        Value::Object(inner) if !inner.is_empty() => {
            let fields = owned_children(kind, inner, dotted_path);
            (!fields.is_empty()).then_some(Value::Object(fields))
        }
        Value::Array(items) => {
            let mut out = Map::new();
            match list_strategy(kind, dotted_path) {
                ListStrategy::Replace => return Some(json!({})),
                ListStrategy::Primitive => {
                    for item in items {
                        out.insert(format!("v:{item}"), json!({}));
                    }
                }
                ListStrategy::MergeKey(key) => {
                    for item in items {
                        let Some(element) = key_element(item, key) else { continue };
                        let mut fields = item
                            .as_object()
                            .map(|o| owned_children(kind, o, dotted_path))
                            .unwrap_or_default();
                        if !fields.is_empty() {
                            fields.insert(".".into(), json!({}));
                        }
                        match out.get_mut(&element) {
                            // Items with the same key own the union of their fields.
                            Some(existing) => merge_fields(existing, Value::Object(fields)),
                            None => {
                                out.insert(element, Value::Object(fields));
                            }
                        }
                    }
                }
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        _ => Some(json!({})),
    }
}

fn owned_children(kind: &str, map: &Map<String, Value>, dotted_path: &str) -> Map<String, Value> {
    map.iter()
        .filter_map(|(field, child)| {
            let node = owned_node(kind, child, &dotted(dotted_path, field))?;
            Some((format!("f:{field}"), node))
        })
        .collect()
}

fn merge_fields(into: &mut Value, from: Value) {
    let (Some(into), Value::Object(from)) = (into.as_object_mut(), from) else { return };
    for (key, value) in from {
        match into.get_mut(&key) {
            Some(existing) => merge_fields(existing, value),
            None => {
                into.insert(key, value);
            }
        }
    }
}

fn field_set(kind: &str, object: &Value, subresource: Option<&str>) -> FieldSet {
    let mut out = FieldSet::new();
    leaves(kind, &tracked(object, subresource), &mut Vec::new(), "", &mut out);
    out
}

/// The value at `path`, if present.
fn get<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut current = value;
    for element in path {
        current = if let Some(field) = element.strip_prefix("f:") {
            current.get(field)?
        } else if let Some(key) = element.strip_prefix("k:") {
            let key: Value = serde_json::from_str(key).ok()?;
            let (k, v) = key.as_object()?.iter().next()?;
            current.as_array()?.iter().find(|item| item.get(k) == Some(v))?
        } else if let Some(set_value) = element.strip_prefix("v:") {
            let wanted: Value = serde_json::from_str(set_value).ok()?;
            current.as_array()?.iter().find(|item| **item == wanted)?
        } else {
            return None;
        };
    }
    Some(current)
}

/// Removes the field or list item at `path` (no-op when absent).
fn remove(value: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut current = value;
    for element in parents {
        let next = if let Some(field) = element.strip_prefix("f:") {
            current.get_mut(field)
        } else if let Some(key) = element.strip_prefix("k:") {
            let Ok(key) = serde_json::from_str::<Value>(key) else { return };
            let Some((k, v)) =
                key.as_object().and_then(|o| o.iter().next()).map(|(k, v)| (k.clone(), v.clone()))
            else {
                return;
            };
            current
                .as_array_mut()
                .and_then(|items| items.iter_mut().find(|item| item.get(&k) == Some(&v)))
        } else {
            None
        };
        let Some(next) = next else { return };
        current = next;
    }
    if let Some(field) = last.strip_prefix("f:") {
        if let Some(map) = current.as_object_mut() {
            map.remove(field);
        }
    } else if let Some(key) = last.strip_prefix("k:") {
        let Ok(key) = serde_json::from_str::<Value>(key) else { return };
        if let (Some((k, v)), Some(items)) =
            (key.as_object().and_then(|o| o.iter().next()), current.as_array_mut())
        {
            items.retain(|item| item.get(k) != Some(v));
        }
    } else if let Some(set_value) = last.strip_prefix("v:")
        && let Ok(wanted) = serde_json::from_str::<Value>(set_value)
        && let Some(items) = current.as_array_mut()
    {
        items.retain(|item| *item != wanted);
    }
}

/// Merges an applied configuration into the live object.
fn merge(kind: &str, live: &mut Value, config: &Value, dotted_path: &str) {
    match (live.as_object_mut(), config.as_object()) {
        (Some(live_map), Some(config_map)) => {
            for (field, value) in config_map {
                let child_dotted = dotted(dotted_path, field);
                match live_map.get_mut(field) {
                    Some(existing) => merge(kind, existing, value, &child_dotted),
                    None => {
                        live_map.insert(field.clone(), value.clone());
                    }
                }
            }
        }
        _ => match (live.as_array_mut(), config.as_array(), list_strategy(kind, dotted_path)) {
            (Some(live_items), Some(config_items), ListStrategy::MergeKey(key)) => {
                for item in config_items {
                    match live_items
                        .iter_mut()
                        .find(|l| l.get(key).is_some() && l.get(key) == item.get(key))
                    {
                        Some(existing) => merge(kind, existing, item, dotted_path),
                        None => live_items.push(item.clone()),
                    }
                }
            }
            (Some(live_items), Some(config_items), ListStrategy::Primitive) => {
                for item in config_items {
                    if !live_items.contains(item) {
                        live_items.push(item.clone());
                    }
                }
            }
            _ => *live = config.clone(),
        },
    }
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
    /// A new Update entry of `writer` owning `fields`.
    fn update(writer: Writer<'_>, fields: FieldSet) -> Entry {
        Entry {
            manager: writer.manager.to_owned(),
            operation: "Update".into(),
            api_version: writer.api_version.to_owned(),
            time: now(),
            subresource: writer.subresource.map(str::to_owned),
            fields,
        }
    }
}

fn parse_fields(node: &Value, path: &mut Path, out: &mut FieldSet) {
    let Some(map) = node.as_object() else { return };
    for (element, child) in map {
        if element == "." {
            out.insert(path.clone());
            continue;
        }
        path.push(element.clone());
        if child.as_object().is_none_or(Map::is_empty) {
            out.insert(path.clone());
        } else {
            parse_fields(child, path, out);
        }
        path.pop();
    }
}

#[derive(Default)]
struct Node {
    owned: bool,
    children: std::collections::BTreeMap<String, Node>,
}

fn render_node(node: &Node) -> Map<String, Value> {
    let mut out = Map::new();
    for (element, child) in &node.children {
        let mut rendered = render_node(child);
        // An owned path that also has owned children is a list item: mark it ".".
        if child.owned && !rendered.is_empty() {
            rendered.insert(".".into(), json!({}));
        }
        out.insert(element.clone(), Value::Object(rendered));
    }
    out
}

fn render_fields(fields: &FieldSet) -> Value {
    let mut root = Node::default();
    for path in fields {
        let mut node = &mut root;
        for element in path {
            node = node.children.entry(element.clone()).or_default();
        }
        node.owned = true;
    }
    Value::Object(render_node(&root))
}

fn read_entry(e: &Value) -> Entry {
    let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let mut fields = FieldSet::new();
    parse_fields(e.get("fieldsV1").unwrap_or(&Value::Null), &mut Vec::new(), &mut fields);
    Entry {
        manager: text("manager"),
        operation: text("operation"),
        api_version: text("apiVersion"),
        time: text("time"),
        subresource: e.get("subresource").and_then(Value::as_str).map(str::to_owned),
        fields,
    }
}

fn read_entries(object: &Value) -> Vec<Entry> {
    let Some(list) = object.pointer("/metadata/managedFields").and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter().map(read_entry).collect()
}

fn render_entry(e: Entry) -> Value {
    let fields_v1 = render_fields(&e.fields);
    entry_json(
        &e.manager,
        &e.operation,
        &e.api_version,
        &e.time,
        e.subresource.as_deref(),
        fields_v1,
    )
}

/// One `managedFields` item.
fn entry_json(
    manager: &str,
    operation: &str,
    api_version: &str,
    time: &str,
    subresource: Option<&str>,
    fields_v1: Value,
) -> Value {
    let mut entry = json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": time,
        "fieldsType": "FieldsV1",
        "fieldsV1": fields_v1,
    });
    if let Some(sub) = subresource {
        entry["subresource"] = json!(sub);
    }
    entry
}

fn set_entries(object: &mut Value, list: Vec<Value>) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn write_entries(object: &mut Value, entries: Vec<Entry>) {
    let list = entries.into_iter().filter(|e| !e.fields.is_empty()).map(render_entry).collect();
    set_entries(object, list);
}

fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Who is writing: the field manager, its operation and the API version it used.
#[derive(Debug, Clone, Copy)]
pub struct Writer<'a> {
    /// `fieldManager`.
    pub manager: &'a str,
    /// The API version of the request (`apps/v1`).
    pub api_version: &'a str,
    /// The subresource written, if any.
    pub subresource: Option<&'a str>,
}

/// Records an Update (or a create) by `writer`: it takes ownership of every field it changed
/// (all fields, for a create), which other managers lose.
pub fn record_update(kind: &str, old: Option<&Value>, new: &mut Value, writer: Writer<'_>) {
    let Some(old) = old else {
        // A create owns every field; nobody else owns anything yet (the common, hot case).
        let fields = owned_fields_v1(kind, new, writer.subresource);
        let list = if fields.is_empty() {
            Vec::new()
        } else {
            vec![entry_json(
                writer.manager,
                "Update",
                writer.api_version,
                &now(),
                writer.subresource,
                Value::Object(fields),
            )]
        };
        set_entries(new, list);
        return;
    };
    let mut diff = Diff { kind, changed: FieldSet::new(), owned: FieldSet::new() };
    diff.objects(old, new, writer.subresource);
    // Other managers lose what this write changed; entries that own none of it are kept
    // as stored, not parsed and rendered again. (Nothing outside the written part can
    // vanish: the registry carries it over from the stored object.)
    enum Slot {
        Kept(Value),
        Changed(Entry),
    }
    let stored = old.pointer("/metadata/managedFields").and_then(Value::as_array);
    // A patch starts from the stored object, so the written object nearly always carries the
    // stored list unchanged: its entries are moved from there rather than copied (an entry
    // of a pod's creator is as large as the pod's spec, and every status write keeps it).
    let mut carried = match (stored, new.pointer_mut("/metadata/managedFields")) {
        (Some(stored), Some(Value::Array(written))) if stored == written => {
            Some(std::mem::take(written))
        }
        _ => None,
    };
    let mut slots: Vec<Slot> = Vec::new();
    let mut mine = None;
    for (i, e) in stored.into_iter().flatten().enumerate() {
        let is_writer = mine.is_none()
            && e.get("manager").and_then(Value::as_str) == Some(writer.manager)
            && e.get("operation").and_then(Value::as_str) == Some("Update")
            && e.get("subresource").and_then(Value::as_str) == writer.subresource;
        let fields = e.get("fieldsV1").unwrap_or(&Value::Null);
        if !is_writer && !diff.changed.iter().any(|p| owns(fields, p)) {
            let kept = carried
                .as_mut()
                .and_then(|list| list.get_mut(i))
                .map_or_else(|| e.clone(), std::mem::take);
            slots.push(Slot::Kept(kept));
            continue;
        }
        let mut entry = read_entry(e);
        entry.fields.retain(|p| !diff.changed.contains(p));
        if is_writer {
            mine = Some(slots.len());
        }
        slots.push(Slot::Changed(entry));
    }
    match mine.and_then(|i| slots.get_mut(i)) {
        Some(Slot::Changed(entry)) => {
            entry.fields.extend(diff.owned);
            entry.time = now();
            entry.api_version = writer.api_version.to_owned();
        }
        _ => slots.push(Slot::Changed(Entry::update(writer, diff.owned))),
    }
    let list = slots
        .into_iter()
        .filter_map(|slot| match slot {
            Slot::Kept(v) => Some(v),
            Slot::Changed(e) if e.fields.is_empty() => None,
            Slot::Changed(e) => Some(render_entry(e)),
        })
        .collect();
    set_entries(new, list);
}

/// Whether `fieldsV1` owns exactly `path` (a leaf `{}`, or an item marked `.`).
fn owns(fields_v1: &Value, path: &[String]) -> bool {
    let mut node = fields_v1;
    for element in path {
        match node.get(element) {
            Some(next) => node = next,
            None => return false,
        }
    }
    node.as_object().is_some_and(|m| m.is_empty() || m.contains_key("."))
}

fn render_path(path: &[String]) -> String {
    path.iter()
        .map(|e| {
            if let Some(f) = e.strip_prefix("f:") {
                format!(".{f}")
            } else if let Some(k) = e.strip_prefix("k:") {
                let key: Value = serde_json::from_str(k).unwrap_or(Value::Null);
                key.as_object()
                    .map(|o| o.iter().map(|(k, v)| format!("[{k}={v}]")).collect::<String>())
                    .unwrap_or_default()
            } else if let Some(v) = e.strip_prefix("v:") {
                format!("[={v}]")
            } else {
                e.clone()
            }
        })
        .collect()
}

/// Server-side apply of `config` by `writer` onto `live` (None: the object is being created).
/// Returns the new object with its managed fields, or a 409 listing the conflicts.
pub fn apply(
    kind: &str,
    live: Option<&Value>,
    config: &Value,
    writer: Writer<'_>,
    force: bool,
) -> Result<Value, ApiError> {
    let config_fields = field_set(kind, config, writer.subresource);
    let mut entries = live.map(read_entries).unwrap_or_default();
    let mut result = live.cloned().unwrap_or_else(|| json!({}));
    let is_mine = |e: &Entry| e.manager == writer.manager && e.operation == "Apply";
    if let Some(live) = live {
        let mut conflicts: Vec<(String, String, Path)> = Vec::new();
        for entry in entries.iter().filter(|e| !is_mine(e)) {
            for path in entry.fields.intersection(&config_fields) {
                if get(live, path) != get(config, path) {
                    conflicts.push((
                        entry.manager.clone(),
                        entry.api_version.clone(),
                        path.clone(),
                    ));
                }
            }
        }
        if !conflicts.is_empty() {
            if !force {
                let causes: Vec<Cause> = conflicts
                    .iter()
                    .map(|(manager, version, path)| {
                        Cause::new(
                            "FieldManagerConflict",
                            &render_path(path),
                            format!("conflict with \"{manager}\" using {version}"),
                        )
                    })
                    .collect();
                let message = if conflicts.len() == 1 {
                    let (manager, version, path) = &conflicts[0];
                    format!(
                        "Apply failed with 1 conflict: conflict with \"{manager}\" using {version}: {}",
                        render_path(path)
                    )
                } else {
                    let lines: Vec<String> = conflicts
                        .iter()
                        .map(|(m, v, p)| {
                            format!("conflict with \"{m}\" using {v}: {}", render_path(p))
                        })
                        .collect();
                    format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
                };
                let mut error = ApiError::conflict("", "", "", "");
                error.message = message;
                error.details = None;
                error.causes = causes;
                return Err(error);
            }
            // Forcing takes the fields over.
            for entry in entries.iter_mut().filter(|e| !is_mine(e)) {
                entry.fields.retain(|p| !config_fields.contains(p));
            }
        }
    }
    merge(kind, &mut result, &tracked(config, writer.subresource), "");
    // Fields this manager applied before, applies no longer, and nobody else owns go away.
    let previously: FieldSet =
        entries.iter().filter(|e| is_mine(e)).flat_map(|e| e.fields.iter().cloned()).collect();
    let others: FieldSet =
        entries.iter().filter(|e| !is_mine(e)).flat_map(|e| e.fields.iter().cloned()).collect();
    let mut stale: Vec<&Path> = previously
        .iter()
        .filter(|p| !config_fields.contains(*p) && !others.iter().any(|o| o.starts_with(p)))
        .collect();
    stale.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for path in stale {
        remove(&mut result, path);
    }
    entries.retain(|e| !is_mine(e));
    entries.push(Entry {
        manager: writer.manager.to_owned(),
        operation: "Apply".into(),
        api_version: writer.api_version.to_owned(),
        time: now(),
        subresource: writer.subresource.map(str::to_owned),
        fields: config_fields,
    });
    if let Some(obj) = result.as_object_mut() {
        for key in ["apiVersion", "kind"] {
            if let Some(v) = config.get(key) {
                obj.insert(key.into(), v.clone());
            }
        }
        let meta = obj.entry("metadata").or_insert_with(|| json!({}));
        if let (Some(meta), Some(config_meta)) =
            (meta.as_object_mut(), config.get("metadata").and_then(Value::as_object))
        {
            for key in ["name", "namespace"] {
                if let Some(v) = config_meta.get(key)
                    && !meta.contains_key(key)
                {
                    meta.insert(key.into(), v.clone());
                }
            }
        }
    }
    write_entries(&mut result, entries);
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `Diff` must compute, the slow way: every path of either side's field set whose
    /// value differs.
    fn changed_by_field_sets(
        kind: &str,
        old: &Value,
        new: &Value,
        subresource: Option<&str>,
    ) -> (FieldSet, FieldSet) {
        let new_fields = field_set(kind, new, subresource);
        let old_fields = field_set(kind, old, subresource);
        let changed: FieldSet = new_fields
            .iter()
            .filter(|p| get(old, p) != get(new, p))
            .chain(old_fields.iter().filter(|p| !new_fields.contains(*p)))
            .cloned()
            .collect();
        let owned = changed.intersection(&new_fields).cloned().collect();
        (changed, owned)
    }

    #[test]
    fn a_repeated_update_keeps_ownership_and_another_writer_takes_fields_over() {
        let lease = |t: &str| {
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "n"}, "spec": {"holderIdentity": "n", "renewTime": t}})
        };
        let kubelet =
            Writer { manager: "kubelet", api_version: "coordination.k8s.io/v1", subresource: None };
        let mut first = lease("t1");
        record_update("Lease", None, &mut first, kubelet);
        let mut second = lease("t2");
        record_update("Lease", Some(&first), &mut second, kubelet);
        assert_eq!(
            second["metadata"]["managedFields"][0]["fieldsV1"],
            first["metadata"]["managedFields"][0]["fieldsV1"]
        );
        // Another manager changing the same field takes it over (the slow path).
        let mut third = lease("t3");
        record_update("Lease", Some(&second), &mut third, writer("other"));
        let entries = third["metadata"]["managedFields"].as_array().cloned().unwrap_or_default();
        assert_eq!(entries.len(), 2, "{entries:?}");
        assert!(entries[0]["fieldsV1"]["f:spec"].get("f:renewTime").is_none(), "{entries:?}");
        assert!(entries[1]["fieldsV1"]["f:spec"].get("f:renewTime").is_some(), "{entries:?}");
        // Removing a field one owns is not a restamp either.
        let mut fourth = third.clone();
        if let Some(spec) = fourth["spec"].as_object_mut() {
            spec.remove("renewTime");
        }
        record_update("Lease", Some(&third), &mut fourth, writer("other"));
        let entries = fourth["metadata"]["managedFields"].as_array().cloned().unwrap_or_default();
        assert!(
            entries.iter().all(|e| e["fieldsV1"]["f:spec"].get("f:renewTime").is_none()),
            "{entries:?}"
        );
    }

    #[test]
    fn a_status_write_records_its_fields_under_the_status_subresource() {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i"}]}});
        record_update("Pod", None, &mut pod, writer("creator"));
        let mut running = pod.clone();
        running["status"] = json!({"phase": "Running"});
        let kubelet = Writer { manager: "kubelet", api_version: "v1", subresource: Some("status") };
        record_update("Pod", Some(&pod), &mut running, kubelet);
        let entries = running["metadata"]["managedFields"].as_array().cloned().unwrap_or_default();
        assert_eq!(entries.len(), 2, "{entries:?}");
        assert_eq!(entries[1]["manager"], "kubelet");
        assert_eq!(entries[1]["subresource"], "status");
        assert_eq!(entries[1]["fieldsV1"], json!({"f:status": {"f:phase": {}}}));
        // The creator's entry is kept as it was.
        assert_eq!(entries[0], pod["metadata"]["managedFields"][0]);
    }

    #[test]
    fn structural_diff_finds_what_the_field_sets_find() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "d", "uid": "1", "resourceVersion": "5",
                         "labels": {"app": "web", "tier": "x"}, "finalizers": ["a", "b"],
                         "ownerReferences": [{"uid": "u1", "name": "rs", "kind": "ReplicaSet", "apiVersion": "apps/v1"}]},
            "spec": {"containers": [
                        {"name": "web", "image": "w:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                         "ports": [{"containerPort": 80, "protocol": "TCP"}], "args": ["x", "y"]},
                        {"name": "side", "image": "s:1"}],
                     "tolerations": [{"key": "k", "operator": "Exists"}]},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False"}]}});
        let mut variants: Vec<Value> = Vec::new();
        let mut push = |f: &dyn Fn(&mut Value)| {
            let mut v = pod.clone();
            f(&mut v);
            variants.push(v);
        };
        push(&|v| v["spec"]["nodeName"] = json!("n1"));
        push(&|v| v["metadata"]["labels"]["app"] = json!("api"));
        push(&|v| v["metadata"]["labels"] = json!({}));
        push(&|v| v["metadata"]["resourceVersion"] = json!("9"));
        push(&|v| v["metadata"]["finalizers"] = json!(["b", "c"]));
        push(&|v| v["spec"]["containers"][0]["image"] = json!("w:2"));
        push(&|v| v["spec"]["containers"][0]["env"][1]["value"] = json!("3"));
        push(&|v| v["spec"]["containers"][0]["args"] = json!(["z"]));
        push(&|v| v["spec"]["containers"][0]["ports"] = json!([]));
        push(&|v| {
            v["spec"]["containers"] =
                json!([{"name": "side", "image": "s:1"}, {"name": "new", "image": "n"}])
        });
        push(&|v| v["spec"]["tolerations"] = json!("scalar now"));
        push(&|v| {
            v["status"] = json!({"phase": "Running", "podIP": "10.0.0.1",
                "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "web", "ready": true, "restartCount": 0}]});
        });
        push(&|v| {
            if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("tolerations");
            }
        });
        for subresource in [None, Some("status")] {
            for new in &variants {
                for (old, new) in [(&pod, new), (new, &pod)] {
                    let mut diff =
                        Diff { kind: "Pod", changed: FieldSet::new(), owned: FieldSet::new() };
                    diff.objects(old, new, subresource);
                    let (changed, owned) = changed_by_field_sets("Pod", old, new, subresource);
                    assert_eq!(diff.changed, changed, "{subresource:?} {old} -> {new}");
                    assert_eq!(diff.owned, owned, "{subresource:?} {old} -> {new}");
                }
            }
        }
    }

    #[test]
    fn fields_of_a_create_are_rendered_as_the_field_set_renders_them() {
        let objects = [
            (
                "Pod",
                json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p", "namespace": "d", "uid": "1", "generateName": "p-",
                             "labels": {"app": "web"}, "annotations": {}, "finalizers": ["a", "b"],
                             "ownerReferences": [{"uid": "u1", "name": "rs", "kind": "ReplicaSet", "apiVersion": "apps/v1", "controller": true}]},
                "spec": {"containers": [
                            {"name": "web", "image": "w:1", "env": [{"name": "A", "value": "1"}, {"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}],
                             "ports": [{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 81}],
                             "args": ["x", "y"], "resources": {"requests": {"cpu": "10m"}, "limits": {}},
                             "volumeMounts": []},
                            {"name": "side", "image": "s:1", "command": []},
                            {"image": "no-name"}],
                         "volumes": [], "nodeSelector": {}, "tolerations": [{"key": "k", "operator": "Exists"}],
                         "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": []}},
                         "securityContext": {}, "terminationGracePeriodSeconds": 30, "hostname": null},
                "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False"}],
                           "podIPs": [{"ip": "10.0.0.1"}]}}),
            ),
            (
                "Service",
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                "spec": {"ports": [{"port": 80, "protocol": "TCP"}, {"port": 80, "protocol": "UDP"}],
                         "selector": {"app": "web"}, "clusterIPs": ["10.43.0.1"]}}),
            ),
            (
                "ConfigMap",
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}),
            ),
            ("Deployment", deployment(3, "web:1")),
        ];
        for (kind, object) in &objects {
            for subresource in [None, Some("status")] {
                assert_eq!(
                    Value::Object(owned_fields_v1(kind, object, subresource)),
                    render_fields(&field_set(kind, object, subresource)),
                    "{kind} {subresource:?}"
                );
            }
        }
    }

    fn writer(manager: &str) -> Writer<'_> {
        Writer { manager, api_version: "apps/v1", subresource: None }
    }

    fn deployment(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
               "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "web", "image": image}]}}}})
    }

    #[test]
    fn apply_creates_owns_and_round_trips_fields_v1() {
        let created =
            apply("Deployment", None, &deployment(2, "nginx:1"), writer("helm"), false).unwrap();
        let entries = read_entries(&created);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].operation, "Apply");
        let fields = &created["metadata"]["managedFields"][0]["fieldsV1"];
        assert_eq!(fields["f:spec"]["f:replicas"], json!({}));
        let item =
            &fields["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"];
        assert_eq!(item["."], json!({}), "keyed list items own themselves");
        assert_eq!(item["f:image"], json!({}));
        assert_eq!(
            read_entries(&created)[0].fields,
            entries[0].fields,
            "FieldsV1 parses back to the same set"
        );
    }

    #[test]
    fn apply_conflicts_with_another_owner_unless_forced() {
        let mut live =
            apply("Deployment", None, &deployment(2, "nginx:1"), writer("helm"), false).unwrap();
        // kubectl scale changes replicas through an update: it now owns the field.
        let before = live.clone();
        live["spec"]["replicas"] = json!(5);
        record_update(
            "Deployment",
            Some(&before),
            &mut live,
            Writer { manager: "kubectl", api_version: "autoscaling/v1", subresource: None },
        );
        let err =
            apply("Deployment", Some(&live), &deployment(2, "nginx:1"), writer("helm"), false)
                .unwrap_err();
        assert_eq!(err.code, 409);
        assert_eq!(err.causes[0].field, ".spec.replicas");
        assert!(err.message.contains("conflict with \"kubectl\""), "{}", err.message);
        // The same value is no conflict; forcing takes the field over.
        assert!(
            apply("Deployment", Some(&live), &deployment(5, "nginx:1"), writer("helm"), false)
                .is_ok()
        );
        let forced =
            apply("Deployment", Some(&live), &deployment(3, "nginx:2"), writer("helm"), true)
                .unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        let kubectl = read_entries(&forced).into_iter().find(|e| e.manager == "kubectl");
        assert!(kubectl.is_none(), "kubectl lost its only field");
    }

    #[test]
    fn apply_removes_fields_it_no_longer_applies() {
        let mut config = deployment(2, "nginx:1");
        config["metadata"]["labels"]["tier"] = json!("fe");
        let live = apply("Deployment", None, &config, writer("helm"), false).unwrap();
        let next =
            apply("Deployment", Some(&live), &deployment(2, "nginx:1"), writer("helm"), false)
                .unwrap();
        assert_eq!(
            next["metadata"]["labels"],
            json!({"app": "web"}),
            "the dropped label is removed"
        );
        // A field another manager also owns stays.
        let mut shared = live.clone();
        let before = shared.clone();
        shared["metadata"]["annotations"] = json!({"note": "x"});
        record_update("Deployment", Some(&before), &mut shared, writer("kubectl"));
        let next =
            apply("Deployment", Some(&shared), &deployment(2, "nginx:1"), writer("helm"), false)
                .unwrap();
        assert_eq!(next["metadata"]["annotations"], json!({"note": "x"}));
    }

    #[test]
    fn apply_merges_keyed_lists_with_other_managers_items() {
        let live =
            apply("Deployment", None, &deployment(1, "nginx:1"), writer("helm"), false).unwrap();
        let mut sidecar = live.clone();
        let before = sidecar.clone();
        sidecar["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "side", "image": "busybox"}));
        record_update("Deployment", Some(&before), &mut sidecar, writer("injector"));
        let next =
            apply("Deployment", Some(&sidecar), &deployment(1, "nginx:2"), writer("helm"), false)
                .unwrap();
        let containers = next["spec"]["template"]["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 2, "the other manager's container stays");
        assert_eq!(containers[0]["image"], "nginx:2");
    }
}
