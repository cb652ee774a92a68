//! The `events.k8s.io` group: the same events as core/v1, in their newer shape.

pub mod event;
