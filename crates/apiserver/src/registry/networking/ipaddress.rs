//! IPAddress: one allocated Service address (stored and served; the allocator that writes
//! them comes with the services issue).

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, s};

/// The IPAddress strategy.
#[derive(Debug)]
pub struct IPAddresses;

impl Strategy for IPAddresses {
    fn columns(&self) -> Vec<Column> {
        vec![NAME, col("ParentRef", "string", 0), AGE]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let parent = match obj.pointer("/spec/parentRef") {
            Some(p) if !p.is_null() => {
                let group = s(p, "/group");
                let resource = if group.is_empty() {
                    s(p, "/resource").to_owned()
                } else {
                    format!("{}.{group}", s(p, "/resource"))
                };
                match s(p, "/namespace") {
                    "" => format!("{resource}/{}", s(p, "/name")),
                    ns => format!("{resource}/{ns}/{}", s(p, "/name")),
                }
            }
            _ => "<none>".to_owned(),
        };
        vec![
            json!(s(obj, "/metadata/name")),
            json!(parent),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}
