//! The `resource.k8s.io` group (dynamic resource allocation): stored and served; no driver
//! allocates devices yet.

pub mod deviceclass;
pub mod resourceclaim;
pub mod resourceclaimtemplate;
pub mod resourceslice;
