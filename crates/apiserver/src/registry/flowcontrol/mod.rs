//! The `flowcontrol.apiserver.k8s.io` group: API priority and fairness objects, stored and
//! served (krust's own in-flight budgets are in `connections`).

pub mod bootstrap;
pub mod flowschema;
pub mod prioritylevelconfiguration;
