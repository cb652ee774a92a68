//! The disruption controller: each PodDisruptionBudget's status — `expectedPods`,
//! `currentHealthy` (selected pods that are Ready and not being deleted), `desiredHealthy`
//! (from `minAvailable`, or `expectedPods` less `maxUnavailable`, percentages rounded up),
//! `disruptionsAllowed`, the `DisruptionAllowed` condition and `observedGeneration` —
//! which `kubectl get pdb` and `kubectl drain` read. As upstream, an integer `minAvailable`
//! expects the pods that exist; a percentage or `maxUnavailable` expects what the pods'
//! controllers want (their replicas), so missing pods count as unavailable.
//!
//! [`budget`] is the pure computation; the sync reads the pods and their controllers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::ReplicationController;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};

use crate::Error;
use crate::cached_pod::CachedPod;
use crate::informer::{self, Change, Informer, key_of};
use crate::queue::{Queue, Requeue, run_workers};
use crate::replicaset::is_ready;
use crate::selectors::label_selector_matches;

fn scaled(value: &IntOrString, total: i32) -> i32 {
    match value {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => {
            let percent: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            i32::try_from((percent * i64::from(total) + 99) / 100).unwrap_or(i32::MAX)
        }
    }
}

/// (expected, desired healthy) for a budget, given the selected pods' count and what their
/// controllers want.
pub fn budget(pdb: &PodDisruptionBudget, pods: i32, controllers_want: i32) -> (i32, i32) {
    let spec = pdb.spec.clone().unwrap_or_default();
    match (&spec.min_available, &spec.max_unavailable) {
        (Some(IntOrString::Int(min)), _) => (pods, *min),
        (Some(percent @ IntOrString::String(_)), _) => {
            (controllers_want, scaled(percent, controllers_want))
        }
        (None, Some(max)) => {
            (controllers_want, (controllers_want - scaled(max, controllers_want)).max(0))
        }
        (None, None) => (pods, 0),
    }
}

/// The status of a budget from its counts.
pub fn status_of(
    pdb: &PodDisruptionBudget,
    expected: i32,
    healthy: i32,
    desired: i32,
    now: &Time,
) -> PodDisruptionBudgetStatus {
    let current = pdb.status.clone().unwrap_or_default();
    let allowed = (healthy - desired).max(0);
    let (status, reason) =
        if allowed > 0 { ("True", "SufficientPods") } else { ("False", "InsufficientPods") };
    let previous = current.conditions.iter().flatten().find(|c| c.type_ == "DisruptionAllowed");
    let condition = Condition {
        type_: "DisruptionAllowed".into(),
        status: status.into(),
        reason: reason.into(),
        message: String::new(),
        observed_generation: pdb.metadata.generation,
        last_transition_time: previous
            .filter(|c| c.status == status)
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone()),
    };
    PodDisruptionBudgetStatus {
        conditions: Some(vec![condition]),
        current_healthy: Some(healthy),
        desired_healthy: Some(desired),
        // Evictions the server recorded are its to clear.
        disrupted_pods: current.disrupted_pods,
        disruptions_allowed: Some(allowed),
        expected_pods: Some(expected),
        observed_generation: pdb.metadata.generation,
    }
}

/// The disruption controller.
pub struct DisruptionController {
    client: kube::Client,
    budgets: Arc<Informer<PodDisruptionBudget>>,
    pods: Arc<Informer<CachedPod>>,
    replica_sets: Arc<Informer<ReplicaSet>>,
    deployments: Arc<Informer<Deployment>>,
    stateful_sets: Arc<Informer<StatefulSet>>,
    replication_controllers: Arc<Informer<ReplicationController>>,
    queue: Arc<Queue>,
}

impl std::fmt::Debug for DisruptionController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DisruptionController").finish_non_exhaustive()
    }
}

/// The informers the disruption controller reads.
#[derive(Debug)]
pub struct Sources {
    /// PodDisruptionBudgets.
    pub budgets: Arc<Informer<PodDisruptionBudget>>,
    /// Pods.
    pub pods: Arc<Informer<CachedPod>>,
    /// ReplicaSets (and through them Deployments).
    pub replica_sets: Arc<Informer<ReplicaSet>>,
    /// Deployments.
    pub deployments: Arc<Informer<Deployment>>,
    /// StatefulSets.
    pub stateful_sets: Arc<Informer<StatefulSet>>,
    /// ReplicationControllers.
    pub replication_controllers: Arc<Informer<ReplicationController>>,
}

impl DisruptionController {
    /// Hooks the controller to the informers (before they start).
    pub fn new(client: kube::Client, sources: Sources) -> Arc<DisruptionController> {
        let controller = Arc::new(DisruptionController {
            client,
            budgets: sources.budgets.clone(),
            pods: sources.pods.clone(),
            replica_sets: sources.replica_sets,
            deployments: sources.deployments,
            stateful_sets: sources.stateful_sets,
            replication_controllers: sources.replication_controllers,
            queue: Queue::new(),
        });
        let this = Arc::downgrade(&controller);
        sources.budgets.on_change(move |change| {
            let Some(c) = this.upgrade() else { return };
            let (Change::Added(b) | Change::Updated(_, b) | Change::Deleted(b)) = change;
            c.queue.add(key_of(b.as_ref()));
        });
        let this = Arc::downgrade(&controller);
        sources.pods.on_change(move |change| {
            let Some(c) = this.upgrade() else { return };
            let (old, pod) = match change {
                Change::Added(p) | Change::Deleted(p) => (None, *p),
                Change::Updated(o, p) => (Some(*o), *p),
            };
            let relevant = old.is_none_or(|o| {
                o.metadata.labels != pod.metadata.labels
                    || is_ready(o) != is_ready(pod)
                    || o.metadata.deletion_timestamp != pod.metadata.deletion_timestamp
            });
            if relevant {
                c.enqueue_selecting(pod, old);
            }
        });
        controller
    }

    fn enqueue_selecting(&self, pod: &CachedPod, old: Option<&Arc<CachedPod>>) {
        let ns = pod.namespace().unwrap_or_default();
        for pdb in self.budgets.list() {
            if pdb.namespace().as_deref() != Some(ns.as_str()) {
                continue;
            }
            let Some(selector) = pdb.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
                continue;
            };
            if label_selector_matches(selector, pod.labels())
                || old.is_some_and(|o| label_selector_matches(selector, o.labels()))
            {
                self.queue.add_batched(key_of(pdb.as_ref()), Duration::from_millis(100));
            }
        }
    }

    /// Keeps budgets' status until dropped.
    pub async fn run(self: Arc<Self>, workers: usize) {
        self.budgets.wait_synced().await;
        self.pods.wait_synced().await;
        let this = self.clone();
        run_workers(self.queue.clone(), workers, "disruption", move |key| {
            let this = this.clone();
            async move { this.sync(&key).await }
        })
        .await;
    }

    /// What a pod's controller wants (its replicas; a ReplicaSet of a Deployment, the
    /// Deployment's), keyed by that controller's UID so several pods count it once.
    fn controller_scale(&self, pod: &CachedPod) -> Option<(String, i32)> {
        let owner = informer::controller_of(pod)?;
        let ns = pod.namespace().unwrap_or_default();
        let key = format!("{ns}/{}", owner.name);
        match owner.kind.as_str() {
            "ReplicaSet" => {
                let rs = self.replica_sets.get(&key)?;
                if let Some(d) =
                    informer::controller_of(rs.as_ref()).filter(|d| d.kind == "Deployment")
                    && let Some(deployment) = self.deployments.get(&format!("{ns}/{}", d.name))
                {
                    let replicas = deployment.spec.replicas.unwrap_or(1);
                    return Some((d.uid.clone(), replicas));
                }
                Some((owner.uid.clone(), rs.spec.replicas.unwrap_or(1)))
            }
            "StatefulSet" => {
                let set = self.stateful_sets.get(&key)?;
                Some((owner.uid.clone(), set.spec.replicas.unwrap_or(1)))
            }
            "ReplicationController" => {
                let rc = self.replication_controllers.get(&key)?;
                Some((owner.uid.clone(), rc.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)))
            }
            _ => None,
        }
    }

    async fn sync(&self, key: &str) -> Result<Requeue, Error> {
        let Some(pdb) = self.budgets.get(key) else { return Ok(Requeue::No) };
        let namespace = pdb.namespace().unwrap_or_default();
        let selector = pdb.spec.as_ref().and_then(|s| s.selector.clone()).unwrap_or_default();
        let selected: Vec<Arc<CachedPod>> = self
            .pods
            .list()
            .into_iter()
            .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
            .filter(|p| label_selector_matches(&selector, p.labels()))
            .collect();
        let healthy = selected
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
            .count() as i32;
        // Controllers counted once each; a pod without a known controller counts as one.
        let mut wants: HashMap<String, i32> = HashMap::new();
        let mut uncontrolled = 0;
        for pod in &selected {
            match self.controller_scale(pod) {
                Some((uid, replicas)) => {
                    wants.insert(uid, replicas);
                }
                None => uncontrolled += 1,
            }
        }
        let controllers_want = wants.values().sum::<i32>() + uncontrolled;
        let (expected, desired) = budget(&pdb, selected.len() as i32, controllers_want);
        let now = Time(jiff::Timestamp::now());
        let status = status_of(&pdb, expected, healthy, desired, &now);
        let same = pdb.status.as_ref().is_some_and(|current| {
            let strip = |s: &PodDisruptionBudgetStatus| {
                let mut s = s.clone();
                for c in s.conditions.iter_mut().flatten() {
                    c.last_transition_time = Time(jiff::Timestamp::UNIX_EPOCH);
                }
                s.disrupted_pods = None;
                s
            };
            strip(current) == strip(&status)
        });
        if !same {
            let api: Api<PodDisruptionBudget> = Api::namespaced(self.client.clone(), &namespace);
            let patch = serde_json::json!({"status": status});
            match api
                .patch_status(&pdb.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Requeue::No),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Requeue::No)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdb(spec: serde_json::Value) -> PodDisruptionBudget {
        serde_json::from_value(
            serde_json::json!({"metadata": {"name": "p", "generation": 2}, "spec": spec}),
        )
        .expect("a budget")
    }

    #[test]
    fn budgets_follow_min_available_or_max_unavailable() {
        // An integer minAvailable expects the pods that exist.
        assert_eq!(budget(&pdb(serde_json::json!({"minAvailable": 2})), 3, 5), (3, 2));
        // Percentages and maxUnavailable expect what the controllers want, rounding up.
        assert_eq!(budget(&pdb(serde_json::json!({"minAvailable": "50%"})), 3, 5), (5, 3));
        assert_eq!(budget(&pdb(serde_json::json!({"maxUnavailable": 1})), 3, 5), (5, 4));
        assert_eq!(budget(&pdb(serde_json::json!({"maxUnavailable": "10%"})), 3, 5), (5, 4));
        let now = Time(jiff::Timestamp::UNIX_EPOCH);
        let p = pdb(serde_json::json!({"minAvailable": 2}));
        let s = status_of(&p, 3, 3, 2, &now);
        assert_eq!((s.disruptions_allowed, s.observed_generation), (Some(1), Some(2)));
        assert_eq!(s.conditions.as_ref().map(|c| c[0].reason.as_str()), Some("SufficientPods"));
        let s = status_of(&p, 3, 1, 2, &now);
        assert_eq!(s.disruptions_allowed, Some(0));
        assert_eq!(s.conditions.as_ref().map(|c| c[0].status.as_str()), Some("False"));
    }
}
