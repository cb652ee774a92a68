//! The client side of the API that every component other than the API server shares (what
//! client-go is upstream): informers with their caches and indexes, the work queue,
//! leader election, the event recorder, label and node selectors, resource quantities and
//! the slim cached pod. The controllers and the node agent both build on it, and neither
//! depends on the other.

pub mod cached_pod;
pub mod events;
pub mod informer;
pub mod leader;
pub mod local_volume;
pub mod quantity;
pub mod queue;
pub mod selectors;
