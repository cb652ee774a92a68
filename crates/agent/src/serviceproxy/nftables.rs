//! The service proxy's kernel rules: one nftables table per agent, replaced as a whole in one
//! `nft -f` transaction when what it should hold changed, so a reader never sees half a
//! sync. Service addresses and node ports are keys of verdict maps (one lookup per packet
//! however many Services there are). A Service address leads to a chain shared by all
//! Services with as many endpoints, which draws a random index i and DNATs to the endpoint
//! the map `spread-i` holds for (address, protocol, port); node ports and external
//! addresses have a chain per Service port that spreads over its endpoints with rules.
//!
//! Masquerade (source NAT to the node) is marked only for traffic from outside the pod
//! network and for a pod reaching itself through its Service (hairpin), so pods see each
//! other's addresses. A Service with no endpoint is rejected (connection refused), not left
//! to time out. `render` is pure; `apply` and `delete` run `nft`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::networkpolicy::{Allow, Peers, PodFilter};
use super::plan::{Backend, Protocol, ServicePort};

/// The firewall mark bit that asks the postrouting chain to masquerade.
const MASQUERADE_MARK: &str = "0x4000";

/// A short, stable chain name for `what` (nftables names are bounded; Services are not).
fn chain(prefix: &str, what: &str) -> String {
    let hash = crate::image::sha256_hex(what.as_bytes());
    format!("{prefix}-{}", &hash[..12])
}

fn backend_key(port: &ServicePort, backend: &Backend) -> String {
    format!("{}/{}/{}:{}", port.name, port.protocol.nft(), backend.ip, backend.port)
}

/// Where this node's rules send a Service port's traffic.
struct Names {
    service: String,
    external: String,
}

fn names(port: &ServicePort) -> Names {
    let key = format!("{}/{}", port.name, port.protocol.nft());
    Names { service: chain("svc", &key), external: chain("ext", &key) }
}

/// What one Service port puts in the table: map elements (`key : verdict`), its chains
/// (name and rules), the affinity sets it declares (name and body), and the endpoint
/// addresses for the hairpin set. The whole table is the union over all ports; an
/// incremental sync is the difference between two ports' pieces.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pieces {
    cluster_ips: Vec<String>,
    node_ports: Vec<String>,
    no_endpoint_ips: Vec<String>,
    no_endpoint_node_ports: Vec<String>,
    chains: Vec<(String, Vec<String>)>,
    sets: Vec<(String, String)>,
    hairpin: Vec<Ipv4Addr>,
    /// Elements of the `spread-i` maps: (i, service address . protocol . port : endpoint).
    spread: Vec<(usize, String)>,
    /// The endpoint counts whose `pick-N` chain the cluster path goes through.
    picks: Vec<usize>,
}

/// The key and value types of the `spread-i` maps.
const SPREAD_TYPE: &str = "ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service";

/// The chain that picks one of `n` endpoints of a Service address at random, shared by
/// every Service with `n` endpoints: its i-th endpoint is the element of map `spread-i` for
/// the address, and chain `endpoint-i` DNATs to it. So a Service costs map elements, not
/// rules: the kernel loads elements far faster (10,000 Services of 10 endpoints as rules
/// took over 5 s to load). The random draw is a verdict map of `n` elements per count.
fn pick_chain(n: usize, cluster_cidr: &str) -> (String, Vec<String>) {
    let draw = if n == 1 {
        "goto endpoint-0".to_owned()
    } else {
        let choices: Vec<String> = (0..n).map(|i| format!("{i} : goto endpoint-{i}")).collect();
        format!("numgen random mod {n} vmap {{ {} }}", choices.join(", "))
    };
    (
        format!("pick-{n}"),
        vec![format!("ip saddr != {cluster_cidr} jump mark-for-masquerade"), draw],
    )
}

/// The chain that DNATs to the endpoint map `spread-i` holds for the packet's Service
/// address. (`th dport` with a typed map: nft 1.0 cannot read back a `typeof` key of it.)
fn endpoint_chain(i: usize) -> (String, Vec<String>) {
    (
        format!("endpoint-{i}"),
        vec![format!("dnat to ip daddr . meta l4proto . th dport map @spread-{i}")],
    )
}

/// The pieces of `port`.
pub fn pieces(port: &ServicePort, cluster_cidr: &str) -> Pieces {
    let mut out = Pieces::default();
    let n = names(port);
    let proto = port.protocol.nft();
    let has_cluster = !port.cluster_backends.is_empty();
    // ClientIP affinity needs a chain per endpoint; everything else takes the shared path.
    let shared = port.affinity_seconds.is_none();
    // Traffic from outside reaches something when some endpoint can take it; under the
    // Local policy a node without one drops it rather than refusing (upstream's rule).
    let external_target =
        !port.external_backends.is_empty() || (port.external_local && has_cluster);
    for ip in &port.cluster_ips {
        let element = format!("{ip} . {proto} . {}", port.port);
        if has_cluster && shared {
            let count = port.cluster_backends.len();
            out.cluster_ips.push(format!("{element} : goto pick-{count}"));
            for (i, b) in port.cluster_backends.iter().enumerate() {
                out.spread.push((i, format!("{element} : {} . {}", b.ip, b.port)));
            }
            if !out.picks.contains(&count) {
                out.picks.push(count);
            }
        } else if has_cluster {
            out.cluster_ips.push(format!("{element} : goto {}", n.service));
        } else {
            out.no_endpoint_ips.push(format!("{element} : goto reject-chain"));
        }
    }
    for ip in &port.external_ips {
        let element = format!("{ip} . {proto} . {}", port.port);
        if external_target {
            out.cluster_ips.push(format!("{element} : goto {}", n.external));
        } else {
            out.no_endpoint_ips.push(format!("{element} : goto reject-chain"));
        }
    }
    if let Some(node_port) = port.node_port {
        let element = format!("{proto} . {node_port}");
        if external_target {
            out.node_ports.push(format!("{element} : goto {}", n.external));
        } else {
            out.no_endpoint_node_ports.push(format!("{element} : goto reject-chain"));
        }
    }
    let affinity = |backend: &Backend| chain("aff", &backend_key(port, backend));
    let endpoint = |backend: &Backend| chain("ep", &backend_key(port, backend));
    // New connections are spread as kube-proxy's iptables mode does, without a set per
    // Service (the kernel's anonymous sets made a table of 10,000 Services take half a
    // minute to load): the i-th of n rules takes its connection with probability 1/(n-i),
    // the last one takes what is left.
    let spread = |rules: &mut Vec<String>, backends: &[Backend]| {
        let n = backends.len();
        if port.affinity_seconds.is_some() {
            for b in backends {
                rules.push(format!("ip saddr @{} goto {}", affinity(b), endpoint(b)));
            }
        }
        for (i, b) in backends.iter().enumerate() {
            let pick =
                if i + 1 < n { format!("numgen random mod {} 0 ", n - i) } else { String::new() };
            if port.affinity_seconds.is_some() {
                rules.push(format!("{pick}goto {}", endpoint(b)));
            } else {
                rules.push(format!("meta l4proto {proto} {pick}dnat to {}:{}", b.ip, b.port));
            }
        }
    };
    out.hairpin = port.hairpin.clone();
    // The Service's own chain: for affinity, and for pods reaching an external address of a
    // Local Service.
    if has_cluster && (!shared || port.external_local) {
        let mut rules = vec![format!("ip saddr != {cluster_cidr} jump mark-for-masquerade")];
        spread(&mut rules, &port.cluster_backends);
        out.chains.push((n.service.clone(), rules));
    }
    // Only node ports and external addresses lead to the external chain.
    let reached_from_outside = port.node_port.is_some() || !port.external_ips.is_empty();
    if external_target && reached_from_outside {
        let mut rules = Vec::new();
        if port.external_local {
            // Pods and the node itself get the cluster behaviour; clients from outside keep
            // their address and reach only this node's endpoints.
            if has_cluster {
                rules.push(format!("ip saddr {cluster_cidr} goto {}", n.service));
                rules.push(format!("fib saddr type local goto {}", n.service));
            }
            if port.external_backends.is_empty() {
                rules.push("drop".to_owned());
            } else {
                spread(&mut rules, &port.external_backends);
            }
        } else {
            rules.push(format!("ip saddr != {cluster_cidr} jump mark-for-masquerade"));
            spread(&mut rules, &port.external_backends);
        }
        out.chains.push((n.external, rules));
    }
    // ClientIP affinity remembers each client's endpoint in a set per endpoint, filled by
    // the endpoint's own chain.
    if let Some(seconds) = port.affinity_seconds {
        let mut seen = BTreeSet::new();
        for backend in port.cluster_backends.iter().chain(&port.external_backends) {
            let name = endpoint(backend);
            if !seen.insert(name.clone()) {
                continue;
            }
            let set = affinity(backend);
            out.sets.push((
                set.clone(),
                format!("type ipv4_addr; flags dynamic,timeout; timeout {seconds}s;"),
            ));
            out.chains.push((
                name,
                vec![
                    format!("update @{set} {{ ip saddr }}"),
                    format!("meta l4proto {proto} dnat to {}:{}", backend.ip, backend.port),
                ],
            ));
        }
    }
    out
}

/// The key of a map element (`key : verdict`).
fn element_key(element: &str) -> &str {
    element.split(" : ").next().unwrap_or(element)
}

/// The commands that turn the table programmed for `old` into the one for `new`, or `None`
/// when only a full load will do (NetworkPolicy or affinity changed, which declare sets).
/// Chains are added and filled before the elements that reach them, and deleted after.
pub fn incremental(
    table: &str,
    cluster_cidr: &str,
    old: &[ServicePort],
    new: &[ServicePort],
) -> Option<String> {
    use std::collections::BTreeMap;
    let key = |p: &ServicePort| (p.name.clone(), p.protocol);
    let before: BTreeMap<_, &ServicePort> = old.iter().map(|p| (key(p), p)).collect();
    let after: BTreeMap<_, &ServicePort> = new.iter().map(|p| (key(p), p)).collect();
    let mut script = String::new();
    let mut deleted_chains = Vec::new();
    let mut element_deletes: Vec<(String, String)> = Vec::new();
    let mut element_adds: Vec<(String, String)> = Vec::new();
    let mut picks = BTreeSet::new();
    let backends = |ports: &[ServicePort]| -> BTreeSet<Ipv4Addr> {
        ports.iter().flat_map(|p| p.hairpin.iter().copied()).collect()
    };
    let (hairpin_old, hairpin_new) = (backends(old), backends(new));
    let keys: BTreeSet<_> = before.keys().chain(after.keys()).cloned().collect();
    for k in keys {
        let (was_port, now_port) = (before.get(&k), after.get(&k));
        // Unchanged ports cost a comparison, not their rules.
        if was_port == now_port {
            continue;
        }
        let was = was_port.map(|p| pieces(p, cluster_cidr)).unwrap_or_default();
        let now = now_port.map(|p| pieces(p, cluster_cidr)).unwrap_or_default();
        let (was, now) = (&was, &now);
        if was == now {
            continue;
        }
        if was.sets != now.sets {
            return None;
        }
        picks.extend(now.picks.iter().copied());
        let old_chains: BTreeMap<&String, &Vec<String>> =
            was.chains.iter().map(|(n, r)| (n, r)).collect();
        for (name, rules) in &now.chains {
            match old_chains.get(name) {
                Some(old_rules) if *old_rules == rules => continue,
                Some(_) => {
                    let _ = writeln!(script, "flush chain ip {table} {name}");
                }
                None => {
                    let _ = writeln!(script, "add chain ip {table} {name}");
                }
            }
            for rule in rules {
                let _ = writeln!(script, "add rule ip {table} {name} {rule}");
            }
        }
        for (name, _) in &was.chains {
            if !now.chains.iter().any(|(n, _)| n == name) {
                deleted_chains.push(name.clone());
            }
        }
        for (map, was_elements, now_elements) in [
            ("cluster-ips", &was.cluster_ips, &now.cluster_ips),
            ("node-ports", &was.node_ports, &now.node_ports),
            ("no-endpoint-services", &was.no_endpoint_ips, &now.no_endpoint_ips),
            ("no-endpoint-node-ports", &was.no_endpoint_node_ports, &now.no_endpoint_node_ports),
        ] {
            for e in was_elements.iter().filter(|e| !now_elements.contains(e)) {
                element_deletes.push((element_key(e).to_owned(), map.to_owned()));
            }
            for e in now_elements.iter().filter(|e| !was_elements.contains(e)) {
                element_adds.push((e.clone(), map.to_owned()));
            }
        }
        for (i, e) in was.spread.iter().filter(|e| !now.spread.contains(e)) {
            element_deletes.push((element_key(e).to_owned(), format!("spread-{i}")));
        }
        for (i, e) in now.spread.iter().filter(|e| !was.spread.contains(e)) {
            element_adds.push((e.clone(), format!("spread-{i}")));
        }
    }
    // Shared maps and chains are never deleted here (other Services may use them); writing
    // one again (created if missing, emptied, filled) costs a rule or two.
    let mut shared = Vec::new();
    for i in 0..picks.last().copied().unwrap_or(0) {
        let _ = writeln!(script, "add map ip {table} spread-{i} {{ type {SPREAD_TYPE}; }}");
        shared.push(endpoint_chain(i));
    }
    shared.extend(picks.iter().map(|n| pick_chain(*n, cluster_cidr)));
    for (name, rules) in shared {
        let _ = writeln!(script, "add chain ip {table} {name}\nflush chain ip {table} {name}");
        for rule in rules {
            let _ = writeln!(script, "add rule ip {table} {name} {rule}");
        }
    }
    for (key, map) in &element_deletes {
        let _ = writeln!(script, "delete element ip {table} {map} {{ {key} }}");
    }
    for (element, map) in &element_adds {
        let _ = writeln!(script, "add element ip {table} {map} {{ {element} }}");
    }
    for ip in hairpin_new.difference(&hairpin_old) {
        let _ = writeln!(script, "add element ip {table} hairpin {{ {ip} . {ip} }}");
    }
    for ip in hairpin_old.difference(&hairpin_new) {
        let _ = writeln!(script, "delete element ip {table} hairpin {{ {ip} . {ip} }}");
    }
    for name in deleted_chains {
        let _ = writeln!(script, "delete chain ip {table} {name}");
    }
    Some(script)
}

/// Masquerade keeps the client's port when it is free rather than drawing one at random
/// (kube-proxy's `--random-fully`): drawn ports land on the server's TIME_WAIT sockets of
/// earlier connections, which refuse the SYN by PAWS and cost the client a one-second
/// retransmit. Measured with `krust bench services` (a new connection per request from the
/// node): random ports carried 0.6× the pod address's requests/s, kept ports 1.0×.
///
/// The whole table, as `nft -f` reads it: created empty first so the delete cannot fail on
/// the first sync, deleted, and declared again.
pub fn render(
    table: &str,
    cluster_cidr: &str,
    ports: &[ServicePort],
    filters: &[PodFilter],
) -> String {
    let mut cluster_ips = Vec::new();
    let mut node_ports = Vec::new();
    let mut no_endpoint_ips = Vec::new();
    let mut no_endpoint_node_ports = Vec::new();
    let mut spread = Vec::new();
    let mut picks = BTreeSet::new();
    let mut chains = String::new();
    let mut sets = String::new();
    // Every endpoint address: a connection from one of them DNATed back to itself
    // (hairpin) is masqueraded, or its reply would skip the NAT on the way back.
    let mut hairpin: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let mut declared = BTreeSet::new();
    for port in ports {
        let p = pieces(port, cluster_cidr);
        cluster_ips.extend(p.cluster_ips);
        node_ports.extend(p.node_ports);
        no_endpoint_ips.extend(p.no_endpoint_ips);
        no_endpoint_node_ports.extend(p.no_endpoint_node_ports);
        hairpin.extend(p.hairpin);
        spread.extend(p.spread);
        picks.extend(p.picks);
        for (name, body) in p.sets {
            if declared.insert(name.clone()) {
                let _ = writeln!(sets, "\tset {name} {{ {body} }}");
            }
        }
        for (name, rules) in p.chains {
            if !declared.insert(name.clone()) {
                continue;
            }
            let _ = writeln!(chains, "\tchain {name} {{");
            let _ = writeln!(chains, "\t\tcomment \"{}\"", port.name);
            for rule in rules {
                let _ = writeln!(chains, "\t\t{rule}");
            }
            let _ = writeln!(chains, "\t}}");
        }
    }
    let map = |name: &str, key: &str, elements: &[String]| {
        let mut out = format!("\tmap {name} {{\n\t\ttype {key} : verdict\n");
        if !elements.is_empty() {
            let _ = writeln!(out, "\t\telements = {{ {} }}", elements.join(",\n\t\t\t"));
        }
        out.push_str("\t}\n");
        out
    };
    let mut out = String::new();
    let _ = writeln!(out, "table ip {table} {{}}\ndelete table ip {table}\ntable ip {table} {{");
    out.push_str(&map("cluster-ips", "ipv4_addr . inet_proto . inet_service", &cluster_ips));
    out.push_str(&map("node-ports", "inet_proto . inet_service", &node_ports));
    out.push_str(&map(
        "no-endpoint-services",
        "ipv4_addr . inet_proto . inet_service",
        &no_endpoint_ips,
    ));
    out.push_str(&map(
        "no-endpoint-node-ports",
        "inet_proto . inet_service",
        &no_endpoint_node_ports,
    ));
    let most = picks.last().copied().unwrap_or(0);
    let mut by_index: Vec<Vec<String>> = vec![Vec::new(); most];
    for (i, element) in spread {
        if let Some(elements) = by_index.get_mut(i) {
            elements.push(element);
        }
    }
    for (i, elements) in by_index.iter().enumerate() {
        let _ = writeln!(out, "\tmap spread-{i} {{\n\t\ttype {SPREAD_TYPE}");
        if !elements.is_empty() {
            let _ = writeln!(out, "\t\telements = {{ {} }}", elements.join(",\n\t\t\t"));
        }
        out.push_str("\t}\n");
    }
    out.push_str(&sets);
    let _ = writeln!(out, "\tset hairpin {{\n\t\ttype ipv4_addr . ipv4_addr");
    if !hairpin.is_empty() {
        let pairs: Vec<String> = hairpin.iter().map(|ip| format!("{ip} . {ip}")).collect();
        let _ = writeln!(out, "\t\telements = {{ {} }}", pairs.join(", "));
    }
    out.push_str("\t}\n");
    let _ = write!(
        out,
        "\tchain services {{
\t\tip daddr . meta l4proto . th dport vmap @cluster-ips
\t\tfib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @node-ports
\t}}
\tchain nat-prerouting {{
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tjump services
\t}}
\tchain nat-output {{
\t\ttype nat hook output priority -100; policy accept;
\t\tjump services
\t}}
\tchain nat-postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tct status dnat ip saddr . ip daddr @hairpin masquerade
\t\tmeta mark & {MASQUERADE_MARK} == 0 return
\t\tmeta mark set meta mark ^ {MASQUERADE_MARK}
\t\tmasquerade
\t}}
\tchain mark-for-masquerade {{
\t\tmeta mark set meta mark | {MASQUERADE_MARK}
\t}}
\tchain reject-chain {{
\t\treject
\t}}
\tchain endpoints-check {{
\t\tip daddr . meta l4proto . th dport vmap @no-endpoint-services
\t}}
\tchain node-ports-check {{
\t\tfib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-node-ports
\t}}
\tchain filter-forward {{
\t\ttype filter hook forward priority -110; policy accept;
\t\tct state new jump endpoints-check
\t}}
\tchain filter-input {{
\t\ttype filter hook input priority -110; policy accept;
\t\tct state new jump node-ports-check
\t}}
\tchain filter-output {{
\t\ttype filter hook output priority -110; policy accept;
\t\tct state new jump endpoints-check
\t\tct state new jump node-ports-check
\t}}
"
    );
    let shared =
        (0..most).map(endpoint_chain).chain(picks.iter().map(|n| pick_chain(*n, cluster_cidr)));
    for (name, rules) in shared {
        let _ = writeln!(out, "\tchain {name} {{");
        for rule in rules {
            let _ = writeln!(out, "\t\t{rule}");
        }
        let _ = writeln!(out, "\t}}");
    }
    out.push_str(&chains);
    if !filters.is_empty() {
        out.push_str(&render_policies(filters));
    }
    out.push_str("}\n");
    out
}

/// The NetworkPolicy part of the table: a chain per isolated pod and direction, reached
/// through a verdict map by the pod's address, that returns for allowed traffic and drops
/// the rest; replies to allowed connections pass before any of it.
fn render_policies(filters: &[PodFilter]) -> String {
    let mut out = String::new();
    let mut ingress = Vec::new();
    let mut egress = Vec::new();
    let mut chains = String::new();
    for filter in filters {
        for (direction, rules, map, field) in [
            ("in", &filter.ingress, &mut ingress, "saddr"),
            ("out", &filter.egress, &mut egress, "daddr"),
        ] {
            let Some(rules) = rules else { continue };
            let name = chain(&format!("np{direction}"), &filter.ip.to_string());
            map.push(format!("{} : jump {name}", filter.ip));
            let _ = writeln!(chains, "\tchain {name} {{");
            for rule in rules {
                for line in allow_rules(rule, field) {
                    let _ = writeln!(chains, "\t\t{line}");
                }
            }
            let _ = writeln!(chains, "\t\tdrop\n\t}}");
        }
    }
    for (name, elements) in [("policy-ingress", &ingress), ("policy-egress", &egress)] {
        let _ = writeln!(out, "\tmap {name} {{\n\t\ttype ipv4_addr : verdict");
        if !elements.is_empty() {
            let _ = writeln!(out, "\t\telements = {{ {} }}", elements.join(", "));
        }
        out.push_str("\t}\n");
    }
    out.push_str(
        "\tchain policy-forward {
\t\ttype filter hook forward priority 0; policy accept;
\t\tct state established,related accept
\t\tip saddr vmap @policy-egress
\t\tip daddr vmap @policy-ingress
\t}
",
    );
    out.push_str(&chains);
    out
}

/// The nftables rules of one allowing rule, matching the peer on `field` (`saddr` for
/// ingress, `daddr` for egress).
fn allow_rules(rule: &Allow, field: &str) -> Vec<String> {
    let ports = if rule.ports.is_empty() {
        String::new()
    } else {
        let items: Vec<String> = rule
            .ports
            .iter()
            .map(|p| {
                if p.first == p.last {
                    format!("{} . {}", p.protocol.nft(), p.first)
                } else {
                    format!("{} . {}-{}", p.protocol.nft(), p.first, p.last)
                }
            })
            .collect();
        format!(" meta l4proto . th dport {{ {} }}", items.join(", "))
    };
    match &rule.peers {
        Peers::Any if ports.is_empty() => vec!["return".to_owned()],
        Peers::Any => vec![format!("{} return", ports.trim_start())],
        Peers::Some { pods, blocks } => {
            let mut lines = Vec::new();
            if !pods.is_empty() {
                let ips: Vec<String> = pods.iter().map(ToString::to_string).collect();
                lines.push(format!("ip {field} {{ {} }}{ports} return", ips.join(", ")));
            }
            for (cidr, except) in blocks {
                if except.is_empty() {
                    lines.push(format!("ip {field} {cidr}{ports} return"));
                } else {
                    lines.push(format!(
                        "ip {field} {cidr} ip {field} != {{ {} }}{ports} return",
                        except.join(", ")
                    ));
                }
            }
            lines
        }
    }
}

/// Loads `script` with `nft -f -` (one transaction).
pub async fn apply(script: &str) -> Result<(), String> {
    nft(&["-f", "-"], script).await
}

/// Runs `nft` with `args` and `script` on its standard input.
async fn nft(args: &[&str], script: &str) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("nft")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).await.map_err(|e| format!("nft: {e}"))?;
    }
    let out = child.wait_with_output().await.map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("nft: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Whether this kernel (and an `nft` binary) can hold nftables tables.
pub async fn available() -> bool {
    nft(&["list", "tables"], "").await.is_ok()
}

/// Removes the table (reset, or a proxy that is turned off).
pub async fn delete(table: &str) {
    let _ = apply(&format!("table ip {table} {{}}\ndelete table ip {table}\n")).await;
}

/// UDP has no connection to end: conntrack entries keep sending a client's packets to an
/// endpoint that is gone (or to nothing, for entries made while the Service had none) until
/// they are flushed. Returns the (service address, port, endpoint) triples to flush and the
/// service addresses whose entries all go.
pub fn stale_udp(
    before: &[ServicePort],
    after: &[ServicePort],
) -> (Vec<(Ipv4Addr, u16, Ipv4Addr)>, Vec<Ipv4Addr>) {
    let mut entries = Vec::new();
    let mut addresses = Vec::new();
    for port in after.iter().filter(|p| p.protocol == Protocol::Udp) {
        let old = before.iter().find(|b| b.name == port.name && b.protocol == port.protocol);
        let old_backends: BTreeSet<&Backend> =
            old.map(|o| o.cluster_backends.iter().collect()).unwrap_or_default();
        let new_backends: BTreeSet<&Backend> = port.cluster_backends.iter().collect();
        for gone in old_backends.difference(&new_backends) {
            for ip in &port.cluster_ips {
                entries.push((*ip, port.port, gone.ip));
            }
        }
        if old_backends.is_empty() && !new_backends.is_empty() {
            addresses.extend(port.cluster_ips.iter().copied());
        }
    }
    for port in before.iter().filter(|p| p.protocol == Protocol::Udp) {
        if !after.iter().any(|a| a.name == port.name && a.protocol == port.protocol) {
            for backend in &port.cluster_backends {
                for ip in &port.cluster_ips {
                    entries.push((*ip, port.port, backend.ip));
                }
            }
        }
    }
    (entries, addresses)
}

/// Flushes what [`stale_udp`] found with `conntrack -D` (none found is not an error).
pub async fn flush_udp(entries: &[(Ipv4Addr, u16, Ipv4Addr)], addresses: &[Ipv4Addr]) {
    let run = |args: Vec<String>| async move {
        let _ = tokio::process::Command::new("conntrack")
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await;
    };
    for (service, port, endpoint) in entries {
        run(vec![
            "-D".into(),
            "-p".into(),
            "udp".into(),
            "--orig-dst".into(),
            service.to_string(),
            "--orig-port-dst".into(),
            port.to_string(),
            "--reply-src".into(),
            endpoint.to_string(),
        ])
        .await;
    }
    for address in addresses {
        run(vec!["-D".into(), "-p".into(), "udp".into(), "--orig-dst".into(), address.to_string()])
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, protocol: Protocol, backends: &[&str]) -> ServicePort {
        let backends: Vec<Backend> =
            backends.iter().map(|ip| Backend { ip: ip.parse().expect("ip"), port: 8080 }).collect();
        let hairpin = backends.iter().map(|b| b.ip).collect();
        ServicePort {
            name: name.into(),
            protocol,
            cluster_ips: vec!["10.43.0.9".parse().expect("ip")],
            external_ips: Vec::new(),
            port: 80,
            node_port: Some(30080),
            cluster_backends: backends.clone(),
            external_backends: backends,
            external_local: false,
            affinity_seconds: None,
            hairpin,
        }
    }

    #[test]
    fn services_with_endpoints_spread_and_without_are_rejected() {
        let script = render(
            "krust_t",
            "10.42.0.0/16",
            &[
                port("ns/web:http", Protocol::Tcp, &["10.42.0.2", "10.42.1.2"]),
                port("ns/empty:80", Protocol::Tcp, &[]),
            ],
            &[],
        );
        let web = names(&port("ns/web:http", Protocol::Tcp, &[]));
        // The address picks one of two endpoints through the shared chain and map.
        assert!(script.contains("10.43.0.9 . tcp . 80 : goto pick-2"), "{script}");
        let map = |i: usize| script.split(&format!("map spread-{i} ")).nth(1).expect("map");
        assert!(map(0).starts_with("{\n\t\ttype ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service\n\t\telements = { 10.43.0.9 . tcp . 80 : 10.42.0.2 . 8080 }"), "{script}");
        assert!(
            map(1).contains("elements = { 10.43.0.9 . tcp . 80 : 10.42.1.2 . 8080 }"),
            "{script}"
        );
        assert!(
            script
                .contains("numgen random mod 2 vmap { 0 : goto endpoint-0, 1 : goto endpoint-1 }"),
            "{script}"
        );
        assert!(
            script.contains("dnat to ip daddr . meta l4proto . th dport map @spread-1"),
            "{script}"
        );
        assert!(!script.contains(&web.service), "no chain of its own: {script}");
        assert!(script.contains(&format!("tcp . 30080 : goto {}", web.external)));
        // Two endpoints: the first takes half the new connections, the second the rest.
        assert!(script.contains("meta l4proto tcp numgen random mod 2 0 dnat to 10.42.0.2:8080"));
        assert!(script.contains("meta l4proto tcp dnat to 10.42.1.2:8080"));
        assert!(script.contains("10.42.1.2 . 10.42.1.2"), "hairpin");
        assert!(script.contains("ip saddr != 10.42.0.0/16 jump mark-for-masquerade"));
        // The empty Service's address is rejected, in the other map.
        let rejected = script.split("map no-endpoint-services").nth(1).expect("map");
        assert!(rejected.contains("10.43.0.9 . tcp . 80 : goto reject-chain"));
        assert!(script.starts_with("table ip krust_t {}\ndelete table ip krust_t\n"));
    }

    #[test]
    fn client_ip_affinity_remembers_the_endpoint() {
        let mut p = port("ns/web:http", Protocol::Tcp, &["10.42.0.2"]);
        p.affinity_seconds = Some(60);
        let script = render("krust_t", "10.42.0.0/16", &[p], &[]);
        assert!(script.contains("timeout 60s"));
        assert!(script.contains("update @aff-"));
        assert!(script.contains("ip saddr @aff-"));
    }

    /// The kernel's own parser accepts every shape the renderer writes (check mode: nothing
    /// is loaded).
    #[tokio::test]
    async fn the_rendered_table_is_valid_nftables() {
        let mut affinity = port("ns/web:http", Protocol::Tcp, &["10.42.0.2", "10.42.1.2"]);
        affinity.affinity_seconds = Some(30);
        affinity.external_ips = vec!["192.0.2.7".parse().expect("ip")];
        let mut local = port("ns/local:80", Protocol::Udp, &["10.42.0.3"]);
        local.external_local = true;
        local.external_backends.clear();
        use super::super::networkpolicy::PortRange;
        let filters = [PodFilter {
            ip: "10.42.0.2".parse().expect("ip"),
            ingress: Some(vec![
                Allow {
                    peers: Peers::Some {
                        pods: ["10.42.0.3".parse().expect("ip")].into(),
                        blocks: vec![
                            ("192.0.2.0/24".into(), vec!["192.0.2.7/32".into()]),
                            ("198.51.100.0/24".into(), vec![]),
                        ],
                    },
                    ports: vec![
                        PortRange { protocol: Protocol::Tcp, first: 80, last: 80 },
                        PortRange { protocol: Protocol::Udp, first: 8000, last: 8080 },
                    ],
                },
                Allow { peers: Peers::Any, ports: vec![] },
            ]),
            egress: Some(vec![Allow {
                peers: Peers::Any,
                ports: vec![PortRange { protocol: Protocol::Udp, first: 53, last: 53 }],
            }]),
        }];
        let script = render(
            "krust_check",
            "10.42.0.0/16",
            &[affinity, local, port("ns/empty:80", Protocol::Sctp, &[])],
            &filters,
        );
        // Check mode: the kernel's parser reads the batch, nothing is loaded.
        if let Err(e) = nft(&["-c", "-f", "-"], &script).await {
            panic!("{e}\n{script}");
        }
    }

    /// An incremental sync touches only the changed Service, and the kernel's parser accepts
    /// it on top of the full table (check mode: the batch is one transaction).
    #[tokio::test]
    async fn incremental_syncs_touch_only_what_changed() {
        // Each with an address and node port of its own.
        let distinct = |mut p: ServicePort, i: u8| {
            p.cluster_ips = vec![Ipv4Addr::new(10, 43, 0, 20 + i)];
            p.node_port = Some(30100 + u16::from(i));
            p
        };
        let old = vec![
            distinct(port("ns/a:80", Protocol::Tcp, &["10.42.0.2", "10.42.0.3"]), 0),
            distinct(port("ns/b:80", Protocol::Tcp, &["10.42.0.4"]), 1),
            distinct(port("ns/c:80", Protocol::Tcp, &["10.42.0.6"]), 2),
        ];
        let mut new = old.clone();
        new[0].cluster_backends.pop();
        new[0].external_backends.pop();
        new[0].hairpin.pop();
        new[1].cluster_backends.clear();
        new[1].external_backends.clear();
        new[1].hairpin.clear();
        new.remove(2);
        new.push(distinct(port("ns/d:80", Protocol::Tcp, &["10.42.0.5"]), 3));
        let step = incremental("krust_check", "10.42.0.0/16", &old, &new).expect("incremental");
        let a = names(&old[0]);
        assert!(step.contains(&format!("flush chain ip krust_check {}", a.external)), "{step}");
        // a lost its second endpoint: its address goes through the one-endpoint chain.
        assert!(step.contains("delete element ip krust_check spread-1 { 10.43.0.20 . tcp . 80 }"));
        assert!(
            step.contains("delete element ip krust_check cluster-ips { 10.43.0.20 . tcp . 80 }")
        );
        assert!(step.contains(
            "add element ip krust_check cluster-ips { 10.43.0.20 . tcp . 80 : goto pick-1 }"
        ));
        assert!(!step.contains("delete chain ip krust_check pick-"), "shared: {step}");
        assert!(!step.contains("10.42.0.4 . 10.42.0.4 }\nadd"), "{step}");
        assert!(step.contains("goto reject-chain"), "b has no endpoints now: {step}");
        assert!(step.contains("delete element ip krust_check hairpin { 10.42.0.3 . 10.42.0.3 }"));
        // c's node port chain goes.
        assert!(step.contains(&format!("delete chain ip krust_check {}", names(&old[2]).external)));
        assert_eq!(incremental("krust_check", "10.42.0.0/16", &new, &new).as_deref(), Some(""));
        // Loaded for real, one after the other, in a network namespace of its own (which
        // goes with the process): nft reads the first table back from the kernel to apply
        // the step, which check mode never does.
        let dir = tempfile::tempdir().expect("tempdir");
        let full = dir.path().join("full.nft");
        let incremental = dir.path().join("step.nft");
        std::fs::write(&full, render("krust_check", "10.42.0.0/16", &old, &[])).expect("write");
        std::fs::write(&incremental, &step).expect("write");
        let out = tokio::process::Command::new("unshare")
            .args([
                "--net",
                "--",
                "sh",
                "-c",
                "nft -f \"$1\" && nft -f \"$2\" && nft list table ip krust_check",
                "sh",
            ])
            .arg(&full)
            .arg(&incremental)
            .output()
            .await
            .expect("unshare");
        let listed = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}\n{step}", String::from_utf8_lossy(&out.stderr));
        assert!(
            listed.contains("10.43.0.23 . tcp . 80 : 10.42.0.5 . 8080"),
            "d's endpoint: {listed}"
        );
        assert!(!listed.contains("10.43.0.22"), "c is gone: {listed}");
    }

    #[test]
    fn removed_udp_endpoints_are_flushed() {
        let before = [port("ns/dns:53", Protocol::Udp, &["10.42.0.2", "10.42.0.3"])];
        let after = [port("ns/dns:53", Protocol::Udp, &["10.42.0.3"])];
        let (entries, addresses) = stale_udp(&before, &after);
        assert_eq!(
            entries,
            [("10.43.0.9".parse().expect("ip"), 80, "10.42.0.2".parse().expect("ip"))]
        );
        assert!(addresses.is_empty());
        let (_, addresses) = stale_udp(&[port("ns/dns:53", Protocol::Udp, &[])], &after);
        assert_eq!(addresses, ["10.43.0.9".parse::<Ipv4Addr>().expect("ip")]);
    }
}
