//! API errors and their one mapping to Kubernetes `Status` objects.

use serde_json::{Value, json};

/// One cause of an `Invalid` (or strict decoding) error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// Machine-readable reason, e.g. `FieldValueRequired`.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
    /// The field path, e.g. `metadata.name`.
    pub field: String,
}

impl Cause {
    /// A cause for `field`.
    pub fn new(reason: &str, field: &str, message: impl Into<String>) -> Cause {
        Cause { reason: reason.to_owned(), message: message.into(), field: field.to_owned() }
    }
}

/// An API error: everything a handler can fail with, rendered as a `Status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `Status.reason`.
    pub reason: &'static str,
    /// `Status.message`.
    pub message: String,
    /// `Status.details` name/group/kind (kind is the resource plural, as upstream).
    pub details: Option<Box<(String, String, String)>>,
    /// `Status.details.causes`.
    pub causes: Vec<Cause>,
    /// `Retry-After` seconds, for 429 and 5xx.
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            causes: Vec::new(),
            retry_after: None,
        }
    }

    /// Attaches `details.{name,group,kind}`.
    pub fn with_details(mut self, group: &str, plural: &str, name: &str) -> ApiError {
        self.details = Some(Box::new((name.to_owned(), group.to_owned(), plural.to_owned())));
        self
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }
    /// 401 Unauthorized.
    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }
    /// 403 Forbidden.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(403, "Forbidden", message)
    }
    /// 404 NotFound for an object.
    pub fn not_found(group: &str, plural: &str, name: &str) -> ApiError {
        let what = if group.is_empty() { plural.to_owned() } else { format!("{plural}.{group}") };
        ApiError::new(404, "NotFound", format!("{what} \"{name}\" not found"))
            .with_details(group, plural, name)
    }
    /// 404 NotFound for a path that names no resource.
    pub fn no_route() -> ApiError {
        ApiError::new(404, "NotFound", "the server could not find the requested resource")
    }
    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(405, "MethodNotAllowed", message)
    }
    /// 406 NotAcceptable.
    pub fn not_acceptable(message: impl Into<String>) -> ApiError {
        ApiError::new(406, "NotAcceptable", message)
    }
    /// 409 AlreadyExists.
    pub fn already_exists(group: &str, plural: &str, name: &str) -> ApiError {
        let what = if group.is_empty() { plural.to_owned() } else { format!("{plural}.{group}") };
        ApiError::new(409, "AlreadyExists", format!("{what} \"{name}\" already exists"))
            .with_details(group, plural, name)
    }
    /// 409 Conflict on a stale resourceVersion or failed precondition.
    pub fn conflict(group: &str, plural: &str, name: &str, why: &str) -> ApiError {
        let what = if group.is_empty() { plural.to_owned() } else { format!("{plural}.{group}") };
        ApiError::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {what} \"{name}\": {why}"),
        )
        .with_details(group, plural, name)
    }
    /// 410 Expired (too old resourceVersion, expired continue token).
    pub fn expired(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }
    /// 413 RequestEntityTooLarge.
    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(413, "RequestEntityTooLarge", message)
    }
    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(message: impl Into<String>) -> ApiError {
        ApiError::new(415, "UnsupportedMediaType", message)
    }
    /// 422 Invalid with causes.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<Cause>) -> ApiError {
        let what = if group.is_empty() { kind.to_owned() } else { format!("{kind}.{group}") };
        let list: Vec<String> =
            causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        let message = if list.len() == 1 {
            format!("{what} \"{name}\" is invalid: {}", list[0])
        } else {
            format!("{what} \"{name}\" is invalid: [{}]", list.join(", "))
        };
        let mut error = ApiError::new(422, "Invalid", message);
        error.details = Some(Box::new((name.to_owned(), group.to_owned(), kind.to_owned())));
        error.causes = causes;
        error
    }
    /// 429 TooManyRequests.
    pub fn too_many_requests(message: impl Into<String>) -> ApiError {
        ApiError::new(429, "TooManyRequests", message)
    }
    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "InternalError", message)
    }
    /// 504 Timeout.
    pub fn timeout(message: impl Into<String>) -> ApiError {
        ApiError::new(504, "Timeout", message)
    }
    /// 507 when the store's quota is exhausted; clients see a clear, non-retriable reason.
    pub fn storage_full(message: impl Into<String>) -> ApiError {
        ApiError::new(507, "InsufficientStorage", message)
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if self.details.is_some() || !self.causes.is_empty() {
            let mut details = serde_json::Map::new();
            if let Some(details_tuple) = &self.details {
                let (name, group, kind) = details_tuple.as_ref();
                if !name.is_empty() {
                    details.insert("name".into(), json!(name));
                }
                if !group.is_empty() {
                    details.insert("group".into(), json!(group));
                }
                details.insert("kind".into(), json!(kind));
            }
            if !self.causes.is_empty() {
                details.insert(
                    "causes".into(),
                    Value::Array(
                        self.causes
                            .iter()
                            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                            .collect(),
                    ),
                );
            }
            status["details"] = Value::Object(details);
        }
        status
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<storage::Error> for ApiError {
    fn from(error: storage::Error) -> ApiError {
        match &error {
            storage::Error::Compacted { requested, compacted } => {
                ApiError::expired(format!("too old resource version: {requested} ({compacted})"))
            }
            storage::Error::FutureRevision { .. } => {
                let mut e = ApiError::timeout(format!("Too large resource version: {error}"));
                e.retry_after = Some(1);
                e
            }
            storage::Error::QuotaExceeded { .. } => ApiError::storage_full(error.to_string()),
            _ => {
                tracing::error!(error = %error, "storage failure");
                let mut e = ApiError::internal(format!("storage: {error}"));
                e.retry_after = Some(1);
                e
            }
        }
    }
}

/// Result with an API error.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_lists_causes_with_fields() {
        let e = ApiError::invalid(
            "Pod",
            "",
            "x",
            vec![Cause::new("FieldValueRequired", "spec.containers", "Required value")],
        );
        let s = e.to_status();
        assert_eq!(s["code"], 422);
        assert_eq!(s["reason"], "Invalid");
        assert_eq!(s["details"]["causes"][0]["field"], "spec.containers");
        assert_eq!(s["message"], "Pod \"x\" is invalid: spec.containers: Required value");
    }

    #[test]
    fn not_found_names_the_resource() {
        let s = ApiError::not_found("apps", "deployments", "web").to_status();
        assert_eq!(s["message"], "deployments.apps \"web\" not found");
        assert_eq!(s["details"]["kind"], "deployments");
    }
}
