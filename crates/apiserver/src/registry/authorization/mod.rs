//! The `authorization.k8s.io` group: reviews answered through the server's authorizer, never
//! stored.

pub mod selfsubjectrulesreview;
pub mod subjectaccessreview;
