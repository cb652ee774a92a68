//! The `storagemigration.k8s.io` group.

pub mod storageversionmigration;
