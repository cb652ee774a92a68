//! SelfSubjectRulesReview: everything the user asking may do in a namespace
//! (`kubectl auth can-i --list`).

use serde_json::{Value, json};

use crate::status::ApiError;
use crate::strategy::{ReviewContext, Strategy};

/// The SelfSubjectRulesReview strategy.
#[derive(Debug)]
pub struct SelfSubjectRulesReviews;

impl Strategy for SelfSubjectRulesReviews {
    fn review(&self, review: &Value, context: &ReviewContext<'_>) -> Result<Value, ApiError> {
        let namespace = review.pointer("/spec/namespace").and_then(Value::as_str).unwrap_or("");
        let rules = context.authorizer.rules(context.user, namespace);
        Ok(
            json!({"resourceRules": rules.resource_rules, "nonResourceRules": rules.non_resource_rules, "incomplete": rules.incomplete}),
        )
    }
}
