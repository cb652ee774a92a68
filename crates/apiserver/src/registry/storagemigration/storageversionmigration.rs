//! StorageVersionMigration: a request to rewrite every object of a resource in its storage
//! version (stored and served; krust stores each kind in one version already).

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{Column, NAME, col, s};

/// The StorageVersionMigration strategy.
#[derive(Debug)]
pub struct StorageVersionMigrations;

impl Strategy for StorageVersionMigrations {
    fn columns(&self) -> Vec<Column> {
        vec![NAME, col("Resource", "string", 0)]
    }

    fn cells(&self, obj: &Value, _now: i64) -> Vec<Value> {
        let resource =
            format!("{}.{}", s(obj, "/spec/resource/resource"), s(obj, "/spec/resource/group"));
        vec![json!(s(obj, "/metadata/name")), json!(resource.trim_end_matches('.'))]
    }
}
