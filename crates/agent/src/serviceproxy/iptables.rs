//! The service proxy's fallback for kernels without nftables: the same plan as iptables
//! rules, in the shape kube-proxy's iptables mode uses (a chain per Service port spreading
//! new connections with the `statistic` match, a chain per endpoint that DNATs), loaded with
//! one `iptables-restore --noflush` of this agent's own chains, so every sync replaces them
//! at once and leaves other chains alone. The built-in chains jump to ours through one rule
//! each, added once.
//!
//! Slower to load than nftables at scale and linear per packet in the number of Services,
//! which is why it is only the fallback. NetworkPolicy is not enforced in this mode.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::plan::{Backend, ServicePort};

/// The firewall mark bit that asks the postrouting chain to masquerade.
const MASQUERADE_MARK: &str = "0x4000";

/// This agent's chain names: a prefix of its own (agents sharing a network namespace in
/// tests keep apart), within iptables' 28 characters.
#[derive(Debug, Clone)]
pub struct Chains {
    prefix: String,
}

impl Chains {
    /// The chains of the agent whose nftables table would be `table` (`krust_<8 hex>`).
    pub fn for_table(table: &str) -> Chains {
        let id: String = table.trim_start_matches("krust_").chars().take(8).collect();
        Chains { prefix: format!("KR{id}") }
    }

    fn fixed(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }

    fn hashed(&self, kind: &str, what: &str) -> String {
        let hash = crate::image::sha256_hex(what.as_bytes());
        format!("{}-{kind}-{}", self.prefix, &hash[..12])
    }

    /// Whether `chain` is one of this agent's.
    pub fn owns(&self, chain: &str) -> bool {
        chain.starts_with(&format!("{}-", self.prefix))
    }

    /// The jumps from the built-in chains: (table, built-in chain, rule).
    pub fn hooks(&self) -> Vec<(&'static str, &'static str, String)> {
        let services = format!("-j {}", self.fixed("SERVICES"));
        let reject = format!("-m conntrack --ctstate NEW -j {}", self.fixed("REJECT"));
        vec![
            ("nat", "PREROUTING", services.clone()),
            ("nat", "OUTPUT", services),
            ("nat", "POSTROUTING", format!("-j {}", self.fixed("POSTROUTING"))),
            ("filter", "INPUT", reject.clone()),
            ("filter", "FORWARD", reject.clone()),
            ("filter", "OUTPUT", reject),
        ]
    }
}

/// The `iptables-restore --noflush` input that makes this agent's chains carry `ports`, and
/// deletes `stale` chains (this agent's chains that the last sync had and this one has not).
/// Returns the input and the chains it declares.
pub fn render(
    chains: &Chains,
    cluster_cidr: &str,
    ports: &[ServicePort],
    stale: &BTreeSet<String>,
) -> (String, BTreeSet<String>) {
    let services = chains.fixed("SERVICES");
    let node_ports = chains.fixed("NODEPORTS");
    let postrouting = chains.fixed("POSTROUTING");
    let mark = chains.fixed("MARK-MASQ");
    let reject = chains.fixed("REJECT");
    let mut declared: BTreeSet<String> =
        [&services, &node_ports, &postrouting, &mark].into_iter().cloned().collect();
    let mut rules = String::new();
    let mut rule = |line: String| {
        rules.push_str(&line);
        rules.push('\n');
    };
    rule(format!("-A {mark} -j MARK --or-mark {MASQUERADE_MARK}"));
    rule(format!(
        "-A {postrouting} -m mark ! --mark {MASQUERADE_MARK}/{MASQUERADE_MARK} -j RETURN"
    ));
    rule(format!("-A {postrouting} -j MARK --xor-mark {MASQUERADE_MARK}"));
    rule(format!("-A {postrouting} -j MASQUERADE"));
    let mut rejects = Vec::new();
    let mut drops = Vec::new();
    for port in ports {
        let proto = port.protocol.nft();
        let key = format!("{}/{proto}", port.name);
        let svc = chains.hashed("SVC", &key);
        let ext = chains.hashed("EXT", &key);
        let matches =
            |dest: &str, dport: u16| format!("-d {dest}/32 -p {proto} -m {proto} --dport {dport}");
        let has_cluster = !port.cluster_backends.is_empty();
        let external_target =
            !port.external_backends.is_empty() || (port.external_local && has_cluster);
        let reached_from_outside = port.node_port.is_some() || !port.external_ips.is_empty();
        // The endpoint chains, one per backend, shared by the Service's two chains.
        let endpoint = |b: &Backend| chains.hashed("SEP", &format!("{key}/{}:{}", b.ip, b.port));
        let spread = |rule: &mut dyn FnMut(String), from: &str, backends: &[Backend]| {
            if let Some(seconds) = port.affinity_seconds {
                for b in backends {
                    let sep = endpoint(b);
                    rule(format!(
                        "-A {from} -m recent --name {sep} --rcheck --seconds {seconds} --reap -j {sep}"
                    ));
                }
            }
            let n = backends.len();
            for (i, b) in backends.iter().enumerate() {
                let pick = if i + 1 < n {
                    format!(
                        "-m statistic --mode random --probability {:.11} ",
                        1.0 / (n - i) as f64
                    )
                } else {
                    String::new()
                };
                rule(format!("-A {from} {pick}-j {}", endpoint(b)));
            }
        };
        let mut backends: Vec<&Backend> =
            port.cluster_backends.iter().chain(&port.external_backends).collect();
        backends.sort();
        backends.dedup();
        for b in backends {
            let sep = endpoint(b);
            if !declared.insert(sep.clone()) {
                continue;
            }
            // Hairpin: a pod reaching itself through the Service is masqueraded.
            rule(format!("-A {sep} -s {}/32 -j {mark}", b.ip));
            if port.affinity_seconds.is_some() {
                rule(format!("-A {sep} -m recent --name {sep} --set"));
            }
            rule(format!(
                "-A {sep} -p {proto} -m {proto} -j DNAT --to-destination {}:{}",
                b.ip, b.port
            ));
        }
        if has_cluster {
            declared.insert(svc.clone());
            for ip in &port.cluster_ips {
                rule(format!("-A {services} {} -j {svc}", matches(&ip.to_string(), port.port)));
            }
            rule(format!("-A {svc} ! -s {cluster_cidr} -j {mark}"));
            spread(&mut rule, &svc, &port.cluster_backends);
        } else {
            for ip in &port.cluster_ips {
                rejects.push(matches(&ip.to_string(), port.port));
            }
        }
        if external_target && reached_from_outside {
            declared.insert(ext.clone());
            for ip in &port.external_ips {
                rule(format!("-A {services} {} -j {ext}", matches(&ip.to_string(), port.port)));
            }
            if let Some(node_port) = port.node_port {
                rule(format!("-A {node_ports} -p {proto} -m {proto} --dport {node_port} -j {ext}"));
            }
            if port.external_local {
                if has_cluster {
                    rule(format!("-A {ext} -s {cluster_cidr} -j {svc}"));
                    rule(format!("-A {ext} -m addrtype --src-type LOCAL -j {svc}"));
                }
                if port.external_backends.is_empty() {
                    // Dropped in the filter table (nat may not drop): clients from outside
                    // reach no endpoint on this node, as upstream.
                    let outside = format!("! -s {cluster_cidr} -m addrtype ! --src-type LOCAL");
                    for ip in &port.external_ips {
                        drops.push(format!("{outside} {}", matches(&ip.to_string(), port.port)));
                    }
                    if let Some(node_port) = port.node_port {
                        drops.push(format!(
                            "{outside} -m addrtype --dst-type LOCAL -p {proto} -m {proto} --dport {node_port}"
                        ));
                    }
                } else {
                    spread(&mut rule, &ext, &port.external_backends);
                }
            } else {
                rule(format!("-A {ext} ! -s {cluster_cidr} -j {mark}"));
                spread(&mut rule, &ext, &port.external_backends);
            }
        } else if reached_from_outside {
            for ip in &port.external_ips {
                rejects.push(matches(&ip.to_string(), port.port));
            }
            if let Some(node_port) = port.node_port {
                rejects.push(format!(
                    "-m addrtype --dst-type LOCAL -p {proto} -m {proto} --dport {node_port}"
                ));
            }
        }
    }
    // Node ports on the node's own addresses, last.
    rule(format!("-A {services} -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j {node_ports}"));
    let mut out = String::from("*nat\n");
    for chain in declared.iter().chain(stale.difference(&declared)) {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    out.push_str(&rules);
    // Chains of the last sync that are gone: declared (so flushed) above, deleted now that
    // nothing jumps to them.
    for chain in stale.difference(&declared) {
        let _ = writeln!(out, "-X {chain}");
    }
    let _ = writeln!(out, "COMMIT\n*filter\n:{reject} - [0:0]");
    for r in rejects {
        let _ = writeln!(out, "-A {reject} {r} -j REJECT");
    }
    for d in drops {
        let _ = writeln!(out, "-A {reject} {d} -j DROP");
    }
    out.push_str("COMMIT\n");
    declared.insert(reject);
    (out, declared)
}

/// Runs `program args` with `input` on its standard input.
async fn run(program: &str, args: &[&str], input: &str) -> Result<String, String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).await.map_err(|e| format!("{program}: {e}"))?;
    }
    let out = child.wait_with_output().await.map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{program}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Loads `input` (from [`render`]) and makes sure the built-in chains jump to ours.
pub async fn apply(chains: &Chains, input: &str) -> Result<(), String> {
    run("iptables-restore", &["-w", "--noflush"], input).await?;
    for (table, builtin, rule) in chains.hooks() {
        let args: Vec<&str> = rule.split(' ').collect();
        let check = [&["-w", "-t", table, "-C", builtin][..], &args].concat();
        if run("iptables", &check, "").await.is_err() {
            let insert = [&["-w", "-t", table, "-I", builtin, "1"][..], &args].concat();
            run("iptables", &insert, "").await?;
        }
    }
    Ok(())
}

/// Removes the jumps and every chain of this agent (reset, or a proxy turned off).
pub async fn delete(chains: &Chains) {
    for (table, builtin, rule) in chains.hooks() {
        let args: Vec<&str> = rule.split(' ').collect();
        let delete = [&["-w", "-t", table, "-D", builtin][..], &args].concat();
        // Once per copy (a crash between check and insert could have left two).
        while run("iptables", &delete, "").await.is_ok() {}
    }
    for table in ["nat", "filter"] {
        let Ok(saved) = run("iptables-save", &["-t", table], "").await else { continue };
        let ours: Vec<&str> = saved
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .filter_map(|l| l.split(' ').next())
            .filter(|c| chains.owns(c))
            .collect();
        if ours.is_empty() {
            continue;
        }
        let mut input = format!("*{table}\n");
        for chain in &ours {
            let _ = writeln!(input, ":{chain} - [0:0]");
        }
        for chain in &ours {
            let _ = writeln!(input, "-X {chain}");
        }
        input.push_str("COMMIT\n");
        if let Err(e) = run("iptables-restore", &["-w", "--noflush"], &input).await {
            tracing::warn!(error = %e, "removing the service proxy's iptables chains failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::serviceproxy::plan::Protocol;

    fn port(name: &str, ip: u8, backends: &[&str]) -> ServicePort {
        let backends: Vec<Backend> =
            backends.iter().map(|ip| Backend { ip: ip.parse().expect("ip"), port: 8080 }).collect();
        ServicePort {
            name: name.into(),
            protocol: Protocol::Tcp,
            cluster_ips: vec![Ipv4Addr::new(10, 43, 0, ip)],
            external_ips: Vec::new(),
            port: 80,
            node_port: Some(30000 + u16::from(ip)),
            cluster_backends: backends.clone(),
            external_backends: backends.clone(),
            external_local: false,
            affinity_seconds: None,
            hairpin: backends.iter().map(|b| b.ip).collect(),
        }
    }

    #[test]
    fn services_spread_with_statistic_and_empty_ones_are_rejected() {
        let chains = Chains::for_table("krust_0123abcd");
        let (input, declared) = render(
            &chains,
            "10.42.0.0/16",
            &[port("ns/web:80", 9, &["10.42.0.2", "10.42.0.3"]), port("ns/none:80", 10, &[])],
            &BTreeSet::new(),
        );
        assert!(
            input.contains(
                "-m statistic --mode random --probability 0.50000000000 -j KR0123abcd-SEP-"
            )
        );
        assert!(input.contains("-d 10.43.0.9/32 -p tcp -m tcp --dport 80 -j KR0123abcd-SVC-"));
        assert!(
            input.contains(
                "-A KR0123abcd-REJECT -d 10.43.0.10/32 -p tcp -m tcp --dport 80 -j REJECT"
            )
        );
        assert!(input.contains("--dport 30010 -j REJECT"), "the empty Service's node port");
        assert!(declared.iter().all(|c| c.len() <= 28 && chains.owns(c)), "{declared:?}");
    }

    /// The kernel's own loader takes what is rendered, a second sync replaces the first and
    /// deletes the chains that went, and delete removes everything (in a network namespace
    /// of its own, gone with the process).
    #[tokio::test]
    async fn the_rules_load_replace_and_go() {
        let chains = Chains::for_table("krust_feedf00d");
        let cidr = "10.42.0.0/16";
        let mut sticky = port("ns/sticky:80", 11, &["10.42.0.4"]);
        sticky.affinity_seconds = Some(30);
        let mut local = port("ns/local:80", 12, &["10.42.0.5"]);
        local.external_local = true;
        local.external_backends.clear();
        let (first, declared) = render(
            &chains,
            cidr,
            &[port("ns/web:80", 9, &["10.42.0.2", "10.42.0.3"]), sticky, local],
            &BTreeSet::new(),
        );
        let (second, _) = render(&chains, cidr, &[port("ns/web:80", 9, &["10.42.0.2"])], &declared);
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("first"), &first).expect("write");
        std::fs::write(dir.path().join("second"), &second).expect("write");
        let script = "iptables-restore --noflush first && iptables-restore --noflush second && iptables-save -t nat && iptables-save -t filter";
        let out = tokio::process::Command::new("unshare")
            .args(["--net", "--", "sh", "-c", script])
            .current_dir(dir.path())
            .output()
            .await
            .expect("unshare");
        let saved = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}\n{first}", String::from_utf8_lossy(&out.stderr));
        assert!(saved.contains("--to-destination 10.42.0.2:8080"), "{saved}");
        assert!(!saved.contains("10.42.0.3"), "the gone endpoint's chain: {saved}");
        assert!(!saved.contains("10.43.0.11"), "the gone Service: {saved}");
    }
}
