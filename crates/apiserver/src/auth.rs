//! The first two links of the request chain: authentication (who is asking) and authorization
//! (may they). Admission follows in `admission`.

/// An authenticated identity, as upstream's `user.Info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// User name (the certificate CN).
    pub name: String,
    /// Groups (the certificate O values), plus `system:authenticated`.
    pub groups: Vec<String>,
}

/// What a request wants to do, for the authorizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes<'a> {
    /// get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: &'a str,
    /// API group.
    pub group: &'a str,
    /// Resource plural ("" for non-resource requests).
    pub resource: &'a str,
    /// Subresource.
    pub subresource: &'a str,
    /// Namespace.
    pub namespace: &'a str,
    /// Object name.
    pub name: &'a str,
    /// Request path, for non-resource requests.
    pub path: &'a str,
}

/// An authorization decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Denied, with the reason shown to the user.
    Deny(String),
}

/// What a user may do in a namespace, as `SelfSubjectRulesReview` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// `{verbs, apiGroups, resources, resourceNames}` rules.
    pub resource_rules: Vec<serde_json::Value>,
    /// `{verbs, nonResourceURLs}` rules.
    pub non_resource_rules: Vec<serde_json::Value>,
    /// Whether the list may be missing rules.
    pub incomplete: bool,
}

/// Decides whether a user may perform a request. RBAC implements this in its own issue.
pub trait Authorizer: Send + Sync {
    /// The decision for `user` doing `attributes`.
    fn authorize(&self, user: &UserInfo, attributes: &Attributes<'_>) -> Decision;

    /// Everything `user` may do in `namespace`.
    fn rules(&self, user: &UserInfo, namespace: &str) -> Rules;
}

/// Allows every authenticated user everything (the default until RBAC lands).
#[derive(Debug, Default)]
pub struct AllowAuthenticated;

impl Authorizer for AllowAuthenticated {
    fn authorize(&self, _user: &UserInfo, _attributes: &Attributes<'_>) -> Decision {
        Decision::Allow
    }

    fn rules(&self, _user: &UserInfo, _namespace: &str) -> Rules {
        Rules {
            resource_rules: vec![
                serde_json::json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}),
            ],
            non_resource_rules: vec![serde_json::json!({"verbs": ["*"], "nonResourceURLs": ["*"]})],
            incomplete: false,
        }
    }
}

/// Extracts the user from a verified client certificate: CN is the name, O values the groups.
pub fn user_from_certificate(der: &[u8]) -> Option<UserInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let mut groups: Vec<String> =
        subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_owned)).collect();
    groups.push("system:authenticated".to_owned());
    Some(UserInfo { name, groups })
}

/// Paths anyone may read, as upstream's `system:public-info-viewer` allows.
pub fn is_public_path(path: &str) -> bool {
    matches!(path, "/version" | "/version/" | "/healthz" | "/livez" | "/readyz")
        || path.starts_with("/livez/")
        || path.starts_with("/readyz/")
        || path.starts_with("/healthz/")
}
