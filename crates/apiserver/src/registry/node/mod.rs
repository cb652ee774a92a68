//! The `node.k8s.io` group.

pub mod runtimeclass;
