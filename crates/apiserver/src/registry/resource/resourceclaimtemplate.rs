//! ResourceClaimTemplate: the claim each pod that names it gets.

use crate::strategy::Strategy;

/// The ResourceClaimTemplates strategy.
#[derive(Debug)]
pub struct ResourceClaimTemplates;

impl Strategy for ResourceClaimTemplates {}
