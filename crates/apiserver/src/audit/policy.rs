//! The audit `Policy` (`audit.k8s.io/v1`): which requests are logged and at what level.
//! Pure: parsing and matching. The first rule that matches a request decides its level; a
//! request no rule matches is not logged.

use serde::Deserialize;

/// How much of a request is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub enum Level {
    None,
    Metadata,
    Request,
    RequestResponse,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::None => "None",
            Level::Metadata => "Metadata",
            Level::Request => "Request",
            Level::RequestResponse => "RequestResponse",
        }
    }
}

/// The points of a request's life an event is written at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Stage {
    RequestReceived,
    ResponseStarted,
    ResponseComplete,
    Panic,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::RequestReceived => "RequestReceived",
            Stage::ResponseStarted => "ResponseStarted",
            Stage::ResponseComplete => "ResponseComplete",
            Stage::Panic => "Panic",
        }
    }
}

/// The file's contents.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub omit_stages: Vec<Stage>,
    #[serde(default)]
    pub omit_managed_fields: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    pub level: Level,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub user_groups: Vec<String>,
    #[serde(default)]
    pub verbs: Vec<String>,
    #[serde(default)]
    pub resources: Vec<GroupResources>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    pub non_resource_urls: Vec<String>,
    #[serde(default)]
    pub omit_stages: Vec<Stage>,
    #[serde(default)]
    pub omit_managed_fields: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupResources {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub resource_names: Vec<String>,
}

/// A request, as the policy sees it.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    pub user: &'a str,
    pub groups: &'a [String],
    pub verb: &'a str,
    /// Empty for a non-resource request.
    pub resource: &'a str,
    pub subresource: &'a str,
    pub group: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub path: &'a str,
}

/// What the policy decides for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub level: Level,
    pub omit_stages: Vec<Stage>,
    pub omit_managed_fields: bool,
}

impl Policy {
    /// Reads a policy file (YAML or JSON).
    pub fn parse(text: &str) -> Result<Policy, String> {
        let policy: Policy = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        if !policy.kind.is_empty() && policy.kind != "Policy" {
            return Err(format!("kind: want Policy, got {:?}", policy.kind));
        }
        if !policy.api_version.is_empty()
            && policy.api_version != "audit.k8s.io/v1"
            && policy.api_version != "audit.k8s.io/v1beta1"
        {
            return Err(format!("apiVersion: want audit.k8s.io/v1, got {:?}", policy.api_version));
        }
        for (i, rule) in policy.rules.iter().enumerate() {
            if !rule.non_resource_urls.is_empty()
                && (!rule.resources.is_empty() || !rule.namespaces.is_empty())
            {
                return Err(format!(
                    "rules[{i}]: rules cannot apply to both regular resources and non-resource URLs"
                ));
            }
        }
        Ok(policy)
    }

    /// Everything at `Metadata`: the policy of a log path given without a policy file.
    pub fn metadata_for_all() -> Policy {
        Policy {
            rules: vec![Rule {
                level: Level::Metadata,
                users: vec![],
                user_groups: vec![],
                verbs: vec![],
                resources: vec![],
                namespaces: vec![],
                non_resource_urls: vec![],
                omit_stages: vec![],
                omit_managed_fields: None,
            }],
            ..Policy::default()
        }
    }

    /// The level and stages of `request`.
    pub fn decide(&self, request: &Request<'_>) -> Decision {
        match self.rules.iter().find(|r| r.matches(request)) {
            Some(rule) => {
                let mut omit = self.omit_stages.clone();
                omit.extend(rule.omit_stages.iter().copied());
                Decision {
                    level: rule.level,
                    omit_stages: omit,
                    omit_managed_fields: rule
                        .omit_managed_fields
                        .unwrap_or(self.omit_managed_fields),
                }
            }
            None => {
                Decision { level: Level::None, omit_stages: vec![], omit_managed_fields: false }
            }
        }
    }
}

fn path_matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => pattern == path,
    }
}

impl Rule {
    fn matches(&self, r: &Request<'_>) -> bool {
        if !self.users.is_empty() && !self.users.iter().any(|u| u == r.user) {
            return false;
        }
        if !self.user_groups.is_empty() && !self.user_groups.iter().any(|g| r.groups.contains(g)) {
            return false;
        }
        if !self.verbs.is_empty() && !self.verbs.iter().any(|v| v == r.verb) {
            return false;
        }
        if r.resource.is_empty() {
            // A non-resource request: only rules without resource conditions apply.
            if !self.resources.is_empty() || !self.namespaces.is_empty() {
                return false;
            }
            return self.non_resource_urls.is_empty()
                || self.non_resource_urls.iter().any(|p| path_matches(p, r.path));
        }
        if !self.non_resource_urls.is_empty() {
            return false;
        }
        if !self.namespaces.is_empty() && !self.namespaces.iter().any(|n| n == r.namespace) {
            return false;
        }
        if self.resources.is_empty() {
            return true;
        }
        let combined = if r.subresource.is_empty() {
            r.resource.to_owned()
        } else {
            format!("{}/{}", r.resource, r.subresource)
        };
        let resource_matches = |res: &String| {
            res == "*"
                || *res == combined
                || (!r.subresource.is_empty()
                    && (*res == format!("{}/*", r.resource)
                        || *res == format!("*/{}", r.subresource)))
        };
        self.resources.iter().any(|gr| {
            gr.group == r.group
                && (gr.resources.is_empty() || gr.resources.iter().any(resource_matches))
                && (gr.resource_names.is_empty() || gr.resource_names.iter().any(|n| n == r.name))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    users: ["system:kube-scheduler"]
  - level: None
    nonResourceURLs: ["/healthz*", "/version"]
  - level: Metadata
    resources:
      - group: ""
        resources: ["secrets", "configmaps"]
  - level: RequestResponse
    resources:
      - group: ""
        resources: ["pods", "pods/*"]
      - group: "apps"
        resources: ["deployments/scale"]
    omitStages: [ResponseStarted]
  - level: Request
    verbs: ["create", "update", "patch"]
  - level: Metadata
"#;

    fn request<'a>(verb: &'a str, group: &'a str, resource: &'a str, sub: &'a str) -> Request<'a> {
        Request {
            user: "alice",
            verb,
            group,
            resource,
            subresource: sub,
            namespace: "default",
            ..Request::default()
        }
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let policy = Policy::parse(POLICY).expect("valid");
        let level = |r: Request<'_>| policy.decide(&r).level;
        assert_eq!(level(request("get", "", "secrets", "")), Level::Metadata);
        assert_eq!(level(request("create", "", "pods", "")), Level::RequestResponse);
        assert_eq!(level(request("get", "", "pods", "log")), Level::RequestResponse);
        assert_eq!(
            level(request("update", "apps", "deployments", "scale")),
            Level::RequestResponse
        );
        assert_eq!(level(request("update", "apps", "deployments", "")), Level::Request);
        assert_eq!(level(request("list", "apps", "deployments", "")), Level::Metadata);
        let scheduler =
            Request { user: "system:kube-scheduler", ..request("create", "", "pods", "binding") };
        assert_eq!(level(scheduler), Level::None);
        let health = Request { path: "/healthz/etcd", ..Request::default() };
        assert_eq!(level(health), Level::None);
        let decision = policy.decide(&request("create", "", "pods", ""));
        assert_eq!(decision.omit_stages, vec![Stage::RequestReceived, Stage::ResponseStarted]);
        assert_eq!(Policy::default().decide(&request("get", "", "pods", "")).level, Level::None);
    }

    #[test]
    fn mistakes_are_named() {
        assert!(Policy::parse("kind: Policy\nrules: [{level: Loud}]").is_err());
        let both =
            "kind: Policy\nrules: [{level: None, nonResourceURLs: [/x], resources: [{group: ''}]}]";
        assert!(Policy::parse(both).expect_err("both").contains("rules[0]"));
    }
}
