//! ResourceQuota: stored and served; its admission and status controller come with the
//! workloads issue.

use crate::strategy::Strategy;

/// The ResourceQuota strategy.
#[derive(Debug)]
pub struct ResourceQuotas;

impl Strategy for ResourceQuotas {}
