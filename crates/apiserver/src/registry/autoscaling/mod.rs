//! The `autoscaling` group: `v2` and `v1` of the HorizontalPodAutoscaler over one storage.

pub mod horizontalpodautoscaler;
