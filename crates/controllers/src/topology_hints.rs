//! Topology hints on EndpointSlice endpoints (`hints.forZones`), which let a node's service
//! proxy keep a Service's traffic in its own zone.
//!
//! Two ways to ask for them, as upstream:
//! - `spec.trafficDistribution: PreferClose`: each ready endpoint is hinted for its own
//!   zone; a proxy whose zone has none uses them all.
//! - the annotation `service.kubernetes.io/topology-mode: Auto` (or the older
//!   `service.kubernetes.io/topology-aware-hints: auto`): endpoints are shared out among the
//!   zones in proportion to the zones' allocatable CPU, moving some to zones that lack them,
//!   and no hints at all are given when that cannot be done without overloading a zone
//!   (upstream's safeguards: every endpoint has a known zone, at least as many endpoints as
//!   zones, no zone's endpoints expected to carry more than 20% above the average).
//!
//! Pure: the controller gives it the endpoints' zones and the zones' CPU.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;

/// The annotation of topology-aware routing.
pub const TOPOLOGY_MODE: &str = "service.kubernetes.io/topology-mode";
/// Its name before Kubernetes 1.27.
pub const TOPOLOGY_AWARE_HINTS: &str = "service.kubernetes.io/topology-aware-hints";

/// How much above the average a zone's endpoints may be expected to carry.
const OVERLOAD_THRESHOLD: f64 = 0.2;

/// How a Service wants its endpoints hinted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No hints.
    None,
    /// Each endpoint for its own zone.
    PreferClose,
    /// Shared out by the zones' CPU, with the safeguards.
    Auto,
}

/// What `service` asks for. `trafficDistribution` wins over the annotation, as upstream.
pub fn mode(service: &Service) -> Mode {
    let spec = service.spec.as_ref();
    if spec.and_then(|s| s.traffic_distribution.as_deref()).is_some_and(|t| {
        // `PreferSameZone` is the newer name of the same behaviour.
        t == "PreferClose" || t == "PreferSameZone"
    }) {
        return Mode::PreferClose;
    }
    let annotations = service.metadata.annotations.as_ref();
    let annotation =
        annotations.and_then(|a| a.get(TOPOLOGY_MODE).or_else(|| a.get(TOPOLOGY_AWARE_HINTS)));
    match annotation {
        Some(value) if value.eq_ignore_ascii_case("auto") => Mode::Auto,
        _ => Mode::None,
    }
}

/// The zone each endpoint is hinted for, in the order of `endpoint_zones` (the ready
/// endpoints' zones), or `None` when no endpoint gets a hint. `zone_cpu` is the allocatable
/// CPU of each zone's nodes.
pub fn allocate(
    mode: Mode,
    endpoint_zones: &[Option<String>],
    zone_cpu: &BTreeMap<String, f64>,
) -> Option<Vec<String>> {
    match mode {
        Mode::None => None,
        Mode::PreferClose => endpoint_zones.iter().cloned().collect(),
        Mode::Auto => share_out(endpoint_zones, zone_cpu),
    }
}

/// Upstream's "Auto" allocation.
fn share_out(
    endpoint_zones: &[Option<String>],
    zone_cpu: &BTreeMap<String, f64>,
) -> Option<Vec<String>> {
    let total: f64 = zone_cpu.values().sum();
    if endpoint_zones.is_empty() || total <= 0.0 || endpoint_zones.len() < zone_cpu.len() {
        return None;
    }
    // Every endpoint in a zone with known CPU.
    let mut hints: Vec<String> = Vec::with_capacity(endpoint_zones.len());
    for zone in endpoint_zones {
        let zone = zone.as_ref().filter(|z| zone_cpu.contains_key(*z))?;
        hints.push(zone.clone());
    }
    let n = endpoint_zones.len();
    // What each zone should get: its CPU's share of the endpoints, at least one, rounded by
    // largest remainder so the counts add up to n.
    let expected: BTreeMap<&String, f64> =
        zone_cpu.iter().map(|(z, cpu)| (z, n as f64 * cpu / total)).collect();
    let mut target: BTreeMap<&String, usize> =
        expected.iter().map(|(z, e)| (*z, (e.floor() as usize).max(1))).collect();
    let mut assigned: usize = target.values().sum();
    let mut by_remainder: Vec<(&String, f64)> =
        expected.iter().map(|(z, e)| (*z, e - e.floor())).collect();
    by_remainder.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
    for (zone, _) in by_remainder.iter().cycle().take(zone_cpu.len() * 2) {
        if assigned >= n {
            break;
        }
        if let Some(t) = target.get_mut(zone) {
            *t += 1;
            assigned += 1;
        }
    }
    if assigned != n {
        return None;
    }
    // Zones with more endpoints than their target give the surplus to those with fewer.
    let mut have: BTreeMap<&String, usize> = BTreeMap::new();
    for zone in &hints {
        let key = zone_cpu.get_key_value(zone).map(|(k, _)| k)?;
        *have.entry(key).or_default() += 1;
    }
    for hint in &mut hints {
        let from = zone_cpu.get_key_value(hint.as_str()).map(|(k, _)| k)?;
        if have.get(from).copied().unwrap_or(0) <= target.get(from).copied().unwrap_or(0) {
            continue;
        }
        let Some(to) =
            target.iter().find(|(z, t)| have.get(*z).copied().unwrap_or(0) < **t).map(|(z, _)| *z)
        else {
            break;
        };
        *have.entry(from).or_default() -= 1;
        *have.entry(to).or_default() += 1;
        *hint = to.clone();
    }
    // The safeguard: no zone's endpoints carry more than 20% above the average.
    for (zone, e) in &expected {
        let got = have.get(zone).copied().unwrap_or(0);
        if got == 0 || *e / got as f64 > 1.0 + OVERLOAD_THRESHOLD {
            return None;
        }
    }
    Some(hints)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zones(list: &[&str]) -> Vec<Option<String>> {
        list.iter().map(|z| (!z.is_empty()).then(|| (*z).to_owned())).collect()
    }

    fn cpu(list: &[(&str, f64)]) -> BTreeMap<String, f64> {
        list.iter().map(|(z, c)| ((*z).to_owned(), *c)).collect()
    }

    #[test]
    fn the_mode_comes_from_traffic_distribution_or_the_annotation() {
        let service = |v: serde_json::Value| -> Service { serde_json::from_value(v).unwrap() };
        assert_eq!(mode(&service(serde_json::json!({}))), Mode::None);
        assert_eq!(
            mode(&service(serde_json::json!({"spec": {"trafficDistribution": "PreferClose"}}))),
            Mode::PreferClose
        );
        assert_eq!(
            mode(&service(
                serde_json::json!({"metadata": {"annotations": {TOPOLOGY_MODE: "Auto"}}})
            )),
            Mode::Auto
        );
        assert_eq!(
            mode(&service(
                serde_json::json!({"metadata": {"annotations": {TOPOLOGY_AWARE_HINTS: "auto"}}})
            )),
            Mode::Auto
        );
        assert_eq!(
            mode(&service(
                serde_json::json!({"metadata": {"annotations": {TOPOLOGY_MODE: "Disabled"}}})
            )),
            Mode::None
        );
    }

    #[test]
    fn balanced_zones_keep_their_own_endpoints() {
        let hints =
            allocate(Mode::Auto, &zones(&["a", "b", "a", "b"]), &cpu(&[("a", 4.0), ("b", 4.0)]));
        assert_eq!(hints.unwrap(), ["a", "b", "a", "b"]);
    }

    #[test]
    fn a_zone_short_of_endpoints_gets_some_from_another() {
        // Zone b has half the CPU and no endpoint of its own.
        let hints =
            allocate(Mode::Auto, &zones(&["a", "a", "a", "a"]), &cpu(&[("a", 2.0), ("b", 2.0)]))
                .unwrap();
        assert_eq!(hints.iter().filter(|z| *z == "b").count(), 2, "{hints:?}");
    }

    #[test]
    fn the_safeguards_give_no_hints() {
        let two = cpu(&[("a", 2.0), ("b", 2.0)]);
        // Fewer endpoints than zones.
        assert_eq!(allocate(Mode::Auto, &zones(&["a"]), &two), None);
        // An endpoint without a zone, or in a zone no node is in.
        assert_eq!(allocate(Mode::Auto, &zones(&["a", ""]), &two), None);
        assert_eq!(allocate(Mode::Auto, &zones(&["a", "c"]), &two), None);
        // Two thirds of the CPU in one zone, one endpoint per zone: zone a's endpoint would
        // carry a third more than the average.
        assert_eq!(
            allocate(Mode::Auto, &zones(&["a", "b"]), &cpu(&[("a", 4.0), ("b", 2.0)])),
            None
        );
    }

    #[test]
    fn prefer_close_hints_each_endpoint_for_its_zone() {
        let hints = allocate(Mode::PreferClose, &zones(&["a", "b", "b"]), &BTreeMap::new());
        assert_eq!(hints.unwrap(), ["a", "b", "b"]);
        assert_eq!(allocate(Mode::PreferClose, &zones(&["a", ""]), &BTreeMap::new()), None);
        assert_eq!(allocate(Mode::None, &zones(&["a"]), &BTreeMap::new()), None);
    }
}
