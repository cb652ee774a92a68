//! ClusterTrustBundle: CA certificates published cluster-wide.

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, or_none, s};

/// The ClusterTrustBundle strategy.
#[derive(Debug)]
pub struct ClusterTrustBundles;

impl Strategy for ClusterTrustBundles {
    fn columns(&self) -> Vec<Column> {
        vec![NAME, col("SignerName", "string", 0), AGE]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        vec![
            json!(s(obj, "/metadata/name")),
            json!(or_none(s(obj, "/spec/signerName").to_owned())),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}
