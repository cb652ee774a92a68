//! VolumeAttributesClass: mutable attributes a CSI driver applies to volumes.

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, s};

/// The VolumeAttributesClass strategy.
#[derive(Debug)]
pub struct VolumeAttributesClasses;

impl Strategy for VolumeAttributesClasses {
    fn validate_update(&self, new: &Value, old: &Value, causes: &mut Vec<crate::status::Cause>) {
        crate::registry::immutable(new, old, "/driverName", causes);
        crate::registry::immutable(new, old, "/parameters", causes);
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, col("DriverName", "string", 0), AGE]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        vec![
            json!(s(obj, "/metadata/name")),
            json!(s(obj, "/driverName")),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}
