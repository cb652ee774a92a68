//! krust's Kubernetes API server: the REST API over the store, with discovery, OpenAPI, watch,
//! patch, Table printing, Status errors and the authentication → authorization → admission →
//! storage chain every request passes.
//!
//! This is the only crate that touches `storage`; every other component is an API client.

pub mod admission;
pub mod audit;
pub mod auth;
pub mod body;
pub mod bootstrap_token;
pub mod cidr;
pub mod cluster_bootstrap;
pub mod connections;
pub mod crd;
pub mod decode;
pub mod discovery;
pub mod encryption;
pub mod follow;
pub mod fuzzing;
pub mod handler;
pub mod join;
pub mod json;
pub mod limits;
pub mod managed;
pub mod metrics;
pub mod node_authorizer;
pub mod oidc;
pub mod patch;
/// The cluster PKI, from its own crate (the node agent uses it too).
pub use pki;
pub mod pods;
pub mod policy_reconcile;
pub mod protobuf;
pub mod proxy;
pub mod quantity;
pub mod rbac;
pub mod registry;
pub mod resource_metrics;
pub mod resources;
pub mod rest;
pub mod scraper;
pub mod selectors;
pub mod server;
pub mod status;
pub mod strategy;
pub mod table;
pub mod tokens;
pub mod watch;

/// The Kubernetes API version krust serves (for OpenAPI and `/version`).
pub const KUBERNETES_VERSION: &str = "v1.37.0";
