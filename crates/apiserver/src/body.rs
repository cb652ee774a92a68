//! The body types of requests and responses, in their own file because the handler and the
//! proxies to node agents and pods both use them (and neither should import the other).

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;

/// Response body type: whole bodies and streams alike.
pub type Body = BoxBody<Bytes, Infallible>;

/// Request body type: a connection's body, or an in-process client's (see
/// [`crate::server::InProcess`]), boxed so one handler serves both.
pub type RequestBody = BoxBody<Bytes, BoxError>;

/// Errors of request bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
