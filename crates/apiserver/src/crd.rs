//! CustomResourceDefinitions: the custom types they define are served (discovery, OpenAPI,
//! CRUD, watch) as soon as the definition is stored.
//!
//! The served set is derived from the stored CRDs: after every CRD write on this server, and
//! from a watch on the CRD keys so that other API servers sharing the store follow too.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use storage::{Op, RangeRequest, Txn};

use crate::resources::ResourceType;
use crate::rest::{ListOptions, Rest};
use crate::status::ApiResult;

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The types one CRD defines: one per served version.
pub(crate) fn types_of(crd: &Value) -> Vec<ResourceType> {
    let spec = crd.get("spec").cloned().unwrap_or_default();
    let text = |p: &str| spec.pointer(p).and_then(Value::as_str).unwrap_or("").to_owned();
    let (group, kind, plural) = (text("/group"), text("/names/kind"), text("/names/plural"));
    if group.is_empty()
        || kind.is_empty()
        || plural.is_empty()
        || crd.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null())
    {
        return Vec::new();
    }
    let list_kind = match text("/names/listKind") {
        l if l.is_empty() => format!("{kind}List"),
        l => l,
    };
    let singular = match text("/names/singular") {
        s if s.is_empty() => kind.to_lowercase(),
        s => s,
    };
    let namespaced = text("/scope") != "Cluster";
    let versions = spec.get("versions").and_then(Value::as_array).cloned().unwrap_or_default();
    // The storage version first: discovery lists the preferred version first.
    let mut served: Vec<&Value> = versions
        .iter()
        .filter(|v| v.get("served").and_then(Value::as_bool) == Some(true))
        .collect();
    served.sort_by_key(|v| v.get("storage").and_then(Value::as_bool) != Some(true));
    served
        .into_iter()
        .map(|v| {
            ResourceType::custom(
                &group,
                v.get("name").and_then(Value::as_str).unwrap_or(""),
                &kind,
                &list_kind,
                &plural,
                &singular,
                namespaced,
                strings(spec.pointer("/names/shortNames")),
                strings(spec.pointer("/names/categories")),
                v.pointer("/subresources/status").is_some(),
                v.pointer("/subresources/scale").and_then(scale_paths),
            )
        })
        .filter(|t| !t.version.is_empty())
        .collect()
}

/// The status a definition gets once it is served: names accepted, established.
pub(crate) fn established_status(crd: &Value) -> Value {
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let storage = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .and_then(|vs| vs.iter().find(|v| v.get("storage").and_then(Value::as_bool) == Some(true)))
        .and_then(|v| v.get("name"))
        .cloned()
        .unwrap_or(Value::Null);
    let condition = |kind: &str, reason: &str, message: &str| json!({"type": kind, "status": "True", "lastTransitionTime": now, "reason": reason, "message": message});
    json!({
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "acceptedNames": crd.pointer("/spec/names").cloned().unwrap_or_else(|| json!({})),
        "storedVersions": [storage],
    })
}

/// Rebuilds the custom types from the stored CRDs.
pub async fn sync(rest: &Rest) -> ApiResult<()> {
    let Some(crds) =
        rest.registry.lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions")
    else {
        return Ok(());
    };
    let page = rest.list(&crds, None, &ListOptions::default()).await?;
    let mut custom: Vec<ResourceType> = Vec::new();
    for item in &page.items {
        match serde_json::from_slice::<Value>(item) {
            Ok(crd) => custom.extend(types_of(&crd)),
            // One unreadable definition must not keep the server from starting or serving
            // the others; it can still be read (500, naming it) and deleted.
            Err(e) => tracing::warn!(
                name = crate::rest::identity_of(item).map(|(n, _)| n).unwrap_or_default(),
                error = %e,
                "a stored CustomResourceDefinition cannot be decoded; its types are not served"
            ),
        }
    }
    rest.registry.set_custom(custom);
    Ok(())
}

/// Deletes every stored object of a CRD's types (upstream's custom resource cleanup).
pub async fn delete_instances(rest: &Rest, crd: &Value) -> ApiResult<()> {
    let group = crd.pointer("/spec/group").and_then(Value::as_str).unwrap_or("");
    let plural = crd.pointer("/spec/names/plural").and_then(Value::as_str).unwrap_or("");
    if group.is_empty() || plural.is_empty() {
        return Ok(());
    }
    let prefix = format!("/registry/{group}/{plural}/");
    let keys = rest.store.range(RangeRequest::prefix(&prefix)).await?;
    for kv in keys.kvs {
        rest.store.txn(Txn { success: vec![Op::Delete { key: kv.key }], ..Txn::default() }).await?;
    }
    Ok(())
}

/// Follows CRD changes made through other API servers sharing the store.
pub async fn follow(rest: std::sync::Arc<Rest>) {
    let prefix = "/registry/apiextensions.k8s.io/customresourcedefinitions/";
    loop {
        if let Err(e) = sync(&rest).await {
            tracing::warn!(error = %e, "syncing custom resource types failed");
        }
        let start = match rest.store.current_revision().await {
            Ok(r) => r + 1,
            Err(e) => {
                tracing::warn!(error = %e, "reading the store revision failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut stream = match rest.store.watch(prefix, start).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "watching CRDs failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(message) = stream.next().await {
            match message {
                Ok(storage::WatchMessage::Events(_)) => {
                    if let Err(e) = sync(&rest).await {
                        tracing::warn!(error = %e, "syncing custom resource types failed");
                    }
                }
                Ok(storage::WatchMessage::Progress(_)) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "CRD watch ended; resyncing");
                    break;
                }
            }
        }
    }
}

/// A JSON path of a CRD's scale subresource (`.spec.replicas`) as a JSON pointer; only
/// simple dotted paths are allowed, as upstream's validation requires.
fn json_pointer(path: &str) -> Option<String> {
    let rest = path.strip_prefix('.')?;
    let parts: Vec<&str> = rest.split('.').collect();
    if parts.iter().any(|p| p.is_empty() || p.contains(['[', ']', '*', '/'])) {
        return None;
    }
    Some(format!("/{}", parts.join("/")))
}

fn scale_paths(scale: &Value) -> Option<crate::resources::ScalePaths> {
    let path = |key: &str| scale.get(key).and_then(Value::as_str).and_then(json_pointer);
    Some(crate::resources::ScalePaths {
        spec_replicas: path("specReplicasPath")?,
        status_replicas: path("statusReplicasPath")?,
        label_selector: path("labelSelectorPath"),
    })
}
