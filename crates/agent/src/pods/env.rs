//! A container's environment: `envFrom` sources, then `env` entries (later ones win), with
//! values from ConfigMaps, Secrets, the downward API and resource fields, and `$(VAR)`
//! expansion against what is defined so far, as upstream's kubelet builds it.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};
use kube::Api;

use super::config::{expand_vars, parse_quantity};

/// Why a container cannot be configured yet (`CreateContainerConfigError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// ConfigMaps and Secrets of the pod's namespace, fetched once per sync.
#[derive(Debug, Default)]
pub struct Sources {
    // Values as bytes: Secrets (and ConfigMaps' binaryData) need not be text, and volumes
    // must receive them unchanged.
    config_maps: HashMap<String, Option<BTreeMap<String, Vec<u8>>>>,
    secrets: HashMap<String, Option<BTreeMap<String, Vec<u8>>>>,
    /// ServiceAccount tokens by (audience, lifetime asked).
    tokens: HashMap<(String, i64), String>,
}

/// What the downward API reads besides the pod object.
#[derive(Debug, Clone, Default)]
pub struct Downward {
    /// The node's address.
    pub host_ip: String,
    /// The pod's address.
    pub pod_ip: String,
    /// Node allocatable cpu (cores) and memory (bytes), for limits that are not set.
    pub node_cpu: f64,
    /// See `node_cpu`.
    pub node_memory: f64,
}

impl Sources {
    /// Every ConfigMap and Secret the pod's containers refer to (in env, envFrom and
    /// volumes), from the node's object cache; a GET only for what its watch has not listed
    /// yet. Missing objects are remembered as missing.
    pub(crate) async fn fetch(
        client: &kube::Client,
        cache: &super::objects::ObjectCache,
        pod: &Pod,
    ) -> Result<Sources, kube::Error> {
        use super::objects::{ObjectKey, Seen};
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let (cms, secrets) = super::objects::references(pod);
        let mut sources = Sources::default();
        let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
        for name in cms {
            let key = ObjectKey { secret: false, namespace: namespace.clone(), name: name.clone() };
            match cache.get(&key) {
                Seen::Present(data) => {
                    sources.config_maps.insert(name, Some(data));
                    continue;
                }
                Seen::Missing => {
                    sources.config_maps.insert(name, None);
                    continue;
                }
                Seen::Unknown => {}
            }
            let data = cm_api.get_opt(&name).await?.map(|cm| {
                let mut data: BTreeMap<String, Vec<u8>> = cm
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect();
                data.extend(cm.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)));
                data
            });
            sources.config_maps.insert(name, data);
        }
        let secret_api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        for name in secrets {
            let key = ObjectKey { secret: true, namespace: namespace.clone(), name: name.clone() };
            match cache.get(&key) {
                Seen::Present(data) => {
                    sources.secrets.insert(name, Some(data));
                    continue;
                }
                Seen::Missing => {
                    sources.secrets.insert(name, None);
                    continue;
                }
                Seen::Unknown => {}
            }
            let data = secret_api.get_opt(&name).await?.map(|s| {
                let mut data: BTreeMap<String, Vec<u8>> =
                    s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
                data.extend(
                    s.string_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())),
                );
                data
            });
            sources.secrets.insert(name, data);
        }
        // The projected volumes' ServiceAccount tokens.
        let projected = pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .filter_map(|v| v.projected.as_ref())
            .flat_map(|p| p.sources.iter().flatten())
            .filter_map(|source| source.service_account_token.as_ref());
        for wanted in projected {
            let audience = wanted.audience.clone().unwrap_or_default();
            let expiration = wanted.expiration_seconds.unwrap_or(3600);
            let token = cache.token(pod, &audience, expiration).await?;
            sources.tokens.insert((audience, expiration), token);
        }
        Ok(sources)
    }

    /// The ServiceAccount token for `audience` and `expiration`, if fetched.
    pub fn token(&self, audience: &str, expiration: i64) -> Option<&str> {
        self.tokens.get(&(audience.to_owned(), expiration)).map(String::as_str)
    }

    /// A ConfigMap's data, `None` when it does not exist.
    pub fn config_map(&self, name: &str) -> Option<&BTreeMap<String, Vec<u8>>> {
        self.config_maps.get(name).and_then(Option::as_ref)
    }

    /// A Secret's data, `None` when it does not exist.
    pub fn secret(&self, name: &str) -> Option<&BTreeMap<String, Vec<u8>>> {
        self.secrets.get(name).and_then(Option::as_ref)
    }

    /// Test helper: one Secret with byte values.
    #[cfg(test)]
    pub(crate) fn with_secret_bytes(name: &str, data: &[(&str, &[u8])]) -> Sources {
        let data = data.iter().map(|(k, v)| ((*k).to_owned(), v.to_vec())).collect();
        Sources { secrets: HashMap::from([(name.to_owned(), Some(data))]), ..Default::default() }
    }

    /// Test helper: a source set from literal data.
    pub fn from_literals(
        config_maps: &[(&str, &[(&str, &str)])],
        secrets: &[(&str, &[(&str, &str)])],
    ) -> Sources {
        let conv = |items: &[(&str, &[(&str, &str)])]| {
            items
                .iter()
                .map(|(name, kv)| {
                    let data =
                        kv.iter().map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec())).collect();
                    ((*name).to_owned(), Some(data))
                })
                .collect()
        };
        Sources { config_maps: conv(config_maps), secrets: conv(secrets), ..Default::default() }
    }
}

/// The Services a new container of `pod` gets variables for: the `kubernetes` Service always,
/// and with enableServiceLinks (the default) those of the pod's namespace. Read when a
/// container is created, not on every sync.
pub async fn visible_services(
    client: &kube::Client,
    pod: &Pod,
) -> Result<Vec<(String, String)>, kube::Error> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut services: Vec<Service> = Vec::new();
    let links = pod.spec.as_ref().and_then(|s| s.enable_service_links) != Some(false);
    if links {
        let api: Api<Service> = Api::namespaced(client.clone(), &namespace);
        services.extend(api.list(&kube::api::ListParams::default()).await?.items);
    }
    if namespace != "default" || !links {
        let api: Api<Service> = Api::namespaced(client.clone(), "default");
        services.extend(api.get_opt("kubernetes").await?);
    }
    Ok(service_env(&services))
}

/// The variables upstream injects for Services (`<NAME>_SERVICE_HOST`, `<NAME>_PORT_…`),
/// sorted by Service name; headless and ExternalName Services have none.
pub fn service_env(services: &[Service]) -> Vec<(String, String)> {
    let mut sorted: Vec<&Service> = services.iter().collect();
    sorted.sort_by_key(|s| s.metadata.name.clone());
    let mut out = Vec::new();
    for svc in sorted {
        let Some(spec) = svc.spec.as_ref() else { continue };
        let ip = spec.cluster_ip.clone().unwrap_or_default();
        if ip.is_empty() || ip == "None" || spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let name = svc.metadata.name.clone().unwrap_or_default().to_uppercase().replace('-', "_");
        let ports = spec.ports.clone().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        out.push((format!("{name}_SERVICE_HOST"), ip.clone()));
        out.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
        for p in &ports {
            if let Some(port_name) = p.name.as_ref().filter(|n| !n.is_empty()) {
                out.push((
                    format!("{name}_SERVICE_PORT_{}", port_name.to_uppercase().replace('-', "_")),
                    p.port.to_string(),
                ));
            }
        }
        let proto = |p: &k8s_openapi::api::core::v1::ServicePort| {
            p.protocol.clone().unwrap_or_else(|| "TCP".into())
        };
        out.push((
            format!("{name}_PORT"),
            format!("{}://{ip}:{}", proto(first).to_lowercase(), first.port),
        ));
        for p in &ports {
            let upper = proto(p).to_uppercase();
            let prefix = format!("{name}_PORT_{}_{upper}", p.port);
            out.push((prefix.clone(), format!("{}://{ip}:{}", upper.to_lowercase(), p.port)));
            out.push((format!("{prefix}_PROTO"), upper.to_lowercase()));
            out.push((format!("{prefix}_PORT"), p.port.to_string()));
            out.push((format!("{prefix}_ADDR"), ip.clone()));
        }
    }
    out
}

/// A value as an environment variable (which can only hold text).
fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

/// Whether `key` is a valid environment variable name (upstream's C-identifier-ish rule:
/// letters, digits, `_`, `-`, `.`, not starting with a digit).
fn valid_env_name(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The container's resolved environment: the Service variables `services` first, then
/// `envFrom`, then `env`.
pub fn resolve(
    pod: &Pod,
    container: &Container,
    sources: &Sources,
    downward: &Downward,
    services: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut env: Vec<(String, String)> = services;
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        if let Some(existing) = env.iter_mut().find(|(name, _)| *name == k) {
            existing.1 = v;
        } else {
            env.push((k, v));
        }
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let config_map = from
            .config_map_ref
            .as_ref()
            .map(|r| ("configmap", &r.name, r.optional, sources.config_map(&r.name)));
        let secret = from
            .secret_ref
            .as_ref()
            .map(|r| ("secret", &r.name, r.optional, sources.secret(&r.name)));
        for (kind, name, optional, data) in config_map.into_iter().chain(secret) {
            match data {
                Some(data) => {
                    for (k, v) in data {
                        let key = format!("{prefix}{k}");
                        // Keys that are not valid variable names are skipped, as upstream.
                        if valid_env_name(&key) {
                            set(&mut env, key, text(v));
                        }
                    }
                }
                None if optional == Some(true) => {}
                None => return Err(ConfigError(format!("{kind} \"{name}\" not found"))),
            }
        }
    }
    for e in container.env.iter().flatten() {
        let value = if let Some(v) = e.value.as_ref() {
            let defined: HashMap<&str, &str> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            Some(expand_vars(v, &defined))
        } else if let Some(vf) = e.value_from.as_ref() {
            if let Some(r) = vf.config_map_key_ref.as_ref() {
                match sources.config_map(&r.name).map(|d| d.get(&r.key)) {
                    Some(Some(v)) => Some(text(v)),
                    _ if r.optional == Some(true) => None,
                    Some(None) => {
                        return Err(ConfigError(format!(
                            "couldn't find key {} in ConfigMap {namespace}/{}",
                            r.key, r.name
                        )));
                    }
                    None => {
                        return Err(ConfigError(format!("configmap \"{}\" not found", r.name)));
                    }
                }
            } else if let Some(r) = vf.secret_key_ref.as_ref() {
                match sources.secret(&r.name).map(|d| d.get(&r.key)) {
                    Some(Some(v)) => Some(text(v)),
                    _ if r.optional == Some(true) => None,
                    Some(None) => {
                        return Err(ConfigError(format!(
                            "couldn't find key {} in Secret {namespace}/{}",
                            r.key, r.name
                        )));
                    }
                    None => return Err(ConfigError(format!("secret \"{}\" not found", r.name))),
                }
            } else if let Some(f) = vf.field_ref.as_ref() {
                Some(field_value(pod, &f.field_path, downward).map_err(ConfigError)?)
            } else if let Some(r) = vf.resource_field_ref.as_ref() {
                let target = match r.container_name.as_deref() {
                    Some(name) if !name.is_empty() => pod
                        .spec
                        .iter()
                        .flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()))
                        .find(|c| c.name == name)
                        .ok_or_else(|| ConfigError(format!("container {name} not found")))?,
                    _ => container,
                };
                Some(
                    resource_value(target, &r.resource, r.divisor.as_ref(), downward)
                        .map_err(ConfigError)?,
                )
            } else {
                None
            }
        } else {
            Some(String::new())
        };
        if let Some(v) = value {
            set(&mut env, e.name.clone(), v);
        }
    }
    Ok(env)
}

/// A downward-API field of the pod, as `fieldRef.fieldPath` names it.
pub fn field_value(pod: &Pod, path: &str, downward: &Downward) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.clone().unwrap_or_default();
    let subscript = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix("['").or_else(|| rest.strip_prefix("[\"")))
            .and_then(|rest| rest.strip_suffix("']").or_else(|| rest.strip_suffix("\"]")))
            .map(str::to_owned)
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        "spec.nodeName" => spec.node_name.clone().unwrap_or_default(),
        "spec.serviceAccountName" => spec.service_account_name.clone().unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => downward.host_ip.clone(),
        "status.podIP" | "status.podIPs" => downward.pod_ip.clone(),
        _ => {
            if let Some(key) = subscript("metadata.labels") {
                meta.labels.as_ref().and_then(|l| l.get(&key)).cloned().unwrap_or_default()
            } else if let Some(key) = subscript("metadata.annotations") {
                meta.annotations.as_ref().and_then(|a| a.get(&key)).cloned().unwrap_or_default()
            } else {
                return Err(format!("unsupported fieldPath: {path}"));
            }
        }
    })
}

/// `key="value"` lines, sorted, as the downward API writes label and annotation maps.
pub fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A resource field (`limits.cpu`, `requests.memory`…) divided by `divisor` and rounded up,
/// with limits that are not set reported as the node's allocatable, as upstream.
pub fn resource_value(
    container: &Container,
    resource: &str,
    divisor: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    downward: &Downward,
) -> Result<String, String> {
    let res = container.resources.clone().unwrap_or_default();
    let (kind, name) =
        resource.split_once('.').ok_or_else(|| format!("unsupported resource {resource}"))?;
    let map = match kind {
        "limits" => res.limits,
        "requests" => res.requests,
        _ => return Err(format!("unsupported resource {resource}")),
    };
    let value = map.as_ref().and_then(|m| m.get(name)).and_then(parse_quantity);
    let value = match (value, kind, name) {
        (Some(v), _, _) => v,
        (None, "limits", "cpu") => downward.node_cpu,
        (None, "limits", "memory") => downward.node_memory,
        (None, "requests", "cpu") => 0.0,
        (None, _, _) => 0.0,
    };
    let divisor = divisor.and_then(parse_quantity).filter(|d| *d > 0.0).unwrap_or(1.0);
    Ok(format!("{}", (value / divisor).ceil() as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_sources_resolve_in_upstream_order() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c",
                "resources": {"limits": {"memory": "64Mi"}, "requests": {"cpu": "250m"}},
                "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
                "env": [
                    {"name": "A", "value": "a-$(CM_x)"},
                    {"name": "S", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "pw"}}},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                    {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
                    {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "nope", "optional": true}}}
                ]}]}
        }))
        .unwrap();
        let sources = Sources::from_literals(
            &[("cm", &[("x", "1"), ("bad key", "2")])],
            &[("sec", &[("pw", "hunter2")])],
        );
        let downward = Downward { pod_ip: "10.42.0.5".into(), ..Default::default() };
        let container = pod.spec.as_ref().unwrap().containers[0].clone();
        let env: HashMap<_, _> = resolve(&pod, &container, &sources, &downward, Vec::new())
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(env["CM_x"], "1");
        assert!(!env.contains_key("CM_bad key"));
        assert_eq!(env["A"], "a-1");
        assert_eq!(env["S"], "hunter2");
        assert_eq!(env["POD"], "p");
        assert_eq!(env["APP"], "web");
        assert_eq!(env["IP"], "10.42.0.5");
        assert_eq!(env["MEM"], "64");
        assert_eq!(env["CPU"], "250");
        assert!(!env.contains_key("OPT"));
    }

    #[test]
    fn missing_references_are_config_errors() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": [{"name": "c", "env": [
                {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}]}]}
        }))
        .unwrap();
        let container = pod.spec.as_ref().unwrap().containers[0].clone();
        let none = Sources::default();
        let err = resolve(&pod, &container, &none, &Downward::default(), Vec::new()).unwrap_err();
        assert_eq!(err.0, "configmap \"cm\" not found");
        let no_key = Sources::from_literals(&[("cm", &[("other", "1")])], &[]);
        let err = resolve(&pod, &container, &no_key, &Downward::default(), Vec::new()).unwrap_err();
        assert_eq!(err.0, "couldn't find key k in ConfigMap ns/cm");
    }

    #[test]
    fn services_become_link_variables() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "redis-master"},
            "spec": {"clusterIP": "10.0.0.11", "ports": [{"name": "db", "port": 6379}]}
        }))
        .unwrap();
        let headless: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "h"}, "spec": {"clusterIP": "None", "ports": [{"port": 1}]}
        }))
        .unwrap();
        let env: HashMap<_, _> = service_env(&[svc, headless]).into_iter().collect();
        assert_eq!(env["REDIS_MASTER_SERVICE_HOST"], "10.0.0.11");
        assert_eq!(env["REDIS_MASTER_SERVICE_PORT"], "6379");
        assert_eq!(env["REDIS_MASTER_SERVICE_PORT_DB"], "6379");
        assert_eq!(env["REDIS_MASTER_PORT"], "tcp://10.0.0.11:6379");
        assert_eq!(env["REDIS_MASTER_PORT_6379_TCP_ADDR"], "10.0.0.11");
        assert!(!env.keys().any(|k| k.starts_with("H_")));
    }
}
