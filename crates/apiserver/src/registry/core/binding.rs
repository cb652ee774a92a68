//! Binding (`POST /api/v1/namespaces/NS/bindings`): the older form of a pod's `binding`
//! subresource, naming the pod in the body. Served by redirecting to that subresource.

use crate::strategy::Strategy;

/// The Binding strategy.
#[derive(Debug)]
pub struct Bindings;

impl Strategy for Bindings {
    fn redirects_to(&self) -> Option<(&'static str, &'static str)> {
        Some(("pods", "binding"))
    }
}
