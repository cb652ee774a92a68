//! SelfSubjectReview: who the server thinks the user asking is (`kubectl auth whoami`).

use serde_json::{Value, json};

use crate::status::ApiError;
use crate::strategy::{ReviewContext, Strategy};

/// The SelfSubjectReview strategy.
#[derive(Debug)]
pub struct SelfSubjectReviews;

impl Strategy for SelfSubjectReviews {
    fn review(&self, _review: &Value, context: &ReviewContext<'_>) -> Result<Value, ApiError> {
        Ok(json!({"userInfo": {"username": context.user.name, "groups": context.user.groups}}))
    }
}
