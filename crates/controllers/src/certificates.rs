//! The certificate controller (upstream's `csrapproving` and `csrsigning`, run as the
//! `certificate-controller` ServiceAccount):
//!
//! - it approves a node's request for a client certificate of its own name
//!   (`kubernetes.io/kube-apiserver-client-kubelet`) when a SubjectAccessReview says its
//!   requester may `create` `certificatesigningrequests/selfnodeclient` (or `nodeclient` for
//!   another's name), as upstream's auto-approval of kubelet renewals;
//! - it signs approved requests for the three signers upstream's controller manager signs —
//!   `kubernetes.io/kube-apiserver-client`, `…-client-kubelet` and `kubernetes.io/kubelet-serving`
//!   — with the cluster CA, after checking the request against the signer's rules; one that
//!   breaks them gets the `Failed` condition (`SignerValidationFailure`).
//!
//! The rules are pure (`check`); the CA key is the process's own (the server passes its PKI).

use std::sync::Arc;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::PostParams;
use kube::{Api, ResourceExt};

use crate::Error;
use crate::informer::{Change, Informer};
use crate::queue::{Queue, Requeue, run_workers};

pub const CLIENT: &str = "kubernetes.io/kube-apiserver-client";
pub const KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";

/// Longest certificate signed (upstream's `--cluster-signing-duration` default: one year).
pub const MAX_DURATION_SECONDS: u64 = 365 * 24 * 3600;

/// Why a request breaks its signer's rules (upstream's wording where it has one).
pub fn check(signer: &str, request: &pki::csr::CsrInfo, usages: &[String]) -> Result<(), String> {
    let allowed = |list: &[&str], required: &[&str]| -> Result<(), String> {
        if let Some(bad) = usages.iter().find(|u| !list.contains(&u.as_str())) {
            return Err(format!("usage {bad:?} is not allowed for signer {signer:?}"));
        }
        if let Some(missing) = required.iter().find(|r| !usages.iter().any(|u| u == *r)) {
            return Err(format!("usages must include {missing:?} for signer {signer:?}"));
        }
        Ok(())
    };
    let node_subject = || -> Result<(), String> {
        if request.organizations != ["system:nodes"] {
            return Err("subject organization is not system:nodes".to_owned());
        }
        if !request.common_name.starts_with("system:node:") || request.common_name.len() <= 12 {
            return Err("subject common name does not begin with system:node:".to_owned());
        }
        Ok(())
    };
    match signer {
        CLIENT => {
            allowed(&["digital signature", "key encipherment", "client auth"], &["client auth"])
        }
        KUBELET_CLIENT => {
            node_subject()?;
            if !(request.dns_names.is_empty()
                && request.ip_addresses.is_empty()
                && request.emails.is_empty()
                && request.uris.is_empty())
            {
                return Err("subjectAltNames are not allowed".to_owned());
            }
            allowed(
                &["digital signature", "key encipherment", "client auth"],
                &["client auth", "digital signature"],
            )
        }
        KUBELET_SERVING => {
            node_subject()?;
            if request.dns_names.is_empty() && request.ip_addresses.is_empty() {
                return Err("DNS or IP subjectAltName is required".to_owned());
            }
            if !request.emails.is_empty() || !request.uris.is_empty() {
                return Err("email and URI subjectAltName are not allowed".to_owned());
            }
            allowed(
                &["digital signature", "key encipherment", "server auth"],
                &["server auth", "digital signature"],
            )
        }
        other => Err(format!("signer {other:?} is not signed by this controller")),
    }
}

/// Whether a request is a node's client certificate request that auto-approval may act on.
pub fn is_node_client_request(
    signer: &str,
    request: &pki::csr::CsrInfo,
    usages: &[String],
) -> bool {
    signer == KUBELET_CLIENT && check(signer, request, usages).is_ok()
}

/// Whether a node's serving certificate request names only that node: its requester is the
/// node (`system:node:<name>` in `system:nodes`, the request's own subject) and every SAN is
/// the node's name or one of the addresses its Node object reports.
pub fn is_own_serving_request(
    request: &pki::csr::CsrInfo,
    usages: &[String],
    username: &str,
    groups: &[String],
    node: Option<&k8s_openapi::api::core::v1::Node>,
) -> bool {
    let Some(node) = node else { return false };
    let name = node.metadata.name.as_deref().unwrap_or("");
    if check(KUBELET_SERVING, request, usages).is_err()
        || username != request.common_name
        || request.common_name != format!("system:node:{name}")
        || !groups.iter().any(|g| g == "system:nodes")
    {
        return false;
    }
    let addresses: Vec<&str> = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .map(|a| a.address.as_str())
        .collect();
    request.dns_names.iter().all(|d| d == name || addresses.contains(&d.as_str()))
        && request.ip_addresses.iter().all(|ip| addresses.contains(&ip.to_string().as_str()))
}

/// How long a signed certificate lives: what was asked (at least ten minutes), at most a year.
pub fn duration_seconds(expiration_seconds: Option<i32>) -> u64 {
    expiration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(MAX_DURATION_SECONDS, |s| s.clamp(600, MAX_DURATION_SECONDS))
}

fn has_condition(csr: &CertificateSigningRequest, kind: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == kind && c.status == "True"))
}

fn condition(kind: &str, reason: &str, message: &str) -> CertificateSigningRequestCondition {
    let now = Time(jiff::Timestamp::now());
    CertificateSigningRequestCondition {
        type_: kind.to_owned(),
        status: "True".to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

/// The certificate controller; keys are request names.
pub struct CertificateController {
    client: kube::Client,
    requests: Arc<Informer<CertificateSigningRequest>>,
    nodes: Arc<Informer<k8s_openapi::api::core::v1::Node>>,
    ca: Option<Arc<pki::Pki>>,
    queue: Arc<Queue>,
}

impl std::fmt::Debug for CertificateController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateController").finish_non_exhaustive()
    }
}

impl CertificateController {
    /// Hooks the controller to the informer; without `ca` it approves but signs nothing.
    pub fn new(
        client: kube::Client,
        requests: Arc<Informer<CertificateSigningRequest>>,
        nodes: Arc<Informer<k8s_openapi::api::core::v1::Node>>,
        ca: Option<Arc<pki::Pki>>,
    ) -> Arc<CertificateController> {
        let controller = Arc::new(CertificateController {
            client,
            requests: requests.clone(),
            nodes,
            ca,
            queue: Queue::new(),
        });
        let this = Arc::downgrade(&controller);
        requests.on_change(move |change| {
            if let (Some(c), Change::Added(csr) | Change::Updated(_, csr)) =
                (this.upgrade(), change)
            {
                c.queue.add(csr.name_any());
            }
        });
        controller
    }

    /// Syncs requests until dropped.
    pub async fn run(self: Arc<Self>) {
        self.requests.wait_synced().await;
        let this = self.clone();
        run_workers(self.queue.clone(), 2, "certificate", move |name| {
            let this = this.clone();
            async move { this.sync(&name).await }
        })
        .await;
    }

    async fn sync(&self, name: &str) -> Result<Requeue, Error> {
        let Some(csr) = self.requests.get(name) else { return Ok(Requeue::No) };
        let issued = csr
            .status
            .as_ref()
            .and_then(|s| s.certificate.as_ref())
            .is_some_and(|c| !c.0.is_empty());
        if issued || has_condition(&csr, "Denied") || has_condition(&csr, "Failed") {
            return Ok(Requeue::No);
        }
        let signer = csr.spec.signer_name.as_str();
        let usages = csr.spec.usages.clone().unwrap_or_default();
        let pem = String::from_utf8_lossy(&csr.spec.request.0).into_owned();
        let request = pki::csr::inspect(&pem);
        if !has_condition(&csr, "Approved") {
            if let Ok(request) = &request
                && is_node_client_request(signer, request, &usages)
            {
                self.maybe_approve(&csr, request).await?;
            }
            if let Ok(request) = &request
                && signer == KUBELET_SERVING
            {
                let username = csr.spec.username.clone().unwrap_or_default();
                let groups = csr.spec.groups.clone().unwrap_or_default();
                let node_name = request.common_name.strip_prefix("system:node:").unwrap_or("");
                let node = self.nodes.get(node_name);
                if is_own_serving_request(request, &usages, &username, &groups, node.as_deref()) {
                    self.approve(&csr, "Auto approving a node's serving certificate for its own names and addresses.").await?;
                }
            }
            return Ok(Requeue::No);
        }
        if !matches!(signer, CLIENT | KUBELET_CLIENT | KUBELET_SERVING) {
            return Ok(Requeue::No);
        }
        let Some(ca) = &self.ca else { return Ok(Requeue::No) };
        let outcome = request
            .map_err(|e| format!("the request does not parse: {e}"))
            .and_then(|r| check(signer, &r, &usages))
            .and_then(|()| {
                ca.sign_request(&pem, &usages, duration_seconds(csr.spec.expiration_seconds))
                    .map_err(|e| format!("signing failed: {e}"))
            });
        let mut next = (*csr).clone();
        let status = next.status.get_or_insert_with(Default::default);
        match outcome {
            Ok(certificate) => {
                status.certificate = Some(k8s_openapi::ByteString(certificate.into_bytes()));
                tracing::info!(csr = name, signer, "certificate signed");
            }
            Err(message) => {
                tracing::warn!(csr = name, signer, %message, "certificate request refused");
                status.conditions.get_or_insert_with(Vec::new).push(condition(
                    "Failed",
                    "SignerValidationFailure",
                    &message,
                ));
            }
        }
        let api: Api<CertificateSigningRequest> = Api::all(self.client.clone());
        match api.replace_subresource("status", name, &PostParams::default(), &next).await {
            Ok(_) => Ok(Requeue::No),
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(Requeue::No),
            Err(e) => Err(e.into()),
        }
    }

    /// Approves a node's client request when its requester may ask for it.
    async fn maybe_approve(
        &self,
        csr: &CertificateSigningRequest,
        request: &pki::csr::CsrInfo,
    ) -> Result<(), Error> {
        let username = csr.spec.username.clone().unwrap_or_default();
        let own = username == request.common_name;
        let subresource = if own { "selfnodeclient" } else { "nodeclient" };
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(username),
                groups: csr.spec.groups.clone(),
                uid: csr.spec.uid.clone(),
                resource_attributes: Some(ResourceAttributes {
                    group: Some("certificates.k8s.io".to_owned()),
                    resource: Some("certificatesigningrequests".to_owned()),
                    subresource: Some(subresource.to_owned()),
                    verb: Some("create".to_owned()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviews: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = reviews.create(&PostParams::default(), &review).await?;
        if !answer.status.is_some_and(|s| s.allowed) {
            return Ok(());
        }
        let message = if own {
            "Auto approving self kubelet client certificate after SubjectAccessReview."
        } else {
            "Auto approving kubelet client certificate after SubjectAccessReview."
        };
        self.approve(csr, message).await
    }

    /// Adds the `Approved` condition (reason `AutoApproved`) through `approval`.
    async fn approve(&self, csr: &CertificateSigningRequest, message: &str) -> Result<(), Error> {
        let mut next = csr.clone();
        next.status
            .get_or_insert_with(Default::default)
            .conditions
            .get_or_insert_with(Vec::new)
            .push(condition("Approved", "AutoApproved", message));
        let api: Api<CertificateSigningRequest> = Api::all(self.client.clone());
        match api
            .replace_subresource("approval", &csr.name_any(), &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(cn: &str, dns: &[&str]) -> pki::csr::CsrInfo {
        pki::csr::CsrInfo {
            common_name: cn.to_owned(),
            organizations: vec!["system:nodes".to_owned()],
            dns_names: dns.iter().map(|d| (*d).to_owned()).collect(),
            ..Default::default()
        }
    }

    fn usages(list: &[&str]) -> Vec<String> {
        list.iter().map(|u| (*u).to_owned()).collect()
    }

    #[test]
    fn each_signer_keeps_to_its_rules() {
        let client = usages(&["digital signature", "key encipherment", "client auth"]);
        assert_eq!(check(KUBELET_CLIENT, &node("system:node:n1", &[]), &client), Ok(()));
        assert!(
            check(KUBELET_CLIENT, &node("system:node:n1", &["n1"]), &client)
                .unwrap_err()
                .contains("subjectAltNames")
        );
        assert!(
            check(KUBELET_CLIENT, &node("alice", &[]), &client)
                .unwrap_err()
                .contains("system:node:")
        );
        let server = usages(&["digital signature", "server auth"]);
        assert_eq!(check(KUBELET_SERVING, &node("system:node:n1", &["n1"]), &server), Ok(()));
        assert!(
            check(KUBELET_SERVING, &node("system:node:n1", &[]), &server)
                .unwrap_err()
                .contains("required")
        );
        assert!(check(KUBELET_SERVING, &node("system:node:n1", &["n1"]), &client).is_err());
        let alice = pki::csr::CsrInfo { common_name: "alice".to_owned(), ..Default::default() };
        assert_eq!(check(CLIENT, &alice, &usages(&["client auth"])), Ok(()));
        assert!(check(CLIENT, &alice, &usages(&["server auth"])).is_err());
        assert!(check("example.com/mine", &alice, &usages(&["client auth"])).is_err());
        assert!(is_node_client_request(KUBELET_CLIENT, &node("system:node:n1", &[]), &client));
        assert!(!is_node_client_request(CLIENT, &node("system:node:n1", &[]), &client));
    }

    #[test]
    fn a_serving_request_is_approved_only_for_the_nodes_own_names() {
        let object: k8s_openapi::api::core::v1::Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.7"}]}
        }))
        .expect("node");
        let usages = usages(&["digital signature", "server auth"]);
        let mut request = node("system:node:n1", &["n1"]);
        request.ip_addresses = vec!["10.0.0.7".parse().expect("ip")];
        let groups = vec!["system:nodes".to_owned()];
        let own = |r: &pki::csr::CsrInfo, user: &str| {
            is_own_serving_request(r, &usages, user, &groups, Some(&object))
        };
        assert!(own(&request, "system:node:n1"));
        assert!(!own(&request, "system:node:n2"), "another node asked");
        let mut wider = request.clone();
        wider.dns_names.push("kubernetes.default.svc".to_owned());
        assert!(!own(&wider, "system:node:n1"), "a name the node does not have");
        let mut other_ip = request.clone();
        other_ip.ip_addresses = vec!["10.0.0.8".parse().expect("ip")];
        assert!(!own(&other_ip, "system:node:n1"));
        assert!(!is_own_serving_request(&request, &usages, "system:node:n1", &groups, None));
    }

    #[test]
    fn durations_are_clamped() {
        assert_eq!(duration_seconds(None), MAX_DURATION_SECONDS);
        assert_eq!(duration_seconds(Some(60)), 600);
        assert_eq!(duration_seconds(Some(3600)), 3600);
        assert_eq!(duration_seconds(Some(i32::MAX)), MAX_DURATION_SECONDS);
    }
}
