//! CertificateSigningRequest: a request for a certificate, approved through `approval`; signing comes with the security issue.

use serde_json::{Value, json};

use crate::strategy::{Strategy, Subresource};
use crate::table::{AGE, Column, NAME, age_of, col, human_duration, or_none, s};

/// The CertificateSigningRequests strategy.
#[derive(Debug)]
pub struct CertificateSigningRequests;

impl Strategy for CertificateSigningRequests {
    fn subresources(&self) -> &'static [Subresource] {
        &[Subresource { name: "approval", kind: None, verbs: &["get", "patch", "update"] }]
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["spec.signerName"]
    }

    /// Through `approval` only the conditions change; through `status` the certificate and
    /// the conditions other than Approved and Denied (which keep what approval set). Both
    /// take labels and annotations, as upstream's CSR strategies leave metadata alone; the
    /// spec never changes.
    fn prepare_subresource_update(&self, subresource: &str, new: &mut Value, old: &Value) -> bool {
        let approval_type = |c: &&Value| matches!(s(c, "/type"), "Approved" | "Denied");
        let conditions = match subresource {
            "approval" => new.pointer("/status/conditions").cloned(),
            "status" => {
                let kept = old.pointer("/status/conditions").and_then(Value::as_array);
                let sent = new.pointer("/status/conditions").and_then(Value::as_array);
                let merged: Vec<Value> = kept
                    .into_iter()
                    .flatten()
                    .filter(approval_type)
                    .chain(sent.into_iter().flatten().filter(|c| !approval_type(c)))
                    .cloned()
                    .collect();
                (!merged.is_empty()).then_some(Value::Array(merged))
            }
            _ => return false,
        };
        let certificate = new.pointer("/status/certificate").cloned();
        let labels = new.pointer("/metadata/labels").cloned();
        let annotations = new.pointer("/metadata/annotations").cloned();
        let mut next = old.clone();
        let set = |object: &mut Value, section: &str, key: &str, value: Option<Value>| match (
            object.get_mut(section).and_then(Value::as_object_mut),
            value,
        ) {
            (Some(map), Some(v)) => {
                map.insert(key.into(), v);
            }
            (Some(map), None) => {
                map.remove(key);
            }
            (None, Some(v)) => object[section] = json!({ key: v }),
            (None, None) => {}
        };
        set(&mut next, "status", "conditions", conditions);
        if subresource == "status" {
            set(&mut next, "status", "certificate", certificate);
        }
        set(&mut next, "metadata", "labels", labels);
        set(&mut next, "metadata", "annotations", annotations);
        *new = next;
        true
    }

    fn validate_update(&self, new: &Value, old: &Value, causes: &mut Vec<crate::status::Cause>) {
        crate::registry::immutable(new, old, "/spec", causes);
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            AGE,
            col("SignerName", "string", 0),
            col("Requestor", "string", 0),
            col("RequestedDuration", "string", 0),
            col("Condition", "string", 0),
        ]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let conditions = obj.pointer("/status/conditions").and_then(Value::as_array);
        let has = |t: &str| conditions.into_iter().flatten().any(|c| s(c, "/type") == t);
        let mut condition = if has("Denied") {
            "Denied".to_owned()
        } else if has("Approved") {
            "Approved".to_owned()
        } else {
            "Pending".to_owned()
        };
        if has("Failed") {
            condition.push_str(",Failed");
        }
        if !s(obj, "/status/certificate").is_empty() {
            condition.push_str(",Issued");
        }
        let duration = obj
            .pointer("/spec/expirationSeconds")
            .and_then(Value::as_i64)
            .map_or_else(|| "<none>".to_owned(), human_duration);
        vec![
            json!(s(obj, "/metadata/name")),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
            json!(or_none(s(obj, "/spec/signerName").to_owned())),
            json!(s(obj, "/spec/username")),
            json!(duration),
            json!(condition),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approval_changes_conditions_and_metadata_only() {
        let old = json!({"metadata": {"name": "c", "uid": "u"}, "spec": {"signerName": "a/b"},
                         "status": {"certificate": "Y2VydA=="}});
        let mut new = json!({"metadata": {"name": "c", "uid": "u", "annotations": {"x": "1"}},
                             "spec": {"signerName": "other/signer"},
                             "status": {"certificate": "", "conditions": [{"type": "Approved", "status": "True"}]}});
        assert!(CertificateSigningRequests.prepare_subresource_update("approval", &mut new, &old));
        assert_eq!(new["spec"]["signerName"], "a/b");
        assert_eq!(new["status"]["certificate"], "Y2VydA==");
        assert_eq!(new["status"]["conditions"][0]["type"], "Approved");
        assert_eq!(new["metadata"]["annotations"]["x"], "1");
        assert!(!CertificateSigningRequests.prepare_subresource_update("other", &mut new, &old));
        // Through status: the certificate and other conditions, approval kept as it was.
        let approved = new.clone();
        let mut sent = json!({"metadata": {"annotations": {"y": "2"}}, "spec": {},
                              "status": {"certificate": "bmV3", "conditions": [{"type": "StatusUpdate"}]}});
        assert!(
            CertificateSigningRequests.prepare_subresource_update("status", &mut sent, &approved)
        );
        assert_eq!(sent["status"]["certificate"], "bmV3");
        assert_eq!(sent["status"]["conditions"][0]["type"], "Approved");
        assert_eq!(sent["status"]["conditions"][1]["type"], "StatusUpdate");
        assert_eq!(sent["metadata"]["annotations"]["y"], "2");
        assert_eq!(sent["spec"]["signerName"], "a/b");
    }
}
