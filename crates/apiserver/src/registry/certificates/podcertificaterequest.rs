//! PodCertificateRequest: a pod's request for a certificate (stored and served; signing
//! comes with the security issue).

use crate::strategy::Strategy;

/// The PodCertificateRequest strategy.
#[derive(Debug)]
pub struct PodCertificateRequests;

impl Strategy for PodCertificateRequests {}
