//! The `apiregistration.k8s.io` group.

pub mod apiservice;
