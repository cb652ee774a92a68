//! The `authentication.k8s.io` group: reviews, never stored.

pub mod selfsubjectreview;
pub mod tokenreview;
