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
                // One masquerade rule for the whole pod network (`masquerade`) instead of a
                // chain per pod: the bridge plugin's per-pod iptables calls cost tens of
                // milliseconds of every pod start.
                "ipMasq": false,
                // Hairpin lets a pod reach itself through a Service; promiscMode cannot be
                // set with it.
                "hairpinMode": true,
                // Room for the overlay's headers when pods' packets are tunnelled.
                "mtu": if config.flannel_backend == crate::routes::Backend::Vxlan { crate::vxlan::MTU } else { 1500 },
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

/// Traffic from this node's pods to anything outside the cluster's pod network leaves with
/// the node's address; pod-to-pod traffic across nodes keeps its addresses.
fn masquerade_rule(config: &AgentConfig, pod_cidr: &str) -> Vec<String> {
    [
        "POSTROUTING",
        "-s",
        pod_cidr,
        "!",
        "-d",
        &config.cluster_cidr,
        "-m",
        "comment",
        "--comment",
        &format!("krust pod network {}", bridge_name(config)),
        "-j",
        "MASQUERADE",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

async fn iptables(args: &[&str], rule: &[String]) -> std::io::Result<bool> {
    let status = tokio::process::Command::new("iptables")
        .args(["-w", "-t", "nat"])
        .args(args)
        .args(rule)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await?;
    Ok(status.success())
}

/// Makes traffic from pods to anywhere outside the pod network leave with the node's address
/// (one rule, added once).
pub async fn masquerade(config: &AgentConfig, pod_cidr: &str) -> Result<(), AgentError> {
    let rule = masquerade_rule(config, pod_cidr);
    let present = iptables(&["-C"], &rule)
        .await
        .map_err(|e| AgentError::Runtime(format!("iptables: {e}")))?;
    if !present
        && !iptables(&["-A"], &rule)
            .await
            .map_err(|e| AgentError::Runtime(format!("iptables: {e}")))?
    {
        return Err(AgentError::Runtime(format!(
            "iptables could not add the masquerade rule for {pod_cidr}"
        )));
    }
    Ok(())
}

/// Removes this agent's masquerade rules (for reset), found by their comment, whatever
/// networks they were written for.
pub async fn remove_masquerade(config: &AgentConfig) {
    let Ok(out) = tokio::process::Command::new("iptables")
        .args(["-w", "-t", "nat", "-S", "POSTROUTING"])
        .output()
        .await
    else {
        return;
    };
    let comment = format!("krust pod network {}", bridge_name(config));
    for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(&comment)) {
        if let Some(args) = rule_args(line) {
            let _ = iptables(&["-D"], &args).await;
        }
    }
}

/// The arguments of a rule as `iptables -S` prints it (`-A CHAIN …`, quoted words joined).
fn rule_args(line: &str) -> Option<Vec<String>> {
    let rule = line.strip_prefix("-A ")?;
    let mut args: Vec<String> = Vec::new();
    let mut quoted: Option<String> = None;
    for word in rule.split(' ') {
        match quoted.as_mut() {
            Some(q) => {
                q.push(' ');
                q.push_str(word.trim_end_matches('"'));
                if word.ends_with('"') {
                    args.extend(quoted.take());
                }
            }
            None if word.starts_with('"') && !(word.len() > 1 && word.ends_with('"')) => {
                quoted = Some(word.trim_start_matches('"').to_owned());
            }
            None => args.push(word.trim_matches('"').to_owned()),
        }
    }
    Some(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_rules_split_back_into_arguments() {
        let line = r#"-A POSTROUTING -s 10.42.0.0/24 ! -d 10.42.0.0/16 -m comment --comment "krust pod network kr12345678" -j MASQUERADE"#;
        assert_eq!(
            rule_args(line).expect("rule"),
            [
                "POSTROUTING",
                "-s",
                "10.42.0.0/24",
                "!",
                "-d",
                "10.42.0.0/16",
                "-m",
                "comment",
                "--comment",
                "krust pod network kr12345678",
                "-j",
                "MASQUERADE"
            ]
        );
    }
}
