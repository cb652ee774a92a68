//! SubjectAccessReview, LocalSubjectAccessReview and SelfSubjectAccessReview: "may this user
//! do this?", answered by the authorizer the server runs.

use serde_json::{Value, json};

use crate::auth::{Attributes, Decision, UserInfo};
use crate::status::{ApiError, Cause};
use crate::strategy::{ReviewContext, Strategy};

/// The SelfSubjectAccessReview strategy: about the user asking.
#[derive(Debug)]
pub struct SelfSubjectAccessReviews;

/// The SubjectAccessReview strategy: about the user the spec names.
#[derive(Debug)]
pub struct SubjectAccessReviews;

/// The LocalSubjectAccessReview strategy: as SubjectAccessReview, within the URL's namespace.
#[derive(Debug)]
pub struct LocalSubjectAccessReviews;

fn invalid(kind: &str, field: &str, message: &str) -> ApiError {
    ApiError::invalid(
        kind,
        "authorization.k8s.io",
        "",
        vec![Cause::new("FieldValueRequired", field, message.to_owned())],
    )
}

/// Decides the review's spec for `user`.
fn decide(
    kind: &str,
    spec: &Value,
    user: &UserInfo,
    context: &ReviewContext<'_>,
    namespace: Option<&str>,
) -> Result<Value, ApiError> {
    let text = |p: &str| spec.pointer(p).and_then(Value::as_str).unwrap_or("").to_owned();
    let resource = spec.get("resourceAttributes").filter(|v| !v.is_null());
    let non_resource = spec.get("nonResourceAttributes").filter(|v| !v.is_null());
    let (verb, group, plural, subresource, mut ns, name, path) = match (resource, non_resource) {
        (None, Some(_)) => (
            text("/nonResourceAttributes/verb"),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            text("/nonResourceAttributes/path"),
        ),
        (Some(_), None) => (
            text("/resourceAttributes/verb"),
            text("/resourceAttributes/group"),
            text("/resourceAttributes/resource"),
            text("/resourceAttributes/subresource"),
            text("/resourceAttributes/namespace"),
            text("/resourceAttributes/name"),
            String::new(),
        ),
        _ => {
            return Err(invalid(
                kind,
                "spec.resourceAttributes",
                "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
            ));
        }
    };
    if let Some(url_ns) = namespace {
        if resource.is_none() {
            return Err(invalid(
                kind,
                "spec.nonResourceAttributes",
                "Invalid value: disallowed on this kind of request",
            ));
        }
        if !ns.is_empty() && ns != url_ns {
            return Err(ApiError::bad_request(format!(
                "spec.resourceAttributes.namespace must match namespace: {url_ns}"
            )));
        }
        ns = url_ns.to_owned();
    }
    let attributes = Attributes {
        verb: &verb,
        group: &group,
        resource: &plural,
        subresource: &subresource,
        namespace: &ns,
        name: &name,
        path: &path,
    };
    Ok(match context.authorizer.authorize(user, &attributes) {
        Decision::Allow => json!({"allowed": true}),
        Decision::Deny(reason) => json!({"allowed": false, "reason": reason}),
    })
}

/// The user a SubjectAccessReview's spec names.
fn subject(kind: &str, spec: &Value) -> Result<UserInfo, ApiError> {
    let name = spec.get("user").and_then(Value::as_str).unwrap_or("").to_owned();
    let groups: Vec<String> = spec
        .get("groups")
        .and_then(Value::as_array)
        .map(|g| g.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default();
    if name.is_empty() && groups.is_empty() {
        return Err(ApiError::invalid(
            kind,
            "authorization.k8s.io",
            "",
            vec![Cause::new(
                "FieldValueInvalid",
                "spec.user",
                "Invalid value: \"\": at least one of user or group must be specified",
            )],
        ));
    }
    Ok(UserInfo { name, groups })
}

impl Strategy for SelfSubjectAccessReviews {
    fn review(&self, review: &Value, context: &ReviewContext<'_>) -> Result<Value, ApiError> {
        let spec = review.get("spec").cloned().unwrap_or_else(|| json!({}));
        decide("SelfSubjectAccessReview", &spec, context.user, context, None)
    }
}

impl Strategy for SubjectAccessReviews {
    fn review(&self, review: &Value, context: &ReviewContext<'_>) -> Result<Value, ApiError> {
        let spec = review.get("spec").cloned().unwrap_or_else(|| json!({}));
        let user = subject("SubjectAccessReview", &spec)?;
        decide("SubjectAccessReview", &spec, &user, context, None)
    }
}

impl Strategy for LocalSubjectAccessReviews {
    fn review(&self, review: &Value, context: &ReviewContext<'_>) -> Result<Value, ApiError> {
        let spec = review.get("spec").cloned().unwrap_or_else(|| json!({}));
        let user = subject("LocalSubjectAccessReview", &spec)?;
        let namespace = context.namespace.unwrap_or("");
        decide("LocalSubjectAccessReview", &spec, &user, context, Some(namespace))
    }
}
