//! `--private-registry`: k3s's `registries.yaml` (mirrors, plain-HTTP endpoints, TLS and
//! auth per registry) turned into containerd's `certs.d` host files and CRI auth config.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::AgentError;
use crate::containerd::ContainerdPaths;

/// The file's shape.
#[derive(Debug, Default, Deserialize)]
pub struct Registries {
    /// Registry host → mirror endpoints.
    #[serde(default)]
    pub mirrors: BTreeMap<String, Mirror>,
    /// Registry host → auth and TLS.
    #[serde(default)]
    pub configs: BTreeMap<String, RegistryConfig>,
}

/// A registry's mirrors.
#[derive(Debug, Default, Deserialize)]
pub struct Mirror {
    /// Endpoints, `http://` for plain HTTP.
    #[serde(default)]
    pub endpoint: Vec<String>,
}

/// Auth and TLS of one registry host.
#[derive(Debug, Default, Deserialize)]
pub struct RegistryConfig {
    /// Credentials.
    pub auth: Option<Auth>,
    /// TLS settings.
    pub tls: Option<Tls>,
}

/// Registry credentials.
#[derive(Debug, Default, Deserialize)]
pub struct Auth {
    /// User name.
    #[serde(default)]
    pub username: String,
    /// Password.
    #[serde(default)]
    pub password: String,
    /// `base64(user:password)`.
    #[serde(default)]
    pub auth: String,
    /// Identity token.
    #[serde(default)]
    pub identity_token: String,
}

/// Registry TLS settings.
#[derive(Debug, Default, Deserialize)]
pub struct Tls {
    /// CA bundle.
    pub ca_file: Option<String>,
    /// Client certificate.
    pub cert_file: Option<String>,
    /// Client key.
    pub key_file: Option<String>,
    /// Skip verification.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

fn toml_str(s: &str) -> String {
    format!("{s:?}")
}

/// `hosts.toml` for one registry host.
pub fn hosts_toml(host: &str, mirror: Option<&Mirror>, config: Option<&RegistryConfig>) -> String {
    let upstream = if host == "docker.io" {
        "https://registry-1.docker.io".to_owned()
    } else {
        format!("https://{host}")
    };
    let mut out = format!("server = {}\n", toml_str(&upstream));
    let tls_lines = |out: &mut String, tls: Option<&Tls>| {
        if let Some(tls) = tls {
            if tls.insecure_skip_verify {
                out.push_str("  skip_verify = true\n");
            }
            if let Some(ca) = &tls.ca_file {
                out.push_str(&format!("  ca = {}\n", toml_str(ca)));
            }
            if let (Some(c), Some(k)) = (&tls.cert_file, &tls.key_file) {
                out.push_str(&format!("  client = [[{}, {}]]\n", toml_str(c), toml_str(k)));
            }
        }
    };
    for endpoint in mirror.map(|m| m.endpoint.as_slice()).unwrap_or_default() {
        let url =
            if endpoint.contains("://") { endpoint.clone() } else { format!("https://{endpoint}") };
        out.push_str(&format!(
            "\n[host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n",
            toml_str(&url)
        ));
    }
    if mirror.is_none() {
        out.push_str(&format!(
            "\n[host.{}]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n",
            toml_str(&upstream)
        ));
        tls_lines(&mut out, config.and_then(|c| c.tls.as_ref()));
    }
    out
}

/// The CRI plugin's auth section for the registries with credentials (containerd 1.6 reads
/// auth from its main config even when host files are in use).
pub fn auth_toml(registries: &Registries) -> String {
    let mut out = String::new();
    for (host, config) in &registries.configs {
        let Some(auth) = &config.auth else { continue };
        out.push_str(&format!(
            "\n[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.{}.auth]\n  username = {}\n  password = {}\n  auth = {}\n  identitytoken = {}\n",
            toml_str(host),
            toml_str(&auth.username),
            toml_str(&auth.password),
            toml_str(&auth.auth),
            toml_str(&auth.identity_token),
        ));
    }
    out
}

/// Reads `file` and writes the host files and auth config for the supervised containerd.
pub fn apply(file: &Path, paths: &ContainerdPaths) -> Result<(), AgentError> {
    let text = std::fs::read_to_string(file).map_err(|e| AgentError::io(file, e))?;
    let registries: Registries = serde_saphyr::from_str(&text)
        .map_err(|e| AgentError::Config(format!("{}: {e}", file.display())))?;
    let _ = std::fs::remove_dir_all(&paths.certs_d);
    let hosts: std::collections::BTreeSet<&String> =
        registries.mirrors.keys().chain(registries.configs.keys()).collect();
    for host in hosts {
        let dir = paths.certs_d.join(if host == "*" { "_default" } else { host.as_str() });
        std::fs::create_dir_all(&dir).map_err(|e| AgentError::io(&dir, e))?;
        let path = dir.join("hosts.toml");
        let text = hosts_toml(host, registries.mirrors.get(host), registries.configs.get(host));
        std::fs::write(&path, text).map_err(|e| AgentError::io(&path, e))?;
    }
    let auth = auth_toml(&registries);
    if !auth.is_empty() {
        let config = paths.dir.join("config.toml");
        let mut text = std::fs::read_to_string(&config).map_err(|e| AgentError::io(&config, e))?;
        text.push_str(&auth);
        std::fs::write(&config, text).map_err(|e| AgentError::io(&config, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_become_host_files() {
        let registries: Registries = serde_saphyr::from_str(
            "mirrors:\n  docker.io:\n    endpoint: [\"http://127.0.0.1:5000\"]\nconfigs:\n  \"127.0.0.1:5000\":\n    auth:\n      username: u\n      password: p\n",
        )
        .unwrap();
        let text = hosts_toml("docker.io", registries.mirrors.get("docker.io"), None);
        assert!(text.contains("server = \"https://registry-1.docker.io\""));
        assert!(text.contains("[host.\"http://127.0.0.1:5000\"]"));
        let auth = auth_toml(&registries);
        assert!(auth.contains("configs.\"127.0.0.1:5000\".auth]"));
        assert!(auth.contains("username = \"u\""));
    }
}
