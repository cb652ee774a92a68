//! PodSecurity: upstream's Pod Security admission. A namespace's labels
//! `pod-security.kubernetes.io/{enforce,audit,warn}[-version]` (else the cluster's default)
//! pick a level per mode: a pod that fails the `enforce` level is refused with 403, one that
//! fails the `warn` level is admitted with a warning kubectl prints, and workload templates
//! (Deployments, Jobs, …) get the warnings only, as upstream. Changing a namespace's enforce
//! level warns about the pods already there that would fail it.
//!
//! The checks themselves are pure and live in `checks.rs`.

pub mod checks;

use futures::future::BoxFuture;
use serde_json::Value;

use super::{Attributes, Notices, Objects, Operation, Validating};
use crate::status::{ApiError, ApiResult, Cause};
pub use checks::Level;

const LABEL_PREFIX: &str = "pod-security.kubernetes.io/";

/// A level and the version of the standards it is read at (`latest` or `v1.N`). Every
/// version is checked with today's checks; the version is named in messages as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelVersion {
    pub level: Level,
    pub version: String,
}

impl std::fmt::Display for LevelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.level.name(), self.version)
    }
}

/// The three modes' levels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub enforce: LevelVersion,
    pub audit: LevelVersion,
    pub warn: LevelVersion,
}

const MODES: [&str; 3] = ["enforce", "audit", "warn"];

fn valid_version(v: &str) -> bool {
    v == "latest"
        || v.strip_prefix("v1.").is_some_and(|minor| {
            !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit()) && minor.len() <= 3
        })
}

impl Policy {
    fn mode_mut(&mut self, mode: &str) -> &mut LevelVersion {
        match mode {
            "enforce" => &mut self.enforce,
            "audit" => &mut self.audit,
            _ => &mut self.warn,
        }
    }

    /// The policy `labels` give over `defaults`, and what is wrong with them (a label of no
    /// known level counts as `restricted`, as upstream plays safe).
    pub fn from_labels(defaults: &Policy, labels: Option<&Value>) -> (Policy, Vec<Cause>) {
        let mut policy = defaults.clone();
        let mut errors = Vec::new();
        let Some(labels) = labels.and_then(Value::as_object) else { return (policy, errors) };
        for mode in MODES {
            let level_key = format!("{LABEL_PREFIX}{mode}");
            let version_key = format!("{level_key}-version");
            if let Some(text) = labels.get(&level_key).and_then(Value::as_str) {
                match Level::parse(text) {
                    Some(level) => policy.mode_mut(mode).level = level,
                    None => {
                        policy.mode_mut(mode).level = Level::Restricted;
                        errors.push(Cause::new(
                            "FieldValueInvalid",
                            &format!("metadata.labels[{level_key}]"),
                            format!(
                                "Invalid value: {text:?}: must be one of privileged, baseline, restricted"
                            ),
                        ));
                    }
                }
            }
            if let Some(text) = labels.get(&version_key).and_then(Value::as_str) {
                if valid_version(text) {
                    policy.mode_mut(mode).version = text.to_owned();
                } else {
                    policy.mode_mut(mode).version = "latest".to_owned();
                    errors.push(Cause::new(
                        "FieldValueInvalid",
                        &format!("metadata.labels[{version_key}]"),
                        format!("Invalid value: {text:?}: must be \"latest\" or \"v1.x\""),
                    ));
                }
            }
        }
        (policy, errors)
    }
}

/// The cluster-wide configuration: the default policy and who is exempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSecurityConfig {
    pub defaults: Policy,
    pub exempt_namespaces: Vec<String>,
    pub exempt_usernames: Vec<String>,
}

impl Default for PodSecurityConfig {
    /// krust's default: `baseline` enforced, `restricted` warned and audited, `kube-system`
    /// exempt. (Upstream's is `privileged` everywhere.)
    fn default() -> Self {
        let at = |level| LevelVersion { level, version: "latest".to_owned() };
        PodSecurityConfig {
            defaults: Policy {
                enforce: at(Level::Baseline),
                audit: at(Level::Restricted),
                warn: at(Level::Restricted),
            },
            exempt_namespaces: vec!["kube-system".to_owned()],
            exempt_usernames: Vec::new(),
        }
    }
}

impl PodSecurityConfig {
    /// `--pod-security-default`: `MODE=LEVEL[:VERSION]` pairs, comma-separated, over
    /// krust's default, e.g. `enforce=restricted,warn=restricted:v1.30` or
    /// `enforce=privileged`.
    pub fn with_defaults(mut self, text: &str) -> Result<Self, String> {
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (mode, value) =
                pair.split_once('=').ok_or_else(|| format!("{pair:?}: want MODE=LEVEL"))?;
            if !MODES.contains(&mode) {
                return Err(format!("{mode:?}: the modes are enforce, audit and warn"));
            }
            let (level, version) = value.split_once(':').unwrap_or((value, "latest"));
            let level = Level::parse(level).ok_or_else(|| {
                format!("{level:?}: the levels are privileged, baseline and restricted")
            })?;
            if !valid_version(version) {
                return Err(format!("{version:?}: a version is \"latest\" or \"v1.x\""));
            }
            *self.defaults.mode_mut(mode) = LevelVersion { level, version: version.to_owned() };
        }
        Ok(self)
    }
}

/// The PodSecurity plugin.
pub struct PodSecurity {
    pub config: PodSecurityConfig,
}

/// What the warn level (when `warn`) and the audit level tell of an admitted pod spec: a
/// warning for the client, an `audit-violations` annotation for the audit log.
fn told(policy: &Policy, metadata: &Value, spec: &Value, warn: bool) -> Notices {
    let mut notices = Notices::default();
    let would = |level: &LevelVersion| {
        let violations = checks::check(level.level, metadata, spec);
        (!violations.is_empty()).then(|| {
            format!("would violate PodSecurity \"{level}\": {}", checks::describe(&violations))
        })
    };
    if warn && let Some(warning) = would(&policy.warn) {
        notices.warnings.push(warning);
    }
    if let Some(violation) = would(&policy.audit) {
        notices.audit.push((format!("{LABEL_PREFIX}audit-violations"), violation));
    }
    notices
}

/// Where a workload kind keeps its pod template.
fn template_of<'a>(group: &str, kind: &str, object: &'a Value) -> Option<&'a Value> {
    let path = match (group, kind) {
        ("", "PodTemplate") => "/template",
        ("", "ReplicationController")
        | ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet")
        | ("batch", "Job") => "/spec/template",
        ("batch", "CronJob") => "/spec/jobTemplate/spec/template",
        _ => return None,
    };
    object.pointer(path)
}

fn is_workload(group: &str, kind: &str) -> bool {
    matches!(
        (group, kind),
        ("", "PodTemplate" | "ReplicationController")
            | ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet")
            | ("batch", "Job" | "CronJob")
    )
}

/// Whether a pod update changes anything the checks read (upstream ignores updates of
/// metadata and of images alone; a pod's spec is otherwise mostly immutable).
fn significant_pod_update(old: &Value, new: &Value) -> bool {
    let strip = |pod: &Value| {
        let mut spec = pod.get("spec").cloned().unwrap_or(Value::Null);
        for list in ["containers", "initContainers"] {
            if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
                for c in containers {
                    if let Some(c) = c.as_object_mut() {
                        c.remove("image");
                    }
                }
            }
        }
        if let Some(spec) = spec.as_object_mut() {
            spec.remove("activeDeadlineSeconds");
            spec.remove("tolerations");
        }
        spec
    };
    let apparmor = |pod: &Value| {
        pod.pointer("/metadata/annotations").and_then(Value::as_object).map(|a| {
            a.iter()
                .filter(|(k, _)| k.starts_with("container.apparmor.security.beta.kubernetes.io/"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>()
        })
    };
    strip(old) != strip(new) || apparmor(old) != apparmor(new)
}

impl PodSecurity {
    fn exempt(&self, attributes: &Attributes<'_>) -> bool {
        let Some(user) = attributes.user else {
            // The server's own writes.
            return true;
        };
        self.config.exempt_usernames.contains(&user.name)
            || attributes
                .namespace
                .is_some_and(|ns| self.config.exempt_namespaces.iter().any(|e| e == ns))
    }

    async fn namespace_policy(&self, objects: &dyn Objects, namespace: &str) -> ApiResult<Policy> {
        let namespaces = objects.served("", "v1", "namespaces")?;
        let labels = match objects.get(&namespaces, None, namespace).await {
            Ok(ns) => ns.pointer("/metadata/labels").cloned(),
            // NamespaceLifecycle answers for a missing namespace.
            Err(e) if e.code == 404 => None,
            Err(e) => return Err(e),
        };
        Ok(Policy::from_labels(&self.config.defaults, labels.as_ref()).0)
    }

    async fn pod(
        &self,
        objects: &dyn Objects,
        attributes: &Attributes<'_>,
        pod: &Value,
    ) -> ApiResult<Notices> {
        let Some(namespace) = attributes.namespace else { return Ok(Notices::default()) };
        let policy = self.namespace_policy(objects, namespace).await?;
        let metadata = pod.get("metadata").unwrap_or(&Value::Null);
        let spec = pod.get("spec").unwrap_or(&Value::Null);
        let enforced = checks::check(policy.enforce.level, metadata, spec);
        if !enforced.is_empty() {
            return Err(ApiError::forbidden(format!(
                "pods {:?} is forbidden: violates PodSecurity \"{}\": {}",
                attributes.name,
                policy.enforce,
                checks::describe(&enforced)
            )));
        }
        let mut notices = Notices::default();
        notices.audit.push((format!("{LABEL_PREFIX}enforce-policy"), policy.enforce.to_string()));
        notices.extend(told(&policy, metadata, spec, policy.warn != policy.enforce));
        Ok(notices)
    }

    async fn workload(
        &self,
        objects: &dyn Objects,
        attributes: &Attributes<'_>,
        template: &Value,
    ) -> ApiResult<Notices> {
        let Some(namespace) = attributes.namespace else { return Ok(Notices::default()) };
        let policy = self.namespace_policy(objects, namespace).await?;
        let metadata = template.get("metadata").unwrap_or(&Value::Null);
        let spec = template.get("spec").unwrap_or(&Value::Null);
        // Enforcement waits for the pods; the warn and audit levels are told now.
        Ok(told(&policy, metadata, spec, true))
    }

    async fn namespace(
        &self,
        objects: &dyn Objects,
        attributes: &Attributes<'_>,
        namespace: &Value,
    ) -> ApiResult<Vec<String>> {
        let labels = namespace.pointer("/metadata/labels");
        let (policy, errors) = Policy::from_labels(&self.config.defaults, labels);
        if !errors.is_empty() {
            return Err(ApiError::invalid("Namespace", "", attributes.name, errors));
        }
        let Some(old) = attributes.old else { return Ok(Vec::new()) };
        let (old_policy, _) =
            Policy::from_labels(&self.config.defaults, old.pointer("/metadata/labels"));
        if old_policy.enforce == policy.enforce || policy.enforce.level == Level::Privileged {
            return Ok(Vec::new());
        }
        let name = attributes.name;
        if self.config.exempt_namespaces.iter().any(|e| e == name) {
            return Ok(vec![format!(
                "namespace {name:?} is exempt from Pod Security, and the policy (enforce={}) will be ignored",
                policy.enforce
            )]);
        }
        // The pods already there that the new level would refuse, grouped by what they
        // violate as upstream does.
        let pods = objects.served("", "v1", "pods")?;
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for pod in objects.list(&pods, Some(name)).await? {
            let violations = checks::check(
                policy.enforce.level,
                pod.get("metadata").unwrap_or(&Value::Null),
                pod.get("spec").unwrap_or(&Value::Null),
            );
            if violations.is_empty() {
                continue;
            }
            let reasons =
                violations.iter().map(|v| v.reason.clone()).collect::<Vec<_>>().join(", ");
            let pod_name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
            match groups.iter_mut().find(|(r, _)| *r == reasons) {
                Some((_, names)) => names.push(pod_name.to_owned()),
                None => groups.push((reasons, vec![pod_name.to_owned()])),
            }
        }
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let mut warnings = vec![format!(
            "existing pods in namespace {name:?} violate the new PodSecurity enforce level \"{}\"",
            policy.enforce
        )];
        for (reasons, names) in groups {
            let who = match names.len() {
                1 => names[0].clone(),
                2 => format!("{} (and 1 other pod)", names[0]),
                n => format!("{} (and {} other pods)", names[0], n - 1),
            };
            warnings.push(format!("{who}: {reasons}"));
        }
        Ok(warnings)
    }
}

impl Validating for PodSecurity {
    fn name(&self) -> &'static str {
        "PodSecurity"
    }

    fn applies(&self, attributes: &Attributes<'_>) -> bool {
        if !attributes.rt.is_builtin()
            || !matches!(attributes.operation, Operation::Create | Operation::Update)
        {
            return false;
        }
        let (group, kind) = (attributes.rt.group.as_str(), attributes.rt.kind.as_str());
        match (group, kind, attributes.subresource) {
            ("", "Namespace", None) => true,
            ("", "Pod", None | Some("ephemeralcontainers")) => true,
            (_, _, None) => is_workload(group, kind),
            _ => false,
        }
    }

    fn validate<'a>(
        &'a self,
        objects: &'a dyn Objects,
        attributes: &'a Attributes<'a>,
        object: Option<&'a Value>,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            self.validate_with_notices(objects, attributes, object).await.map(|_| ())
        })
    }

    fn validate_with_notices<'a>(
        &'a self,
        objects: &'a dyn Objects,
        attributes: &'a Attributes<'a>,
        object: Option<&'a Value>,
    ) -> BoxFuture<'a, ApiResult<Notices>> {
        Box::pin(async move {
            let Some(object) = object else { return Ok(Notices::default()) };
            let (group, kind) = (attributes.rt.group.as_str(), attributes.rt.kind.as_str());
            if (group, kind) == ("", "Namespace") {
                let warnings = self.namespace(objects, attributes, object).await?;
                return Ok(Notices { warnings, audit: Vec::new() });
            }
            if self.exempt(attributes) {
                return Ok(Notices::default());
            }
            if (group, kind) == ("", "Pod") {
                if let Some(old) = attributes.old
                    && attributes.subresource.is_none()
                    && !significant_pod_update(old, object)
                {
                    return Ok(Notices::default());
                }
                return self.pod(objects, attributes, object).await;
            }
            let Some(template) = template_of(group, kind, object) else {
                return Ok(Notices::default());
            };
            if let Some(old) = attributes.old
                && template_of(group, kind, old) == Some(template)
            {
                return Ok(Notices::default());
            }
            self.workload(objects, attributes, template).await
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn labels_override_the_default_and_bad_ones_count_as_restricted() {
        let config = PodSecurityConfig::default();
        let (policy, errors) = Policy::from_labels(
            &config.defaults,
            Some(
                &json!({"pod-security.kubernetes.io/enforce": "privileged", "pod-security.kubernetes.io/warn-version": "v1.30"}),
            ),
        );
        assert!(errors.is_empty());
        assert_eq!(policy.enforce.to_string(), "privileged:latest");
        assert_eq!(policy.warn.to_string(), "restricted:v1.30");
        let (policy, errors) = Policy::from_labels(
            &config.defaults,
            Some(
                &json!({"pod-security.kubernetes.io/enforce": "strict", "pod-security.kubernetes.io/audit-version": "1.30"}),
            ),
        );
        assert_eq!(policy.enforce.level, Level::Restricted);
        assert_eq!(errors.len(), 2);
        assert_eq!(
            errors[0].message,
            "Invalid value: \"strict\": must be one of privileged, baseline, restricted"
        );
    }

    #[test]
    fn the_default_flag_is_read_over_krusts_default() {
        let config = PodSecurityConfig::default()
            .with_defaults("enforce=restricted:v1.29, warn=baseline")
            .expect("valid");
        assert_eq!(config.defaults.enforce.to_string(), "restricted:v1.29");
        assert_eq!(config.defaults.warn.to_string(), "baseline:latest");
        assert_eq!(config.defaults.audit.to_string(), "restricted:latest");
        for bad in ["enforce", "deny=baseline", "enforce=strict", "warn=baseline:1.2"] {
            assert!(PodSecurityConfig::default().with_defaults(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_spec_changes_beyond_images_are_checked_again() {
        let old = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"containers": [{"name": "c", "image": "a"}]}});
        let mut relabelled = old.clone();
        relabelled["metadata"]["labels"]["a"] = json!("2");
        relabelled["spec"]["containers"][0]["image"] = json!("b");
        assert!(!significant_pod_update(&old, &relabelled));
        let mut privileged = old.clone();
        privileged["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
        assert!(significant_pod_update(&old, &privileged));
    }

    #[test]
    fn workload_templates_are_found() {
        let cronjob =
            json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"hostPID": true}}}}}});
        assert!(template_of("batch", "CronJob", &cronjob).is_some());
        assert!(is_workload("apps", "Deployment"));
        assert!(!is_workload("", "ConfigMap"));
    }
}
