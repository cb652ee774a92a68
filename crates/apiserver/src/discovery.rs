//! Discovery documents (aggregated `apidiscovery.k8s.io/v2` and the legacy per-group lists) and
//! the OpenAPI v3 documents kubectl and helm read before `apply`, `create -f` and `install`.

use serde_json::{Value, json};

use crate::resources::{Registry, ResourceType};

/// The response content type of aggregated discovery.
pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

const VERBS: [&str; 8] =
    ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

fn verbs(rt: &ResourceType) -> &'static [&'static str] {
    if rt.create_only {
        &["create"]
    } else if rt.strategy.is_computed() {
        &["get", "list"]
    } else {
        &VERBS
    }
}

fn subresources(rt: &ResourceType) -> Vec<(&'static str, Value, Vec<&'static str>)> {
    let own = json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
    let mut out = Vec::new();
    if rt.has_status {
        out.push(("status", own.clone(), vec!["get", "patch", "update"]));
    }
    for sub in rt.strategy.subresources() {
        let kind = match sub.kind {
            Some((group, version, kind)) => {
                json!({"group": group, "version": version, "kind": kind})
            }
            None => own.clone(),
        };
        out.push((sub.name, kind, sub.verbs.to_vec()));
    }
    if rt.has_scale {
        out.push((
            "scale",
            json!({"group": "autoscaling", "version": "v1", "kind": "Scale"}),
            vec!["get", "patch", "update"],
        ));
    }
    out
}

fn aggregated_resource(rt: &ResourceType) -> Value {
    let mut resource = json!({
        "resource": rt.plural,
        "singularResource": rt.singular,
        "scope": if rt.namespaced { "Namespaced" } else { "Cluster" },
        "responseKind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
        "verbs": verbs(rt),
    });
    if !rt.short_names.is_empty() {
        resource["shortNames"] = json!(rt.short_names);
    }
    if !rt.categories.is_empty() {
        resource["categories"] = json!(rt.categories);
    }
    let subs: Vec<Value> = subresources(rt)
        .into_iter()
        .map(|(name, kind, verbs)| json!({"subresource": name, "responseKind": kind, "verbs": verbs}))
        .collect();
    if !subs.is_empty() {
        resource["subresources"] = Value::Array(subs);
    }
    resource
}

/// `GET /api` or `/apis` in aggregated form: the core group alone, or every other group.
pub fn aggregated(registry: &Registry, core: bool) -> Value {
    let types = registry.all();
    let items: Vec<Value> = registry
        .groups()
        .into_iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = types
                        .iter()
                        .filter(|t| t.group == group && &t.version == v)
                        .map(|t| aggregated_resource(t))
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// `GET /api` in legacy form.
pub fn api_versions(server_address: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]})
}

fn group_entry(group: &str, versions: &[String]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": versions, "preferredVersion": versions.first().cloned().unwrap_or(Value::Null)})
}

/// `GET /apis` in legacy form.
pub fn api_group_list(registry: &Registry) -> Value {
    let groups: Vec<Value> = registry
        .groups()
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, v)| group_entry(&g, &v))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/<group>`.
pub fn api_group(registry: &Registry, group: &str) -> Option<Value> {
    let (g, versions) = registry.groups().into_iter().find(|(g, _)| g == group)?;
    let mut entry = group_entry(&g, &versions);
    entry["kind"] = json!("APIGroup");
    entry["apiVersion"] = json!("v1");
    Some(entry)
}

/// `GET /api/v1` or `/apis/<group>/<version>`.
pub fn api_resource_list(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let types = registry.all();
    let in_gv: Vec<&ResourceType> = types
        .iter()
        .filter(|t| t.group == group && t.version == version)
        .map(|t| t.as_ref())
        .collect();
    if in_gv.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for rt in in_gv {
        let mut r = json!({
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": verbs(rt),
        });
        if !rt.short_names.is_empty() {
            r["shortNames"] = json!(rt.short_names);
        }
        if !rt.categories.is_empty() {
            r["categories"] = json!(rt.categories);
        }
        resources.push(r);
        for (name, kind, verbs) in subresources(rt) {
            resources.push(json!({
                "name": format!("{}/{name}", rt.plural),
                "singularName": "",
                "namespaced": rt.namespaced,
                "group": kind["group"],
                "version": kind["version"],
                "kind": kind["kind"],
                "verbs": verbs,
            }));
        }
    }
    let group_version =
        if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    )
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

/// `GET /openapi/v3`: one entry per served group-version.
pub fn openapi_root(registry: &Registry, hash: &str) -> Value {
    let mut paths = serde_json::Map::new();
    for (group, versions) in registry.groups() {
        for v in versions {
            let path = gv_path(&group, &v);
            paths.insert(
                path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
            );
        }
    }
    json!({"paths": paths})
}

fn schema_name(rt: &ResourceType) -> String {
    let group = if rt.group.is_empty() {
        "io.k8s.api.core".to_owned()
    } else {
        let mut parts: Vec<&str> = rt.group.split('.').collect();
        parts.reverse();
        parts.join(".")
    };
    format!("{group}.{}.{}", rt.version, rt.kind)
}

/// `GET /openapi/v3/<api|apis/group>/<version>`: for every type, its object and collection paths
/// with a PATCH operation carrying `x-kubernetes-group-version-kind` and the `fieldValidation`
/// parameter (what kubectl and helm check), plus a schema per kind.
pub fn openapi_group_version(registry: &Registry, path: &str) -> Option<Value> {
    let (group, version) = match path.split('/').collect::<Vec<_>>().as_slice() {
        ["api", v] => (String::new(), (*v).to_owned()),
        ["apis", g, v] => ((*g).to_owned(), (*v).to_owned()),
        _ => return None,
    };
    let types = registry.all();
    let in_gv: Vec<&ResourceType> = types
        .iter()
        .filter(|t| t.group == group && t.version == version)
        .map(|t| t.as_ref())
        .collect();
    if in_gv.is_empty() {
        return None;
    }
    let query_params = json!([
        {"name": "dryRun", "in": "query", "schema": {"type": "string"}, "uniqueItems": true},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string"}, "uniqueItems": true},
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}, "uniqueItems": true},
        {"name": "force", "in": "query", "schema": {"type": "boolean"}, "uniqueItems": true}
    ]);
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    // Built-in types get their full schemas (with descriptions, for `kubectl explain`) from
    // k8s-openapi; custom types a permissive one.
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let mut names = Vec::new();
    for rt in &in_gv {
        let name = match rt.schema {
            Some(schema_fn) => {
                let reference = schema_fn(&mut generator);
                reference
                    .get("$ref")
                    .and_then(Value::as_str)
                    .and_then(|r| r.rsplit('/').next())
                    .map_or_else(|| schema_name(rt), str::to_owned)
            }
            None => schema_name(rt),
        };
        names.push(name);
    }
    for (name, schema) in generator.take_definitions(true) {
        schemas.insert(name, schema);
    }
    for (rt, name) in in_gv.iter().zip(names) {
        let gvk = json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
        let schema_ref = json!({"$ref": format!("#/components/schemas/{name}")});
        let object_content = json!({"application/json": {"schema": schema_ref}});
        // Strategic merge patch is left out on purpose: the schemas carry no patch merge keys,
        // so kubectl computes it from its compiled-in types instead.
        let patch_content = json!({
            "application/json-patch+json": {"schema": {"type": "object"}},
            "application/merge-patch+json": {"schema": {"type": "object"}},
            "application/apply-patch+yaml": {"schema": {"type": "object"}}
        });
        let prefix = format!("/{}", gv_path(&rt.group, &rt.version));
        let base = if rt.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}", rt.plural)
        } else {
            format!("{prefix}/{}", rt.plural)
        };
        let op = |verb: &str| {
            json!({
                "operationId": format!("{verb}{}", rt.kind),
                "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": query_params,
                "responses": {"200": {"description": "OK", "content": object_content}}
            })
        };
        let mut patch_op = op("patch");
        patch_op["requestBody"] = json!({"content": patch_content, "required": true});
        let mut put_op = op("put");
        put_op["requestBody"] = json!({"content": object_content, "required": true});
        let mut post_op = op("post");
        post_op["requestBody"] = json!({"content": object_content, "required": true});
        if rt.create_only {
            // Reviews and bindings: a POST and nothing else (kubectl validates their bodies
            // against this schema too).
            paths.insert(base, json!({"post": post_op}));
        } else {
            paths.insert(
                format!("{base}/{{name}}"),
                json!({"get": op("get"), "put": put_op, "patch": patch_op, "delete": op("delete")}),
            );
            paths.insert(base, json!({"get": op("list"), "post": post_op}));
        }
        if let Some(schema) = schemas.get_mut(&name).and_then(Value::as_object_mut) {
            schema.insert("x-kubernetes-group-version-kind".into(), json!([gvk]));
            continue;
        }
        schemas.insert(
            name,
            json!({
                "type": "object",
                "description": format!("{} is a {} resource served by krust.", rt.kind, if rt.group.is_empty() { "core" } else { &rt.group }),
                "x-kubernetes-group-version-kind": [gvk],
                "properties": {
                    "apiVersion": {"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."},
                    "kind": {"type": "string", "description": "Kind is a string value representing the REST resource this object represents."},
                    "metadata": {"type": "object", "description": "Standard object's metadata."},
                    "spec": {"type": "object", "description": "Desired state."},
                    "status": {"type": "object", "description": "Observed state."}
                },
                "x-kubernetes-preserve-unknown-fields": true
            }),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": crate::KUBERNETES_VERSION},
        "paths": paths,
        "components": {"schemas": schemas}
    }))
}

/// The served types OpenAPI v2 lists: every stored type with its object path.
fn openapi_v2_paths(registry: &Registry) -> Vec<(String, Value)> {
    registry
        .all()
        .iter()
        .filter(|rt| !rt.create_only)
        .map(|rt| {
            let prefix = format!("/{}", gv_path(&rt.group, &rt.version));
            let path = if rt.namespaced {
                format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", rt.plural)
            } else {
                format!("{prefix}/{}/{{name}}", rt.plural)
            };
            (path, json!({"group": rt.group, "version": rt.version, "kind": rt.kind}))
        })
        .collect()
}

/// The OpenAPI v2 document as JSON: its info, and for every type the PATCH of its object path
/// with the `dryRun` parameter and the type's group/version/kind (what kubectl before 1.27
/// reads to decide whether a type supports server-side dry run); no definitions.
pub fn openapi_v2_json(registry: &Registry) -> Value {
    let mut paths = serde_json::Map::new();
    for (path, gvk) in openapi_v2_paths(registry) {
        paths.insert(path, json!({"patch": {
            "parameters": [{"name": "dryRun", "in": "query", "type": "string", "uniqueItems": true}],
            "x-kubernetes-group-version-kind": gvk,
        }}));
    }
    json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": crate::KUBERNETES_VERSION}, "paths": paths, "definitions": {}})
}

/// The same document in the protobuf form (gnostic's `openapi_v2.Document`) kubectl asks for.
pub fn openapi_v2_protobuf(registry: &Registry) -> Vec<u8> {
    fn varint(mut v: usize, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn field(tag: u8, bytes: &[u8], out: &mut Vec<u8>) {
        out.push(tag << 3 | 2);
        varint(bytes.len(), out);
        out.extend_from_slice(bytes);
    }
    let message = |fields: &[(u8, &[u8])]| {
        let mut out = Vec::new();
        for (tag, bytes) in fields {
            field(*tag, bytes, &mut out);
        }
        out
    };
    // QueryParameterSubSchema{in: 2, name: 4, type: 6} in NonBodyParameter (3), in
    // Parameter (2), in ParametersItem (1).
    let dry_run = message(&[(2, b"query"), (4, b"dryRun"), (6, b"string")]);
    let parameter = message(&[(1, &message(&[(2, &message(&[(3, &dry_run)]))]))]);
    let mut paths = Vec::new();
    for (path, gvk) in openapi_v2_paths(registry) {
        let yaml = format!(
            "group: {:?}\nkind: {:?}\nversion: {:?}\n",
            gvk["group"].as_str().unwrap_or(""),
            gvk["kind"].as_str().unwrap_or(""),
            gvk["version"].as_str().unwrap_or("")
        );
        // NamedAny{name: 1, value: Any{yaml: 2}} as the operation's vendor extension (13).
        let extension = message(&[
            (1, b"x-kubernetes-group-version-kind"),
            (2, &message(&[(2, yaml.as_bytes())])),
        ]);
        let operation = message(&[(8, &parameter), (13, &extension)]);
        // PathItem{patch: 8} in NamedPathItem{name: 1, value: 2}, in Paths.path (2).
        let item = message(&[(1, path.as_bytes()), (2, &message(&[(8, &operation)]))]);
        field(2, &item, &mut paths);
    }
    let info = message(&[(1, b"Kubernetes"), (2, crate::KUBERNETES_VERSION.as_bytes())]);
    message(&[(1, b"2.0"), (2, &info), (8, &paths)])
}

#[cfg(test)]
mod openapi_v2_tests {
    use super::*;

    /// (tag, bytes) of each length-delimited field of a protobuf message.
    fn fields(mut bytes: &[u8]) -> Vec<(u8, &[u8])> {
        let mut out = Vec::new();
        while let Some((&key, rest)) = bytes.split_first() {
            let (mut len, mut shift, mut i) = (0usize, 0, 0);
            loop {
                let b = rest[i];
                len |= usize::from(b & 0x7f) << shift;
                shift += 7;
                i += 1;
                if b & 0x80 == 0 {
                    break;
                }
            }
            out.push((key >> 3, &rest[i..i + len]));
            bytes = &rest[i + len..];
        }
        out
    }

    #[test]
    fn every_type_says_it_supports_dry_run_as_kubectl_reads_it() {
        let registry = Registry::new();
        let doc = openapi_v2_protobuf(&registry);
        let top = fields(&doc);
        assert_eq!(top[0], (1, &b"2.0"[..]));
        let paths = fields(top.iter().find(|(t, _)| *t == 8).unwrap().1);
        let config_map = paths
            .iter()
            .map(|(_, item)| fields(item))
            .find(|item| item[0].1 == b"/api/v1/namespaces/{namespace}/configmaps/{name}")
            .unwrap();
        let patch = fields(fields(config_map[1].1)[0].1);
        // Operation.parameters (8): ParametersItem → Parameter → NonBodyParameter → query.
        let query = fields(fields(fields(patch[0].1)[0].1)[0].1);
        let query = fields(query[0].1);
        assert!(query.contains(&(4, &b"dryRun"[..])), "{query:?}");
        // Operation.vendor_extension (13): the group/version/kind as YAML.
        let extension = fields(patch[1].1);
        assert_eq!(extension[0].1, b"x-kubernetes-group-version-kind");
        let yaml = fields(extension[1].1)[0].1;
        assert_eq!(yaml, b"group: \"\"\nkind: \"ConfigMap\"\nversion: \"v1\"\n");
        assert_eq!(openapi_v2_json(&registry)["paths"].as_object().unwrap().len(), paths.len());
    }
}
