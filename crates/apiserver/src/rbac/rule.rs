//! One RBAC `PolicyRule`: whether it allows a request, and whether a set of rules covers it
//! (escalation prevention). Pure: no store, no IO.

use serde_json::{Value, json};

use crate::auth::Attributes;

/// `*`: every verb, group, resource or URL.
const ALL: &str = "*";

/// A `PolicyRule` as the authorizer reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    /// Verbs (`get`, `list`, … or `*`).
    pub verbs: Vec<String>,
    /// API groups (`""` is the core group).
    pub api_groups: Vec<String>,
    /// Resources, `resource/subresource`, `*/subresource` or `*`.
    pub resources: Vec<String>,
    /// Object names; empty allows every name.
    pub resource_names: Vec<String>,
    /// Non-resource paths; a trailing `*` matches any suffix.
    pub non_resource_urls: Vec<String>,
}

fn strings(value: &Value, field: &str) -> Vec<String> {
    value
        .get(field)
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

impl Rule {
    /// Reads a rule from its JSON (fields the rule lacks are empty).
    pub fn from_json(value: &Value) -> Rule {
        Rule {
            verbs: strings(value, "verbs"),
            api_groups: strings(value, "apiGroups"),
            resources: strings(value, "resources"),
            resource_names: strings(value, "resourceNames"),
            non_resource_urls: strings(value, "nonResourceURLs"),
        }
    }

    /// The rules of a role object's `rules`.
    pub fn list_from(role: &Value) -> Vec<Rule> {
        role.get("rules")
            .and_then(Value::as_array)
            .map(|rules| rules.iter().map(Rule::from_json).collect())
            .unwrap_or_default()
    }

    /// The rule as `SelfSubjectRulesReview` reports it: a resource rule or a non-resource
    /// rule, the fields a rule of that kind has.
    pub fn to_review(&self) -> (Option<Value>, Option<Value>) {
        let mut resource = None;
        let mut non_resource = None;
        if !self.resources.is_empty() || !self.api_groups.is_empty() {
            let mut rule = json!({"verbs": self.verbs, "apiGroups": self.api_groups,
                "resources": self.resources});
            if !self.resource_names.is_empty() {
                rule["resourceNames"] = json!(self.resource_names);
            }
            resource = Some(rule);
        }
        if !self.non_resource_urls.is_empty() {
            non_resource =
                Some(json!({"verbs": self.verbs, "nonResourceURLs": self.non_resource_urls}));
        }
        (resource, non_resource)
    }

    /// Whether the rule allows the request.
    pub fn allows(&self, attributes: &Attributes<'_>) -> bool {
        if !has_or_all(&self.verbs, attributes.verb) {
            return false;
        }
        if attributes.resource.is_empty() {
            return self.non_resource_urls.iter().any(|url| url_matches(url, attributes.path));
        }
        has_or_all(&self.api_groups, attributes.group)
            && self.resource_matches(attributes.resource, attributes.subresource)
            && (self.resource_names.is_empty()
                || (!attributes.name.is_empty()
                    && self.resource_names.iter().any(|n| n == attributes.name)))
    }

    /// `resource[/subresource]` against the rule's resources: `*`, an exact match, or
    /// `*/subresource`. (`pods/*` is not a wildcard: upstream matches it literally.)
    fn resource_matches(&self, resource: &str, subresource: &str) -> bool {
        self.resources.iter().any(|r| {
            if r == ALL {
                return true;
            }
            if subresource.is_empty() {
                return r == resource;
            }
            match r.split_once('/') {
                Some((rr, rs)) => (rr == resource || rr == ALL) && rs == subresource,
                None => false,
            }
        })
    }
}

fn has_or_all(values: &[String], wanted: &str) -> bool {
    values.iter().any(|v| v == ALL || v == wanted)
}

/// A non-resource URL rule: exact, `*`, or a prefix ending in `*`.
fn url_matches(rule: &str, path: &str) -> bool {
    if rule == ALL || rule == path {
        return true;
    }
    rule.strip_suffix('*').is_some_and(|prefix| path.starts_with(prefix))
}

/// Whether `owner`'s rules cover everything `requested` allows — the check that keeps a user
/// from creating a role (or binding one) with rights they do not hold. Each value of each
/// field must be held literally: `*` is covered only by `*`.
pub fn covers(owner: &[Rule], requested: &Rule) -> bool {
    // Broken down to one verb at a time (and one group, resource, name or URL), each piece
    // must be held by some single rule of the owner.
    for verb in &requested.verbs {
        if !requested.non_resource_urls.is_empty() {
            for url in &requested.non_resource_urls {
                let held = owner.iter().any(|o| {
                    has_or_all(&o.verbs, verb)
                        && o.non_resource_urls.iter().any(|u| {
                            u == ALL || u == url || {
                                u.strip_suffix('*').is_some_and(|p| url.starts_with(p))
                            }
                        })
                });
                if !held {
                    return false;
                }
            }
        }
        for group in &requested.api_groups {
            for resource in &requested.resources {
                let held = owner.iter().any(|o| {
                    has_or_all(&o.verbs, verb)
                        && has_or_all(&o.api_groups, group)
                        && resource_covered(&o.resources, resource)
                        && names_covered(&o.resource_names, &requested.resource_names)
                });
                if !held {
                    return false;
                }
            }
        }
    }
    true
}

fn resource_covered(owner: &[String], resource: &str) -> bool {
    if owner.iter().any(|r| r == ALL || r == resource) {
        return true;
    }
    match resource.split_once('/') {
        Some((_, sub)) => owner.iter().any(|r| r.strip_prefix("*/") == Some(sub)),
        None => false,
    }
}

fn names_covered(owner: &[String], requested: &[String]) -> bool {
    owner.is_empty() || (!requested.is_empty() && requested.iter().all(|n| owner.contains(n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> Rule {
        let own = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        Rule {
            verbs: own(verbs),
            api_groups: own(groups),
            resources: own(resources),
            resource_names: own(names),
            non_resource_urls: vec![],
        }
    }

    fn request<'a>(verb: &'a str, group: &'a str, resource: &'a str) -> Attributes<'a> {
        Attributes {
            verb,
            group,
            resource,
            subresource: "",
            namespace: "default",
            name: "",
            path: "",
        }
    }

    #[test]
    fn verbs_groups_and_resources_match_exactly_or_by_star() {
        let r = rule(&["get", "list"], &[""], &["pods"], &[]);
        assert!(r.allows(&request("get", "", "pods")));
        assert!(!r.allows(&request("delete", "", "pods")));
        assert!(!r.allows(&request("get", "apps", "pods")));
        assert!(!r.allows(&request("get", "", "services")));
        let any = rule(&["*"], &["*"], &["*"], &[]);
        assert!(any.allows(&request("escalate", "rbac.authorization.k8s.io", "roles")));
    }

    #[test]
    fn subresources_need_their_own_entry_or_a_star_prefix() {
        let pods = rule(&["get"], &[""], &["pods"], &[]);
        let log = Attributes { subresource: "log", ..request("get", "", "pods") };
        assert!(!pods.allows(&log));
        assert!(rule(&["get"], &[""], &["pods/log"], &[]).allows(&log));
        assert!(rule(&["get"], &[""], &["*/log"], &[]).allows(&log));
        // `pods/*` is literal upstream, not a wildcard.
        assert!(!rule(&["get"], &[""], &["pods/*"], &[]).allows(&log));
        assert!(!rule(&["get"], &[""], &["pods/log"], &[]).allows(&request("get", "", "pods")));
    }

    #[test]
    fn resource_names_restrict_named_requests_only() {
        let r = rule(&["get", "list"], &[""], &["configmaps"], &["app"]);
        let named = |name| Attributes { name, ..request("get", "", "configmaps") };
        assert!(r.allows(&named("app")));
        assert!(!r.allows(&named("other")));
        // A list names nothing, so a rule limited to names never allows it.
        assert!(!r.allows(&request("list", "", "configmaps")));
    }

    #[test]
    fn non_resource_urls_match_exactly_or_by_prefix() {
        let r = Rule {
            verbs: vec!["get".into()],
            non_resource_urls: vec!["/healthz".into(), "/apis/*".into()],
            ..Rule::default()
        };
        let path = |path| Attributes { path, ..request("get", "", "") };
        assert!(r.allows(&path("/healthz")));
        assert!(r.allows(&path("/apis/apps/v1")));
        assert!(!r.allows(&path("/api")));
        assert!(!r.allows(&Attributes { verb: "post", ..path("/healthz") }));
    }

    #[test]
    fn covering_needs_every_piece_held_literally() {
        let owner = vec![
            rule(&["get", "list"], &[""], &["pods", "pods/log"], &[]),
            rule(&["get"], &[""], &["configmaps"], &["app"]),
        ];
        assert!(covers(&owner, &rule(&["get"], &[""], &["pods/log"], &[])));
        assert!(covers(&owner, &rule(&["list"], &[""], &["pods"], &[])));
        assert!(!covers(&owner, &rule(&["delete"], &[""], &["pods"], &[])));
        assert!(!covers(&owner, &rule(&["*"], &[""], &["pods"], &[])));
        assert!(!covers(&owner, &rule(&["get"], &["*"], &["pods"], &[])));
        assert!(covers(&owner, &rule(&["get"], &[""], &["configmaps"], &["app"])));
        assert!(!covers(&owner, &rule(&["get"], &[""], &["configmaps"], &[])));
        let star_sub = vec![rule(&["get"], &[""], &["*/status"], &[])];
        assert!(covers(&star_sub, &rule(&["get"], &[""], &["pods/status"], &[])));
        let admin = vec![rule(&["*"], &["*"], &["*"], &[])];
        assert!(covers(&admin, &rule(&["*"], &["*"], &["*"], &["x"])));
    }
}
