//! CertificateSigningRequests in admission, as upstream:
//!
//! - a new request records who asked (`spec.username`, `uid`, `groups`, `extra`), which is
//!   what approvers and signers judge; upstream's CSR strategy does this on create, here it
//!   is a mutating step because it needs the requester;
//! - `CertificateApproval`: approving or denying needs the `approve` verb on the request's
//!   signer (`signers` in `certificates.k8s.io`, named `<signer>` or `<domain>/*`);
//! - `CertificateSigning`: writing a certificate into `status` needs `sign` on it;
//! - `CertificateSubjectRestriction`: no `kubernetes.io/kube-apiserver-client` certificate
//!   for the `system:masters` group (it would bypass every authorizer).

use std::sync::Arc;

use base64::Engine;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::{Attributes, Hold, Mutating, Objects, Operation, Validating};
use crate::auth::{Authorizer, Decision};
use crate::rbac::Rbac;
use crate::status::{ApiError, ApiResult};

fn is_csr(attributes: &Attributes<'_>) -> bool {
    attributes.is("certificates.k8s.io", "CertificateSigningRequest")
}

/// Records the requester on a new CertificateSigningRequest.
pub struct CertificateRequester;

impl Mutating for CertificateRequester {
    fn name(&self) -> &'static str {
        "CertificateSigningRequestRequester"
    }

    fn applies(&self, attributes: &Attributes<'_>) -> bool {
        is_csr(attributes) && attributes.operation == Operation::Create
    }

    fn admit<'a>(
        &'a self,
        _objects: &'a dyn Objects,
        attributes: &'a Attributes<'a>,
        object: Option<&'a mut Value>,
    ) -> BoxFuture<'a, ApiResult<Hold>> {
        Box::pin(async move {
            let (Some(object), Some(user)) = (object, attributes.user) else { return Ok(None) };
            if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert("username".into(), json!(user.name));
                spec.insert("groups".into(), json!(user.groups));
                spec.remove("uid");
                spec.remove("extra");
            }
            Ok(None)
        })
    }
}

fn conditions(object: Option<&Value>, kind: &str) -> Vec<Value> {
    object
        .and_then(|o| o.pointer("/status/conditions"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c.get("type").and_then(Value::as_str) == Some(kind))
        .cloned()
        .collect()
}

/// Whether `user` may `verb` the signer `signer`: by its name or its domain's wildcard.
fn may(rbac: &Rbac, user: &crate::auth::UserInfo, verb: &str, signer: &str) -> bool {
    let wildcard = signer.split_once('/').map(|(domain, _)| format!("{domain}/*"));
    std::iter::once(signer.to_owned()).chain(wildcard).any(|name| {
        let attributes = crate::auth::Attributes {
            verb,
            group: "certificates.k8s.io",
            resource: "signers",
            subresource: "",
            namespace: "",
            name: &name,
            path: "",
        };
        matches!(rbac.authorize(user, &attributes), Decision::Allow)
    })
}

/// CertificateApproval and CertificateSigning: who may approve and who may sign.
pub struct CertificateSignerRights(pub Arc<Rbac>);

impl Validating for CertificateSignerRights {
    fn name(&self) -> &'static str {
        "CertificateApproval"
    }

    fn applies(&self, attributes: &Attributes<'_>) -> bool {
        is_csr(attributes)
            && attributes.operation == Operation::Update
            && matches!(attributes.subresource, Some("approval" | "status"))
    }

    fn validate<'a>(
        &'a self,
        _objects: &'a dyn Objects,
        attributes: &'a Attributes<'a>,
        object: Option<&'a Value>,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            let Some(user) = attributes.user else { return Ok(()) };
            let signer = object
                .and_then(|o| o.pointer("/spec/signerName"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let (verb, changed) = match attributes.subresource {
                Some("approval") => (
                    "approve",
                    ["Approved", "Denied"]
                        .iter()
                        .any(|k| conditions(object, k) != conditions(attributes.old, k)),
                ),
                _ => (
                    "sign",
                    object.and_then(|o| o.pointer("/status/certificate"))
                        != attributes.old.and_then(|o| o.pointer("/status/certificate")),
                ),
            };
            if !changed || may(&self.0, user, verb, signer) {
                return Ok(());
            }
            Err(ApiError::forbidden(format!(
                "certificatesigningrequests.certificates.k8s.io {:?} is forbidden: user not permitted to {verb} requests with signerName {signer:?}",
                attributes.name
            )))
        })
    }
}

/// CertificateSubjectRestriction.
pub struct CertificateSubjectRestriction;

impl Validating for CertificateSubjectRestriction {
    fn name(&self) -> &'static str {
        "CertificateSubjectRestriction"
    }

    fn applies(&self, attributes: &Attributes<'_>) -> bool {
        is_csr(attributes) && attributes.operation == Operation::Create
    }

    fn validate<'a>(
        &'a self,
        _objects: &'a dyn Objects,
        attributes: &'a Attributes<'a>,
        object: Option<&'a Value>,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            let Some(object) = object else { return Ok(()) };
            if object.pointer("/spec/signerName").and_then(Value::as_str)
                != Some("kubernetes.io/kube-apiserver-client")
            {
                return Ok(());
            }
            let pem = object
                .pointer("/spec/request")
                .and_then(Value::as_str)
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default();
            // An unreadable request is left to the signer, which fails it.
            let Ok(info) = pki::csr::inspect(&pem) else { return Ok(()) };
            if info.organizations.iter().any(|o| o == "system:masters") {
                return Err(ApiError::forbidden(format!(
                    "certificatesigningrequests.certificates.k8s.io {:?} is forbidden: use of kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed",
                    attributes.name
                )));
            }
            Ok(())
        })
    }
}
