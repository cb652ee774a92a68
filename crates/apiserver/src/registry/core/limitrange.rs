//! LimitRange: stored and served; LimitRanger admission comes with the workloads issue.

use crate::strategy::Strategy;

/// The LimitRange strategy.
#[derive(Debug)]
pub struct LimitRanges;

impl Strategy for LimitRanges {}
