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

/// Decides whether a user may perform a request (RBAC, the Node authorizer, or both).
pub trait Authorizer: Send + Sync {
    /// The decision for `user` doing `attributes`.
    fn authorize(&self, user: &UserInfo, attributes: &Attributes<'_>) -> Decision;

    /// Everything `user` may do in `namespace`.
    fn rules(&self, user: &UserInfo, namespace: &str) -> Rules;
}

impl<T: Authorizer + ?Sized> Authorizer for std::sync::Arc<T> {
    fn authorize(&self, user: &UserInfo, attributes: &Attributes<'_>) -> Decision {
        (**self).authorize(user, attributes)
    }

    fn rules(&self, user: &UserInfo, namespace: &str) -> Rules {
        (**self).rules(user, namespace)
    }
}

/// Allows every authenticated user everything (`--authorization-mode=AlwaysAllow`).
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

/// When a client certificate stops being valid (Unix seconds).
pub fn certificate_not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Paths a request without credentials may be authorized for at all (as `system:anonymous`,
/// by what RBAC binds to `system:unauthenticated`: upstream's `system:public-info-viewer`
/// grants health and version); any other answers 401 without asking.
pub fn is_public_path(path: &str) -> bool {
    matches!(path, "/version" | "/version/" | "/healthz" | "/livez" | "/readyz")
        || path.starts_with("/livez/")
        || path.starts_with("/readyz/")
        || path.starts_with("/healthz/")
}

/// The user a request without credentials is.
pub fn anonymous() -> UserInfo {
    UserInfo {
        name: "system:anonymous".to_owned(),
        groups: vec!["system:unauthenticated".to_owned()],
    }
}

/// Static bearer tokens from `--token-auth-file`, in upstream's CSV format: one
/// `token,user,uid[,"group1,group2"]` per line (blank lines and `#` comments skipped).
#[derive(Debug, Clone, Default)]
pub struct TokenFile {
    users: std::collections::HashMap<String, UserInfo>,
}

impl TokenFile {
    /// Reads the file's text; an error names the line that is wrong.
    pub fn parse(text: &str) -> Result<TokenFile, String> {
        let mut users = std::collections::HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = csv_fields(line);
            let (Some(token), Some(name)) = (fields.first(), fields.get(1)) else {
                return Err(format!("line {}: want token,user,uid[,groups]", number + 1));
            };
            if token.is_empty() || name.is_empty() || fields.len() < 3 {
                return Err(format!("line {}: want token,user,uid[,groups]", number + 1));
            }
            let mut groups: Vec<String> = fields
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            groups.push("system:authenticated".to_owned());
            users.insert(token.clone(), UserInfo { name: name.clone(), groups });
        }
        Ok(TokenFile { users })
    }

    /// The user `token` is, if it is one of the file's.
    pub fn user(&self, token: &str) -> Option<UserInfo> {
        self.users.get(token).cloned()
    }
}

/// The fields of one CSV line (double quotes group commas, `""` is a quote).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                if let Some(f) = fields.last_mut() {
                    f.push('"');
                }
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(String::new()),
            c => {
                if let Some(f) = fields.last_mut() {
                    f.push(c);
                }
            }
        }
    }
    fields.into_iter().map(|f| f.trim().to_owned()).collect()
}

#[cfg(test)]
mod token_file_tests {
    use super::*;

    #[test]
    fn lines_give_users_with_their_groups() {
        let file =
            TokenFile::parse("# comment\n\ns3cret,carol,1001,\"devs, ops\"\nplain,dave,1002\n")
                .unwrap();
        let carol = file.user("s3cret").unwrap();
        assert_eq!(carol.name, "carol");
        assert_eq!(carol.groups, ["devs", "ops", "system:authenticated"]);
        assert_eq!(file.user("plain").unwrap().groups, ["system:authenticated"]);
        assert!(file.user("wrong").is_none());
        assert_eq!(
            TokenFile::parse("onlytoken\n").unwrap_err(),
            "line 1: want token,user,uid[,groups]"
        );
        assert!(TokenFile::parse(",nobody,1\n").is_err());
    }
}
