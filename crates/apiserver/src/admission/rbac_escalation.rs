//! RBAC escalation prevention on every write of a role or binding (upstream checks it in the
//! RBAC registry; here it is one more validating plugin, so every verb — create, update,
//! patch, apply — passes it). The check itself is `rbac::escalation`.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;

use super::{Attributes, Objects, Operation, Validating};
use crate::rbac::Rbac;
use crate::rbac::escalation::{Kind, check};
use crate::status::ApiResult;

/// The plugin, over the authorizer's view of RBAC.
pub struct RbacEscalation(pub Arc<Rbac>);

impl Validating for RbacEscalation {
    fn name(&self) -> &'static str {
        "RBACEscalation"
    }

    fn applies(&self, attributes: &Attributes<'_>) -> bool {
        matches!(attributes.operation, Operation::Create | Operation::Update)
            && attributes.subresource.is_none()
            && attributes.user.is_some()
            && attributes.rt.is_builtin()
            && attributes.rt.group == "rbac.authorization.k8s.io"
    }

    fn validate<'a>(
        &'a self,
        _objects: &'a dyn Objects,
        attributes: &'a Attributes<'a>,
        object: Option<&'a Value>,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            let (Some(user), Some(object), Some(kind)) =
                (attributes.user, object, Kind::of(&attributes.rt.kind))
            else {
                return Ok(());
            };
            // An update that changes no rules (labels, say) grants nothing new.
            if let Some(old) = attributes.old
                && old.get("rules") == object.get("rules")
                && old.get("roleRef") == object.get("roleRef")
                && old.get("aggregationRule") == object.get("aggregationRule")
                && matches!(kind, Kind::Role | Kind::ClusterRole)
            {
                return Ok(());
            }
            check(&self.0, user, kind, attributes.namespace.unwrap_or(""), object)
        })
    }
}
