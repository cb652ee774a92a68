//! What the endpoint's handlers share (the runtime, the pods of this node by name, the body
//! type and plain answers), apart from `server.rs` so that the handlers (`exec.rs`, `stats.rs`)
//! need not import the server that routes to them.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{Response, StatusCode};

use crate::cri::SharedRuntime;

/// Response body type.
pub type Body = BoxBody<Bytes, Infallible>;

pub use crate::pods::Directory;

/// What the endpoint needs.
#[derive(Clone, Debug)]
pub struct StreamContext {
    /// The runtime.
    pub cri: SharedRuntime,
    /// Pods by name.
    pub directory: Directory,
    /// The node's name (for stats).
    pub node_name: String,
    /// The pods' claim-backed volumes (for stats).
    pub volume_users: std::sync::Arc<crate::local_volume::Users>,
}

/// The UID of the pod `namespace/name` on this node.
pub fn pod_uid(ctx: &StreamContext, namespace: &str, name: &str) -> Option<String> {
    ctx.directory.read().ok()?.get(&(namespace.to_owned(), name.to_owned())).cloned()
}

/// A plain-text response.
pub fn text(code: StatusCode, message: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(message.to_owned())).boxed());
    *r.status_mut() = code;
    r.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain"));
    r
}
