//! The `certificates.k8s.io` group.

pub mod certificatesigningrequest;
pub mod clustertrustbundle;
pub mod podcertificaterequest;
