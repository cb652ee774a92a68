//! TokenReview: whether a bearer token authenticates, and as whom. The handler answers it
//! with the server's ServiceAccount token authenticator; this strategy answers for a
//! server without one (every token not authenticated, with the reason).

use serde_json::{Value, json};

use crate::status::{ApiError, Cause};
use crate::strategy::{ReviewContext, Strategy};

/// The TokenReview strategy.
#[derive(Debug)]
pub struct TokenReviews;

impl Strategy for TokenReviews {
    fn review(&self, review: &Value, _context: &ReviewContext<'_>) -> Result<Value, ApiError> {
        let token = review.pointer("/spec/token").and_then(Value::as_str).unwrap_or("");
        if token.is_empty() {
            return Err(ApiError::invalid(
                "TokenReview",
                "authentication.k8s.io",
                "",
                vec![Cause::new("FieldValueRequired", "spec.token", "Required value")],
            ));
        }
        let audiences = review.pointer("/spec/audiences").cloned().unwrap_or_else(|| json!([]));
        Ok(json!({"authenticated": false, "audiences": audiences,
                  "error": "no token authenticator accepts this token", "user": {}}))
    }
}
