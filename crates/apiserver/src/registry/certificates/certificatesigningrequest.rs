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
