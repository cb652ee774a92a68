//! Custom resources: the types CRDs define. Their names are DNS subdomains and nothing else
//! is known of them beyond their schema.

use crate::strategy::Strategy;

/// The strategy of every custom resource.
#[derive(Debug)]
pub struct CustomResources;

impl Strategy for CustomResources {}
