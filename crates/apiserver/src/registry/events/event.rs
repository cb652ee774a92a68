//! Event (`events.k8s.io/v1`): served with the core Event's strategy (columns and selectable
//! fields read both shapes).

pub use crate::registry::core::event::Events;
