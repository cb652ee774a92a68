//! DeviceClass: a class of devices claims can ask for.

use crate::strategy::Strategy;

/// The DeviceClasses strategy.
#[derive(Debug)]
pub struct DeviceClasses;

impl Strategy for DeviceClasses {}
