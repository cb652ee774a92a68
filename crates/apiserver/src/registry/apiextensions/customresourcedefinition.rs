//! CustomResourceDefinition: its names are accepted and its types served as soon as it is stored.

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{Column, NAME, col, s};

/// The CustomResourceDefinitions strategy.
#[derive(Debug)]
pub struct CustomResourceDefinitions;

impl Strategy for CustomResourceDefinitions {
    fn prepare_create(&self, object: &mut Value) {
        let status = crate::crd::established_status(object);
        if let Some(obj) = object.as_object_mut() {
            obj.insert("status".into(), status);
        }
    }

    fn defines_types(&self) -> bool {
        true
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, col("Created At", "date", 0)]
    }

    fn cells(&self, obj: &Value, _now: i64) -> Vec<Value> {
        vec![json!(s(obj, "/metadata/name")), json!(s(obj, "/metadata/creationTimestamp"))]
    }
}
