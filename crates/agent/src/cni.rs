//! The pod network config containerd's CRI plugin hands to the standard CNI plugins: a bridge
//! per agent with host-local addresses from the node's podCIDR, NAT for traffic leaving the
//! pod network, and portmap for `hostPort`.

use crate::{AgentConfig, AgentError};

/// The bridge's name: `kr` + a short hash of the agent's folder, so agents sharing a host
/// (or a network namespace) never share a bridge. At most 15 bytes, as Linux requires.
pub fn bridge_name(config: &AgentConfig) -> String {
    let id = crate::image::sha256_hex(config.data_dir.display().to_string().as_bytes());
    format!("kr{}", &id[..8])
}

/// The conflist for `pod_cidr`.
pub fn render(config: &AgentConfig, pod_cidr: &str) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "krust",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge_name(config),
                "isGateway": true,
                "ipMasq": true,
                // Hairpin lets a pod reach itself through a Service; promiscMode cannot be
                // set with it.
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": pod_cidr }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": config.data_dir.join("cni").join("networks").display().to_string(),
                }
            },
            { "type": "portmap", "capabilities": { "portMappings": true }, "snat": true }
        ]
    })
}

/// Writes the conflist where the supervised containerd reads it.
pub fn write_config(config: &AgentConfig, pod_cidr: &str) -> Result<(), AgentError> {
    let dir = config.containerd_paths().cni_conf_dir;
    std::fs::create_dir_all(&dir).map_err(|e| AgentError::io(&dir, e))?;
    let path = dir.join("10-krust.conflist");
    let text = serde_json::to_string_pretty(&render(config, pod_cidr)).unwrap_or_default();
    let tmp = dir.join(".10-krust.conflist.tmp");
    std::fs::write(&tmp, text).map_err(|e| AgentError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| AgentError::io(&path, e))
}
