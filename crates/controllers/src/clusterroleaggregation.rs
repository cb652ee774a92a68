//! The ClusterRole aggregation controller, as upstream's: a ClusterRole with an
//! `aggregationRule` holds the rules of every ClusterRole its selectors match (`admin`,
//! `edit` and `view` are built this way, so a CRD's chart extends them by labelling a role).
//! Kept current whenever any ClusterRole changes.

use std::sync::Arc;

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::Api;
use kube::api::{PostParams, ResourceExt};

use crate::Error;
use crate::informer::{Change, Informer};
use crate::queue::{Queue, Requeue, run_workers};
use crate::selectors::label_selector_matches;

/// The rules `role` aggregates from `all` (every ClusterRole): those of each role a selector
/// matches, in name order, each rule once; `None` when `role` aggregates nothing.
pub fn aggregated_rules(role: &ClusterRole, all: &[Arc<ClusterRole>]) -> Option<Vec<PolicyRule>> {
    let selectors = role.aggregation_rule.as_ref()?.cluster_role_selectors.as_ref()?;
    let mut sorted: Vec<&Arc<ClusterRole>> = all.iter().collect();
    sorted.sort_by_key(|r| r.name_any());
    let mut rules: Vec<PolicyRule> = Vec::new();
    for selector in selectors {
        for source in &sorted {
            if source.name_any() == role.name_any() {
                continue;
            }
            let labels = source.metadata.labels.clone().unwrap_or_default();
            if !label_selector_matches(selector, &labels) {
                continue;
            }
            for rule in source.rules.iter().flatten() {
                if !rules.contains(rule) {
                    rules.push(rule.clone());
                }
            }
        }
    }
    Some(rules)
}

/// The controller; keys are ClusterRole names.
pub struct ClusterRoleAggregationController {
    client: kube::Client,
    roles: Arc<Informer<ClusterRole>>,
    queue: Arc<Queue>,
}

impl std::fmt::Debug for ClusterRoleAggregationController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRoleAggregationController").finish_non_exhaustive()
    }
}

impl ClusterRoleAggregationController {
    /// Hooks the controller to the ClusterRoles (before they start).
    pub fn new(
        client: kube::Client,
        roles: Arc<Informer<ClusterRole>>,
    ) -> Arc<ClusterRoleAggregationController> {
        let controller = Arc::new(ClusterRoleAggregationController {
            client,
            roles: roles.clone(),
            queue: Queue::new(),
        });
        let this = Arc::downgrade(&controller);
        roles.on_change(move |change| {
            let Some(c) = this.upgrade() else { return };
            if matches!(change, Change::Added(_) | Change::Updated(..) | Change::Deleted(_)) {
                // Any role may be one an aggregated role selects: look at them all.
                for role in c.roles.list() {
                    if role.aggregation_rule.is_some() {
                        c.queue.add(role.name_any());
                    }
                }
            }
        });
        controller
    }

    /// Runs until dropped.
    pub async fn run(self: Arc<Self>) {
        self.roles.wait_synced().await;
        for role in self.roles.list() {
            if role.aggregation_rule.is_some() {
                self.queue.add(role.name_any());
            }
        }
        let this = self.clone();
        run_workers(self.queue.clone(), 1, "clusterrole-aggregation", move |name| {
            let this = this.clone();
            async move { this.sync(&name).await }
        })
        .await;
    }

    async fn sync(&self, name: &str) -> Result<Requeue, Error> {
        let Some(role) = self.roles.get(name) else { return Ok(Requeue::No) };
        let Some(rules) = aggregated_rules(&role, &self.roles.list()) else {
            return Ok(Requeue::No);
        };
        if role.rules.as_deref().unwrap_or_default() == rules.as_slice() {
            return Ok(Requeue::No);
        }
        let mut updated = (*role).clone();
        updated.rules = Some(rules);
        let api: Api<ClusterRole> = Api::all(self.client.clone());
        match api.replace(name, &PostParams::default(), &updated).await {
            Ok(_) => Ok(Requeue::No),
            // A newer version is on its way through the informer, which queues it again.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(Requeue::No),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::rbac::v1::AggregationRule;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

    fn role(name: &str, label: Option<&str>, verbs: &[&str]) -> Arc<ClusterRole> {
        Arc::new(ClusterRole {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: label.map(|l| [(l.to_owned(), "true".to_owned())].into()),
                ..ObjectMeta::default()
            },
            rules: Some(vec![PolicyRule {
                verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["pods".into()]),
                ..PolicyRule::default()
            }]),
            aggregation_rule: None,
        })
    }

    #[test]
    fn an_aggregated_role_collects_the_selected_roles_rules_once_in_name_order() {
        let mut admin = (*role("admin", None, &[])).clone();
        admin.rules = None;
        admin.aggregation_rule = Some(AggregationRule {
            cluster_role_selectors: Some(vec![LabelSelector {
                match_labels: Some([("agg".to_owned(), "true".to_owned())].into()),
                ..LabelSelector::default()
            }]),
        });
        let all = vec![
            role("b", Some("agg"), &["list"]),
            role("a", Some("agg"), &["get"]),
            role("c", Some("agg"), &["get"]),
            role("other", Some("no"), &["delete"]),
        ];
        let rules = aggregated_rules(&admin, &all).unwrap_or_default();
        let verbs: Vec<&str> = rules.iter().map(|r| r.verbs[0].as_str()).collect();
        assert_eq!(verbs, ["get", "list"]);
        assert!(aggregated_rules(&all[0], &all).is_none());
    }
}
