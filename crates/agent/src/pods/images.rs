//! Image pulls for containers: the pull policy (with upstream's default by tag), credentials
//! from `imagePullSecrets`, and the CRI calls.

use std::collections::BTreeMap;

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use kube::Api;

use crate::cri::Runtime;

/// The pull policy in effect: the container's, or upstream's default (`Always` for `:latest`
/// or no tag, else `IfNotPresent`).
pub fn pull_policy(container: &Container) -> String {
    if let Some(p) = container.image_pull_policy.as_deref().filter(|p| !p.is_empty()) {
        return p.to_owned();
    }
    let image = container.image.clone().unwrap_or_default();
    let without_digest = image.split('@').next().unwrap_or_default();
    let last = without_digest.rsplit('/').next().unwrap_or_default();
    if image.contains('@') {
        return "IfNotPresent".to_owned();
    }
    match last.split_once(':') {
        Some((_, tag)) if tag != "latest" => "IfNotPresent".to_owned(),
        _ => "Always".to_owned(),
    }
}

/// The registry host of an image reference (`docker.io` when it names none).
pub fn registry_host(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_owned()
        }
        _ => "docker.io".to_owned(),
    }
}

/// Credentials for `image` from the pod's pull secrets, best match first.
pub async fn credentials(client: &kube::Client, pod: &Pod, image: &str) -> Vec<cri::AuthConfig> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let host = registry_host(image);
    let mut out = Vec::new();
    for reference in pod.spec.iter().flat_map(|s| s.image_pull_secrets.iter().flatten()) {
        let Ok(Some(secret)) = secrets.get_opt(&reference.name).await else { continue };
        let data = secret.data.unwrap_or_default();
        let auths: BTreeMap<String, serde_json::Value> =
            if let Some(json) = data.get(".dockerconfigjson") {
                serde_json::from_slice::<serde_json::Value>(&json.0)
                    .ok()
                    .and_then(|v| v.get("auths").cloned())
                    .and_then(|a| serde_json::from_value(a).ok())
                    .unwrap_or_default()
            } else if let Some(json) = data.get(".dockercfg") {
                serde_json::from_slice(&json.0).unwrap_or_default()
            } else {
                BTreeMap::new()
            };
        for (server, entry) in auths {
            if server_matches(&server, &host) {
                // containerd compares the URL host of server_address with the registry's
                // host, so it is given as a URL of the image's registry.
                out.push(auth_config(&format!("https://{host}"), &entry));
            }
        }
    }
    out
}

fn server_matches(server: &str, host: &str) -> bool {
    let server = server.trim_start_matches("https://").trim_start_matches("http://");
    let server_host = server.split('/').next().unwrap_or_default();
    server_host == host
        || (host == "docker.io"
            && matches!(server_host, "index.docker.io" | "registry-1.docker.io" | "docker.io"))
}

fn auth_config(server: &str, entry: &serde_json::Value) -> cri::AuthConfig {
    let field = |k: &str| entry.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    let (mut username, mut password) = (field("username"), field("password"));
    let auth = field("auth");
    if username.is_empty() && !auth.is_empty() {
        use base64::Engine;
        if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(&auth)
            && let Ok(text) = String::from_utf8(decoded)
            && let Some((u, p)) = text.split_once(':')
        {
            username = u.to_owned();
            password = p.to_owned();
        }
    }
    cri::AuthConfig {
        username,
        password,
        server_address: server.to_owned(),
        identity_token: field("identitytoken"),
        registry_token: field("registrytoken"),
        ..Default::default()
    }
}

/// The image as the runtime has it, if it has it.
pub async fn status(rt: &dyn Runtime, image: &str) -> Result<Option<cri::Image>, tonic::Status> {
    rt.image_status(image.to_owned()).await
}

/// The user an image runs as: `Some(uid)` when numeric (from the image config), `None` when
/// it names a user by name, and `Some(0)` when it names none.
pub fn image_user(image: &cri::Image) -> Option<i64> {
    match (&image.uid, image.username.as_str()) {
        (Some(uid), _) => Some(uid.value),
        (None, "") => Some(0),
        (None, _) => None,
    }
}

/// Pulls `image`, trying each credential and then none; returns the image reference.
pub async fn pull(
    rt: &dyn Runtime,
    image: &str,
    auths: Vec<cri::AuthConfig>,
) -> Result<String, tonic::Status> {
    let mut last = None;
    for auth in auths.into_iter().map(Some).chain(std::iter::once(None)) {
        match rt.pull_image(image.to_owned(), auth).await {
            Ok(reference) => return Ok(reference),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| tonic::Status::unknown("no pull attempted")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(image: &str, policy: Option<&str>) -> Container {
        Container {
            name: "c".into(),
            image: Some(image.into()),
            image_pull_policy: policy.map(str::to_owned),
            ..Default::default()
        }
    }

    #[test]
    fn default_pull_policy_depends_on_the_tag() {
        assert_eq!(pull_policy(&container("busybox", None)), "Always");
        assert_eq!(pull_policy(&container("busybox:latest", None)), "Always");
        assert_eq!(pull_policy(&container("busybox:1.36", None)), "IfNotPresent");
        assert_eq!(pull_policy(&container("localhost:5000/busybox", None)), "Always");
        assert_eq!(pull_policy(&container("localhost:5000/busybox:v1", None)), "IfNotPresent");
        assert_eq!(pull_policy(&container("busybox@sha256:abc", None)), "IfNotPresent");
        assert_eq!(pull_policy(&container("busybox:1", Some("Never"))), "Never");
    }

    #[test]
    fn registry_hosts_and_credentials() {
        assert_eq!(registry_host("busybox"), "docker.io");
        assert_eq!(registry_host("library/busybox:1"), "docker.io");
        assert_eq!(registry_host("127.0.0.1:5000/x/y:1"), "127.0.0.1:5000");
        assert!(server_matches("https://index.docker.io/v1/", "docker.io"));
        assert!(server_matches("127.0.0.1:5000", "127.0.0.1:5000"));
        assert!(!server_matches("other:5000", "127.0.0.1:5000"));
        let auth = auth_config("r", &serde_json::json!({"auth": "dXNlcjpwYXNz"}));
        assert_eq!((auth.username.as_str(), auth.password.as_str()), ("user", "pass"));
    }
}
