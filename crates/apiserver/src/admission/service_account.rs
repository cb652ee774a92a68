//! ServiceAccount: every new pod runs as a ServiceAccount (`default` unless it names one),
//! which must exist (`default` may still be on its way), and unless it or its ServiceAccount opts out
//! (`automountServiceAccountToken: false`) gets upstream's projected `kube-api-access-*`
//! volume, mounted in every container at `/var/run/secrets/kubernetes.io/serviceaccount`: a
//! token bound to the pod (which the node agent requests and refreshes), the cluster CA from
//! the `kube-root-ca.crt` ConfigMap, and the namespace.

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::{Attributes, Hold, Mutating, Objects, Operation};
use crate::status::{ApiError, ApiResult};

/// Where the volume is mounted.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The token's lifetime the agent asks for (upstream's 3607 s: an hour and a bit, so that
/// the agent's refresh at 80 % always comes before clients' one-hour caches expire).
const TOKEN_EXPIRATION_SECONDS: i64 = 3607;
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// The ServiceAccount plugin.
pub struct ServiceAccount;

/// A random suffix of five lowercase letters and digits, as upstream's generated names.
fn suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// Adds the volume and its mounts to `spec` (a pod spec).
fn add_api_access(spec: &mut serde_json::Map<String, Value>) {
    let name = format!("kube-api-access-{}", suffix());
    let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
    if volumes.is_null() {
        *volumes = json!([]);
    }
    if let Some(list) = volumes.as_array_mut() {
        list.push(json!({
            "name": name,
            "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION_SECONDS, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace",
                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ]},
        }));
    }
    for field in ["initContainers", "containers"] {
        for container in spec.get_mut(field).and_then(Value::as_array_mut).into_iter().flatten() {
            let Some(container) = container.as_object_mut() else { continue };
            let mounts = container.entry("volumeMounts").or_insert_with(|| json!([]));
            if mounts.is_null() {
                *mounts = json!([]);
            }
            let Some(mounts) = mounts.as_array_mut() else { continue };
            // A container that mounts something there itself keeps it.
            if mounts.iter().any(|m| m.get("mountPath").and_then(Value::as_str) == Some(MOUNT_PATH))
            {
                continue;
            }
            mounts.push(json!({"name": name, "readOnly": true, "mountPath": MOUNT_PATH}));
        }
    }
}

impl Mutating for ServiceAccount {
    fn name(&self) -> &'static str {
        "ServiceAccount"
    }

    fn applies(&self, attributes: &Attributes<'_>) -> bool {
        attributes.operation == Operation::Create
            && attributes.is("", "Pod")
            && attributes.subresource.is_none()
    }

    fn admit<'a>(
        &'a self,
        objects: &'a dyn Objects,
        attributes: &'a Attributes<'a>,
        object: Option<&'a mut Value>,
    ) -> BoxFuture<'a, ApiResult<Hold>> {
        Box::pin(async move {
            let Some(object) = object else { return Ok(None) };
            if !self.applies(attributes)
                || object
                    .pointer(&format!(
                        "/metadata/annotations/{}",
                        MIRROR_ANNOTATION.replace('/', "~1")
                    ))
                    .is_some()
            {
                return Ok(None);
            }
            let namespace = attributes.namespace.unwrap_or("");
            let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
                return Ok(None);
            };
            let account = match spec.get("serviceAccountName").and_then(Value::as_str) {
                Some(name) if !name.is_empty() => name.to_owned(),
                _ => match spec.get("serviceAccount").and_then(Value::as_str) {
                    Some(name) if !name.is_empty() => name.to_owned(),
                    _ => "default".to_owned(),
                },
            };
            spec.insert("serviceAccountName".into(), json!(account));
            spec.insert("serviceAccount".into(), json!(account));
            let rt = objects
                .registry()
                .lookup("", "v1", "serviceaccounts")
                .ok_or_else(|| ApiError::internal("serviceaccounts are not served"))?;
            let found = match objects.get(&rt, Some(namespace), &account).await {
                Ok(found) => found,
                // The `default` one is made by a controller moments after its namespace: a
                // pod created in that moment (a fresh cluster, a manifest with its namespace)
                // is admitted, and its token is issued once the ServiceAccount exists.
                Err(e) if e.code == 404 && account == "default" => json!({}),
                Err(e) if e.code == 404 => {
                    let pod = attributes.name;
                    return Err(ApiError::forbidden(format!(
                        "pods \"{pod}\" is forbidden: error looking up service account {namespace}/{account}: serviceaccount \"{account}\" not found"
                    )));
                }
                Err(e) => return Err(e),
            };
            let automount = spec
                .get("automountServiceAccountToken")
                .and_then(Value::as_bool)
                .or_else(|| found.get("automountServiceAccountToken").and_then(Value::as_bool))
                .unwrap_or(true);
            if automount {
                add_api_access(spec);
            }
            Ok(None)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_container_mounts_the_volume_unless_it_mounts_something_there() {
        let mut spec = json!({"containers": [
            {"name": "a"},
            {"name": "b", "volumeMounts": [{"name": "own", "mountPath": MOUNT_PATH}]},
        ], "initContainers": [{"name": "i", "volumeMounts": null}]});
        add_api_access(spec.as_object_mut().unwrap());
        let volume = &spec["volumes"][0];
        let name = volume["name"].as_str().unwrap();
        assert!(name.starts_with("kube-api-access-") && name.len() == 21, "{name}");
        assert_eq!(
            volume["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
            3607
        );
        assert_eq!(volume["projected"]["sources"][1]["configMap"]["name"], "kube-root-ca.crt");
        assert_eq!(spec["containers"][0]["volumeMounts"][0]["name"], name);
        assert_eq!(spec["containers"][1]["volumeMounts"].as_array().unwrap().len(), 1);
        assert_eq!(spec["initContainers"][0]["volumeMounts"][0]["mountPath"], MOUNT_PATH);
    }
}
