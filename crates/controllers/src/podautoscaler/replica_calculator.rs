//! Pure: how many replicas a resource metric asks for, from the target's pods and their
//! metrics (upstream's replica calculator). Values are in milli-units (millicores, and
//! milli-bytes for memory) as upstream's metrics client reports them.
//!
//! Pods are grouped first: deleted or failed pods are ignored, pending ones are unready,
//! pods without a sample are missing, and for CPU a pod still starting (within the CPU
//! initialisation period) whose sample may predate its readiness counts as unready. The
//! ratio of usage to target decides; within the tolerance nothing changes. When some pods are
//! missing or unready the ratio is computed again assuming the worst for the direction it
//! points to (missing pods use nothing on a scale-up and their whole request on a
//! scale-down, unready pods nothing on a scale-up), and a change of direction or a result
//! within the tolerance keeps the current count.

use std::collections::{BTreeMap, BTreeSet};

/// What the calculator knows of one pod.
#[derive(Debug, Clone, Default)]
pub struct PodFacts {
    /// Being deleted or Failed: left out altogether.
    pub ignored: bool,
    /// Pending.
    pub pending: bool,
    /// `status.startTime`, in seconds since the epoch.
    pub start_time: Option<i64>,
    /// The Ready condition: whether true, and when it last changed (seconds).
    pub ready: Option<(bool, i64)>,
    /// The resource's request per container (milli-units); a container without one is
    /// `None`.
    pub requests: BTreeMap<String, Option<i64>>,
}

/// One pod's sample.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Usage, milli-units.
    pub value: i64,
    /// When the sample was taken (seconds since the epoch).
    pub timestamp: i64,
    /// The window it covers, in seconds.
    pub window: i64,
}

/// The controller's timing knobs (upstream's flags).
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// Changes smaller than this share are not made (0.1).
    pub tolerance: f64,
    /// How long after its start a pod's CPU samples may be distorted (5 min).
    pub cpu_initialization_period: i64,
    /// How long after its start a pod's readiness may still be the initial one (30 s).
    pub initial_readiness_delay: i64,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning { tolerance: 0.1, cpu_initialization_period: 300, initial_readiness_delay: 30 }
    }
}

/// What the target is compared with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// A percentage of the pods' requests.
    Utilization(i32),
    /// An average value per pod, milli-units.
    AverageValue(i64),
}

/// A metric's proposal.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    /// Replicas asked for.
    pub replicas: i32,
    /// The current utilisation, percent (utilisation targets only).
    pub utilization: Option<i32>,
    /// The current average value per pod, milli-units.
    pub average: i64,
    /// The newest sample's time.
    pub timestamp: i64,
}

struct Groups {
    ready: usize,
    unready: BTreeSet<String>,
    missing: BTreeSet<String>,
    ignored: BTreeSet<String>,
}

fn group(
    pods: &BTreeMap<String, PodFacts>,
    samples: &BTreeMap<String, Sample>,
    cpu: bool,
    now: i64,
    tuning: Tuning,
) -> Groups {
    let mut groups = Groups {
        ready: 0,
        unready: BTreeSet::new(),
        missing: BTreeSet::new(),
        ignored: BTreeSet::new(),
    };
    for (name, pod) in pods {
        if pod.ignored {
            groups.ignored.insert(name.clone());
            continue;
        }
        if pod.pending {
            groups.unready.insert(name.clone());
            continue;
        }
        let Some(sample) = samples.get(name) else {
            groups.missing.insert(name.clone());
            continue;
        };
        if cpu {
            let unready = match (pod.ready, pod.start_time) {
                (None, _) | (_, None) => true,
                (Some((ready, changed)), Some(started)) => {
                    if started + tuning.cpu_initialization_period > now {
                        // Still starting: a sample from before it turned ready (one window
                        // after) may be distorted.
                        !ready || sample.timestamp < changed + sample.window
                    } else {
                        // Unready and never ready since its start.
                        !ready && started + tuning.initial_readiness_delay > changed
                    }
                }
            };
            if unready {
                groups.unready.insert(name.clone());
                continue;
            }
        }
        groups.ready += 1;
    }
    groups
}

/// Requests per pod for `container` (every container when `None`); an error names a
/// container without one, as upstream's message does.
fn requests(
    pods: &BTreeMap<String, PodFacts>,
    container: Option<&str>,
    resource: &str,
) -> Result<BTreeMap<String, i64>, String> {
    let mut out = BTreeMap::new();
    for (name, pod) in pods {
        let mut sum = 0;
        for (c, request) in &pod.requests {
            if container.is_some_and(|want| want != c) {
                continue;
            }
            match request {
                Some(r) => sum += r,
                None => {
                    return Err(format!(
                        "missing request for {resource} in container {c} of Pod {name}"
                    ));
                }
            }
        }
        out.insert(name.clone(), sum);
    }
    Ok(out)
}

/// (ratio to the target, utilisation percent, average per pod) of `metrics` against their
/// pods' `requests`.
fn utilization_ratio(
    metrics: &BTreeMap<String, Sample>,
    requests: &BTreeMap<String, i64>,
    target: i32,
) -> Result<(f64, i32, i64), String> {
    let (mut used, mut requested, mut counted) = (0i64, 0i64, 0i64);
    for (name, m) in metrics {
        if let Some(r) = requests.get(name) {
            used += m.value;
            requested += r;
            counted += 1;
        }
    }
    if requested == 0 {
        return Err("no metrics returned matched known pods".into());
    }
    let utilization = i32::try_from(used.saturating_mul(100) / requested).unwrap_or(i32::MAX);
    Ok((f64::from(utilization) / f64::from(target.max(1)), utilization, used / counted.max(1)))
}

fn value_ratio(metrics: &BTreeMap<String, Sample>, target: i64) -> (f64, i64) {
    let total: i64 = metrics.values().map(|m| m.value).sum();
    let average = total / i64::try_from(metrics.len().max(1)).unwrap_or(1);
    (average as f64 / target.max(1) as f64, average)
}

fn ceil_i32(x: f64) -> i32 {
    let c = x.ceil();
    if c >= f64::from(i32::MAX) { i32::MAX } else { c as i32 }
}

/// The replicas a resource metric asks for. `container` narrows it to one container
/// (container resource metrics).
#[allow(clippy::too_many_arguments)]
pub fn resource_replicas(
    current: i32,
    target: Target,
    resource: &str,
    container: Option<&str>,
    pods: &BTreeMap<String, PodFacts>,
    samples: &BTreeMap<String, Sample>,
    now: i64,
    tuning: Tuning,
) -> Result<Proposal, String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let groups = group(pods, samples, resource == "cpu", now, tuning);
    let mut metrics: BTreeMap<String, Sample> = samples
        .iter()
        .filter(|(name, _)| {
            pods.contains_key(*name)
                && !groups.ignored.contains(*name)
                && !groups.unready.contains(*name)
        })
        .map(|(n, s)| (n.clone(), *s))
        .collect();
    if metrics.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let timestamp = metrics.values().map(|m| m.timestamp).max().unwrap_or(now);
    let requests = match target {
        Target::Utilization(_) => requests(pods, container, resource)?,
        Target::AverageValue(_) => BTreeMap::new(),
    };
    let ratio_of = |metrics: &BTreeMap<String, Sample>| -> Result<(f64, Option<i32>, i64), String> {
        match target {
            Target::Utilization(t) => {
                let (r, u, a) = utilization_ratio(metrics, &requests, t)?;
                Ok((r, Some(u), a))
            }
            Target::AverageValue(v) => {
                let (r, a) = value_ratio(metrics, v);
                Ok((r, None, a))
            }
        }
    };
    let (ratio, utilization, average) = ratio_of(&metrics)?;
    let proposal = |replicas| Proposal { replicas, utilization, average, timestamp };
    let scale_up_with_unready = !groups.unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && groups.missing.is_empty() {
        if (1.0 - ratio).abs() <= tuning.tolerance {
            return Ok(proposal(current));
        }
        return Ok(proposal(ceil_i32(ratio * groups.ready as f64)));
    }
    // Assume the worst for the direction the ratio points to.
    if ratio < 1.0 {
        for name in &groups.missing {
            let value = match target {
                // A missing pod uses its whole request (or the target, if higher).
                Target::Utilization(t) => {
                    requests.get(name).copied().unwrap_or(0) * i64::from(t.max(100)) / 100
                }
                Target::AverageValue(v) => v,
            };
            metrics.insert(name.clone(), Sample { value, timestamp, window: 0 });
        }
    } else if ratio > 1.0 {
        for name in &groups.missing {
            metrics.insert(name.clone(), Sample { value: 0, timestamp, window: 0 });
        }
    }
    if scale_up_with_unready {
        for name in &groups.unready {
            metrics.insert(name.clone(), Sample { value: 0, timestamp, window: 0 });
        }
    }
    let (new_ratio, _, _) = ratio_of(&metrics)?;
    if (1.0 - new_ratio).abs() <= tuning.tolerance
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok(proposal(current));
    }
    let replicas = ceil_i32(new_ratio * metrics.len() as f64);
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok(proposal(current));
    }
    Ok(proposal(replicas))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 10_000;

    fn running(request: Option<i64>) -> PodFacts {
        PodFacts {
            start_time: Some(NOW - 3600),
            ready: Some((true, NOW - 3500)),
            requests: BTreeMap::from([("c".to_owned(), request)]),
            ..Default::default()
        }
    }

    fn pods(list: &[(&str, PodFacts)]) -> BTreeMap<String, PodFacts> {
        list.iter().map(|(n, p)| ((*n).to_owned(), p.clone())).collect()
    }

    fn samples(list: &[(&str, i64)]) -> BTreeMap<String, Sample> {
        list.iter()
            .map(|(n, v)| ((*n).to_owned(), Sample { value: *v, timestamp: NOW - 5, window: 15 }))
            .collect()
    }

    fn cpu(
        current: i32,
        target: Target,
        p: &BTreeMap<String, PodFacts>,
        s: &BTreeMap<String, Sample>,
    ) -> Result<Proposal, String> {
        resource_replicas(current, target, "cpu", None, p, s, NOW, Tuning::default())
    }

    #[test]
    fn utilisation_above_target_scales_by_the_ratio() {
        // One pod at 200m of a 100m request against 50%: 400% of target, 4 replicas.
        let p = pods(&[("a", running(Some(100)))]);
        let got = cpu(1, Target::Utilization(50), &p, &samples(&[("a", 200)])).expect("proposal");
        assert_eq!((got.replicas, got.utilization, got.average), (4, Some(200), 200));
        // Three pods at 54% of a 50% target: within the tolerance, nothing changes.
        let p = pods(&[
            ("a", running(Some(100))),
            ("b", running(Some(100))),
            ("c", running(Some(100))),
        ]);
        let got = cpu(3, Target::Utilization(50), &p, &samples(&[("a", 54), ("b", 54), ("c", 54)]))
            .expect("proposal");
        assert_eq!(got.replicas, 3);
        // At 10%: one pod is enough.
        let got = cpu(3, Target::Utilization(50), &p, &samples(&[("a", 10), ("b", 10), ("c", 10)]))
            .expect("proposal");
        assert_eq!(got.replicas, 1);
    }

    #[test]
    fn a_missing_request_or_no_pods_or_no_metrics_is_an_error() {
        let p = pods(&[("a", running(None))]);
        let err =
            cpu(1, Target::Utilization(50), &p, &samples(&[("a", 1)])).expect_err("no request");
        assert_eq!(err, "missing request for cpu in container c of Pod a");
        assert!(cpu(1, Target::Utilization(50), &BTreeMap::new(), &BTreeMap::new()).is_err());
        let p = pods(&[("a", running(Some(100)))]);
        let err = cpu(1, Target::Utilization(50), &p, &BTreeMap::new()).expect_err("no metrics");
        assert!(err.contains("did not receive metrics"), "{err}");
    }

    #[test]
    fn missing_pods_are_assumed_the_worst_for_the_direction() {
        // Scale-down: a and b idle, c missing (assumed at its full request): the ratio is
        // (0 + 0 + 100) / 300 = 33% against 50%: 0.66 → ceil(0.66 × 3) = 2.
        let p = pods(&[
            ("a", running(Some(100))),
            ("b", running(Some(100))),
            ("c", running(Some(100))),
        ]);
        let got = cpu(3, Target::Utilization(50), &p, &samples(&[("a", 0), ("b", 0)])).expect("ok");
        assert_eq!(got.replicas, 2);
        // Scale-up: a at 200%, b missing (assumed idle): (200 + 0) / 200 = 100% of a 50%
        // target → ceil(2 × 2) = 4.
        let p = pods(&[("a", running(Some(100))), ("b", running(Some(100)))]);
        let got = cpu(2, Target::Utilization(50), &p, &samples(&[("a", 200)])).expect("ok");
        assert_eq!(got.replicas, 4);
    }

    #[test]
    fn a_starting_pod_counts_as_unready_on_a_scale_up() {
        // b started a minute ago and its sample predates its readiness.
        let mut starting = running(Some(100));
        starting.start_time = Some(NOW - 60);
        starting.ready = Some((true, NOW - 2));
        let p = pods(&[("a", running(Some(100))), ("b", starting)]);
        // a at 100% of its request against 50%: ratio 2 from a alone; b (unready) is assumed
        // idle: (100 + 0) / 200 = 50% → ratio 1.0 → no change.
        let got =
            cpu(2, Target::Utilization(50), &p, &samples(&[("a", 100), ("b", 300)])).expect("ok");
        assert_eq!(got.replicas, 2);
        // Pending pods are unready too.
        let pending = PodFacts { pending: true, ..running(Some(100)) };
        let p = pods(&[("a", running(Some(100))), ("b", pending)]);
        let got = cpu(2, Target::Utilization(50), &p, &samples(&[("a", 300)])).expect("ok");
        assert_eq!(got.replicas, 6, "(300 + 0) / 200 = 150%, 3× the 50% target → ceil(3 × 2)");
    }

    #[test]
    fn average_value_targets_compare_the_mean() {
        // Memory, 2 pods averaging 300Mi against 100Mi: 3× → 6.
        let p = pods(&[("a", running(Some(1))), ("b", running(Some(1)))]);
        let mib = 1024 * 1024 * 1000;
        let got = resource_replicas(
            2,
            Target::AverageValue(100 * mib),
            "memory",
            None,
            &p,
            &samples(&[("a", 200 * mib), ("b", 400 * mib)]),
            NOW,
            Tuning::default(),
        )
        .expect("ok");
        assert_eq!((got.replicas, got.utilization, got.average), (6, None, 300 * mib));
    }
}
