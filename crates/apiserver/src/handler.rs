//! The request chain: route → authenticate → authorize → admission → registry, and the one
//! place where results and errors become HTTP responses.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::FutureExt;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use crate::auth::{Attributes, Authorizer, Decision, UserInfo};
use crate::discovery;
use crate::metrics::Metrics;
use crate::patch::PatchType;
use crate::protobuf;
use crate::resources::{Registry, ResourceType};
use crate::rest::{DeleteOptions, ListOptions, Rest, WriteOptions};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{ApiError, ApiResult};
use crate::strategy::FieldValidation;
use crate::table::{self, IncludeObject};

pub use crate::body::{Body, BoxError, RequestBody};

/// Boxes any body as a [`RequestBody`] (keeping the request's extensions, so a connection's
/// upgrade stays reachable).
pub fn boxed_request<B>(request: Request<B>) -> Request<RequestBody>
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    request.map(|b| b.map_err(Into::into).boxed())
}

/// Where `krust secrets-encrypt` reaches the server (k3s's supervisor path is `/v1-k3s/encrypt/`).
pub const ENCRYPTION_PATH: &str = "/v1-krust/encrypt/";

/// Largest request body accepted (upstream's limit is 3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Everything the handlers share.
pub struct ApiServer {
    /// The registry over the store.
    pub rest: Arc<Rest>,
    /// Served types.
    pub registry: Arc<Registry>,
    /// The authorizer.
    pub authorizer: Box<dyn Authorizer>,
    /// Request metrics.
    pub metrics: Metrics,
    /// Compactor counters, exported in `/metrics`.
    pub compactor: Arc<storage::compactor::CompactorStats>,
    /// `host:port` clients should use, for legacy discovery.
    pub advertise_address: String,
    /// Connections to node agents for logs, exec, attach and port-forward (none: those
    /// requests answer 503).
    pub node_proxy: Option<crate::proxy::NodeProxy>,
    /// Lets agents holding the join token fetch the CA and their credentials.
    pub node_join: Option<crate::join::NodeJoin>,
    /// Budgets of requests in flight (429 beyond them).
    pub inflight: crate::connections::InflightLimits,
    /// ServiceAccount tokens: issued through TokenRequest, accepted as bearer tokens (none:
    /// only client certificates authenticate).
    pub tokens: Option<Arc<crate::tokens::ServiceAccountTokens>>,
    /// Static bearer tokens (`--token-auth-file`).
    pub token_file: Option<crate::auth::TokenFile>,
    /// Encryption at rest, commanded through `/v1-krust/encrypt/` (`krust secrets-encrypt`).
    pub encryption: Option<Arc<crate::encryption::Encryption>>,
    /// The audit log (`audit-log-path`), if any.
    pub audit: Option<Arc<crate::audit::AuditLog>>,
    /// OpenID Connect ID tokens (`oidc-issuer-url`), if configured.
    pub oidc: Option<Arc<crate::oidc::Oidc>>,
    /// The nodes' and pods' resource usage, served as `metrics.k8s.io`.
    pub resource_metrics: Arc<crate::resource_metrics::Samples>,
}

/// A long-running request's budget slot, carried in its response's extensions so that the
/// connection can keep it until the response body ends.
#[derive(Debug, Clone)]
pub struct HeldSlot(pub Arc<crate::connections::Slot>);

/// Marks a request of the process's own components ([`crate::server::InProcess`]), which
/// the in-flight budgets do not count: they are the server's own control loops.
#[derive(Debug, Clone, Copy)]
pub struct InProcessRequest;

/// The client's address, as the connection's request extension.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// Pod subresources served by the node agent through the proxy.
const STREAMING: [&str; 4] = ["log", "exec", "attach", "portforward"];

/// The Kubernetes version krust reports.
pub const GIT_VERSION: &str = "v1.37.0+krust";

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(full(bytes));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The response to a write: the bytes the store was given when the write encoded them
/// (serializing the object again would cost as much as encoding it did).
fn written_response(code: StatusCode, written: crate::rest::Written) -> Response<Body> {
    let mut response = match written.body {
        None => json_response(code, &written.object),
        Some(body) => {
            let mut response = Response::new(full(body));
            *response.status_mut() = code;
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
    };
    // What admission noted for the audit log travels with the response to it.
    if !written.audit.is_empty() {
        response.extensions_mut().insert(crate::audit::Annotations(written.audit));
    }
    response
}

/// Renders an error as a `Status` response.
pub fn error_response(error: &ApiError) -> Response<Body> {
    let code = StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json_response(code, &error.to_status());
    if let Some(seconds) = error.retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn with_warnings(mut response: Response<Body>, warnings: &[String]) -> Response<Body> {
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(v) = HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
    response
}

/// A request header as text ("" when absent or not text).
fn header_text(request: &Request<RequestBody>, name: header::HeaderName) -> String {
    request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
}

/// Decodes `%XX` and `+` in a query component.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Query parameters (last value wins, as Go's `Get`).
#[derive(Debug, Default)]
pub(crate) struct Query(HashMap<String, Vec<String>>);

impl Query {
    fn parse(query: Option<&str>) -> Query {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            map.entry(percent_decode(k)).or_default().push(percent_decode(v));
        }
        Query(map)
    }
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.first()).map(String::as_str)
    }
    pub(crate) fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
    fn all(&self, key: &str) -> Vec<&str> {
        self.0.get(key).map(|v| v.iter().map(String::as_str).collect()).unwrap_or_default()
    }
}

/// A request aimed at a resource.
struct Target {
    rt: Arc<ResourceType>,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
    /// The path after `proxy/` of a proxy subresource.
    proxy_path: Option<String>,
}

enum Route {
    Resource(Target),
    Other,
}

fn route(registry: &Registry, path: &str) -> ApiResult<Route> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segments.as_slice() {
        ["api", v, rest @ ..] if !rest.is_empty() => ("", *v, rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
        _ => return Ok(Route::Other),
    };
    let lookup =
        |plural: &str| registry.lookup(group, version, plural).ok_or_else(ApiError::no_route);
    let target = match rest {
        ["namespaces", ns] if group.is_empty() => Target {
            rt: lookup("namespaces")?,
            namespace: None,
            name: Some((*ns).to_owned()),
            subresource: None,
            proxy_path: None,
        },
        ["namespaces", ns, sub @ ("status" | "finalize")] if group.is_empty() => Target {
            rt: lookup("namespaces")?,
            namespace: None,
            name: Some((*ns).to_owned()),
            subresource: Some((*sub).to_owned()),
            proxy_path: None,
        },
        ["namespaces", ns, plural, tail @ ..] => {
            let rt = lookup(plural)?;
            if !rt.namespaced {
                return Err(ApiError::no_route());
            }
            let mut proxy_path = None;
            let (name, sub) = match tail {
                [] => (None, None),
                [name] => (Some((*name).to_owned()), None),
                [name, sub] => (Some((*name).to_owned()), Some((*sub).to_owned())),
                [name, "proxy", rest @ ..] => {
                    proxy_path = Some(format!("/{}", rest.join("/")));
                    (Some((*name).to_owned()), Some("proxy".to_owned()))
                }
                _ => return Err(ApiError::no_route()),
            };
            Target { rt, namespace: Some((*ns).to_owned()), name, subresource: sub, proxy_path }
        }
        [plural, tail @ ..] => {
            let rt = lookup(plural)?;
            let (name, sub) = match tail {
                [] => (None, None),
                [name] if !rt.namespaced => (Some((*name).to_owned()), None),
                [name, sub] if !rt.namespaced => {
                    (Some((*name).to_owned()), Some((*sub).to_owned()))
                }
                _ => return Err(ApiError::no_route()),
            };
            Target { rt, namespace: None, name, subresource: sub, proxy_path: None }
        }
        [] => return Ok(Route::Other),
    };
    if let Some(sub) = &target.subresource {
        let ok = (sub == "status" && target.rt.has_status)
            || (sub == "scale" && target.rt.has_scale)
            || target.rt.strategy.subresources().iter().any(|s| s.name == sub);
        if !ok {
            return Err(ApiError::no_route());
        }
    }
    Ok(Route::Resource(target))
}

fn wants_table(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let params: Vec<&str> = part.split(';').map(str::trim).collect();
        params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io")
    })
}

/// Whether every media type the client accepts is a Table (nothing else will do).
fn only_table(accept: &str) -> bool {
    !accept.trim().is_empty() && accept.split(',').all(wants_table)
}

fn accepts_aggregated(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let params: Vec<&str> = part.split(';').map(str::trim).collect();
        params.contains(&"as=APIGroupDiscoveryList")
            && params.contains(&"v=v2")
            && params.contains(&"g=apidiscovery.k8s.io")
    })
}

fn field_manager(query: &Query, user_agent: &str) -> String {
    match query.get("fieldManager") {
        Some(m) if !m.is_empty() => m.to_owned(),
        _ => {
            let agent = user_agent.split('/').next().unwrap_or("").trim();
            if agent.is_empty() { "unknown".to_owned() } else { agent.chars().take(128).collect() }
        }
    }
}

fn dry_run(query: &Query) -> ApiResult<bool> {
    let values = query.all("dryRun");
    for v in &values {
        if *v != "All" {
            return Err(ApiError::bad_request(format!(
                "dryRun: Unsupported value: \"{v}\": supported values: \"All\""
            )));
        }
    }
    Ok(!values.is_empty())
}

fn verb_of(method: &Method, target: Option<&Target>, query: &Query) -> &'static str {
    // exec, attach and port-forward are "create" whatever the method (kubectl's WebSocket
    // upgrades are GETs), as upstream authorizes them.
    if target
        .and_then(|t| t.subresource.as_deref())
        .is_some_and(|s| matches!(s, "exec" | "attach" | "portforward"))
    {
        return "create";
    }
    match *method {
        Method::GET if query.flag("watch") => "watch",
        Method::GET if target.is_some_and(|t| t.name.is_none()) => "list",
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if target.is_some_and(|t| t.name.is_none()) => "deletecollection",
        Method::DELETE => "delete",
        _ => "unknown",
    }
}

impl ApiServer {
    /// Serves one HTTP request from `user` (None = no valid client credentials), in a span
    /// that names the request, so whatever it logs says which request it was.
    pub async fn handle(
        self: Arc<Self>,
        request: Request<RequestBody>,
        user: Option<UserInfo>,
    ) -> Response<Body> {
        // No client certificate: a bearer token may say who it is.
        let user = match (user, bearer(&request)) {
            (Some(user), _) => Some(user),
            (None, Some(token)) => match self.token_file.as_ref().and_then(|f| f.user(token)) {
                Some(user) => Some(user),
                None if crate::bootstrap_token::parse(token).is_some() => {
                    self.bootstrap_user(token, crate::bootstrap_token::Usage::Authentication).await
                }
                None if self.oidc.as_ref().is_some_and(|o| o.claims_to_be_ours(token)) => {
                    match &self.oidc {
                        Some(oidc) => oidc.authenticate(token).await,
                        None => None,
                    }
                }
                None => match &self.tokens {
                    Some(tokens) => tokens.authenticate(&self.rest, token).await,
                    None => None,
                },
            },
            (None, None) => None,
        };
        // Acting as someone else, when the authorizer lets this user.
        let user = match impersonation(&request) {
            Ok(None) => user,
            Ok(Some(asked)) => match user {
                None => return error_response(&ApiError::unauthorized()),
                Some(real) => match self.impersonate(&real, asked) {
                    Ok(acting) => Some(acting),
                    Err(e) => return error_response(&e),
                },
            },
            Err(e) => return error_response(&e),
        };
        let span = tracing::info_span!(
            "request",
            method = %request.method(),
            path = %request.uri().path(),
            user = user.as_ref().map_or("", |u| u.name.as_str()),
        );
        tracing::Instrument::instrument(self.serve(request, user), span).await
    }

    async fn serve(
        self: Arc<Self>,
        request: Request<RequestBody>,
        user: Option<UserInfo>,
    ) -> Response<Body> {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        if let Some(join) = &self.node_join
            && (path == crate::join::CACERTS_PATH || path == crate::join::CREDENTIALS_PATH)
        {
            return match self.serve_join(join, request, user.as_ref()).await {
                Ok(r) => r,
                Err(e) => error_response(&e),
            };
        }
        // The token issuer's OIDC discovery, public as upstream serves it to anyone allowed
        // `system:public-info-viewer`-like access.
        if let Some(tokens) = &self.tokens {
            let document = match path.as_str() {
                "/.well-known/openid-configuration" => Some(tokens.discovery()),
                "/openid/v1/jwks" => Some(tokens.jwks()),
                _ => None,
            };
            if let Some(document) = document {
                return json_response(StatusCode::OK, &document);
            }
        }
        let query = Query::parse(request.uri().query());
        let (response, verb, resource, subresource) = match route(&self.registry, &path) {
            Err(e) => (
                error_response(&e),
                verb_of(&method, None, &query).to_uppercase(),
                String::new(),
                String::new(),
            ),
            Ok(route) => {
                let target = match &route {
                    Route::Resource(t) => Some(t),
                    Route::Other => None,
                };
                let verb = verb_of(&method, target, &query);
                let resource = target.map(|t| t.rt.plural.clone()).unwrap_or_default();
                let subresource = target.and_then(|t| t.subresource.clone()).unwrap_or_default();
                // Long-running requests (watches and streams) have a budget of their own:
                // they hold their slot for as long as they stream.
                let long_running = verb == "watch" || STREAMING.contains(&subresource.as_str());
                let counted = user.is_some()
                    && target.is_some()
                    && request.extensions().get::<InProcessRequest>().is_none();
                let slot =
                    if counted { Some(self.inflight.acquire(verb, long_running)) } else { None };
                let mut audit = self.audit_begin(&request, user.as_ref(), verb, target, &path);
                let with_body =
                    method == Method::POST || method == Method::PUT || method == Method::PATCH;
                let request = match audit.as_mut() {
                    Some(pending) if pending.wants_request_body() && with_body && !long_running => {
                        // The body is read here for the log and handed on whole.
                        let (parts, body) = request.into_parts();
                        let bytes = match read_bytes(Request::new(body)).await {
                            Ok(bytes) => bytes,
                            Err(e) => return error_response(&e),
                        };
                        let content_type = parts
                            .headers
                            .get(header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        let object = if protobuf::is_protobuf(content_type) {
                            protobuf::decode_object(&bytes).ok()
                        } else {
                            serde_json::from_slice(&bytes).ok()
                        };
                        if let Some(object) = object {
                            pending.set_request_object(object);
                        }
                        let body = Full::new(bytes).map_err(|never| match never {}).boxed();
                        Request::from_parts(parts, body)
                    }
                    _ => request,
                };
                let response = if let Some(None) = slot {
                    let mut e =
                        ApiError::too_many_requests("Too many requests, please try again later.");
                    e.retry_after = Some(1);
                    error_response(&e)
                } else {
                    match self.authorize(user.as_ref(), verb, target, &path, &query) {
                        Err(e) => error_response(&e),
                        Ok(()) => match route {
                            Route::Resource(target)
                                if target.subresource.as_deref() == Some("proxy") =>
                            {
                                match self.serve_pod_proxy(request, target).await {
                                    Ok(r) => r,
                                    Err(e) => error_response(&e),
                                }
                            }
                            Route::Resource(target)
                                if target
                                    .subresource
                                    .as_deref()
                                    .is_some_and(|s| STREAMING.contains(&s)) =>
                            {
                                match self.serve_pod_stream(request, target, &query).await {
                                    Ok(r) => r,
                                    Err(e) => error_response(&e),
                                }
                            }
                            Route::Resource(target) => {
                                match self
                                    .clone()
                                    .serve_resource(request, target, verb, query, user.as_ref())
                                    .await
                                {
                                    Ok(r) => r,
                                    Err(e) => error_response(&e),
                                }
                            }
                            Route::Other => {
                                match self.serve_other(&method, &path, &request).await {
                                    Ok(r) => r,
                                    Err(e) => error_response(&e),
                                }
                            }
                        },
                    }
                };
                let mut response = response;
                if let Some(pending) = audit {
                    response = audit_finish(pending, response, long_running).await;
                }
                // An ordinary request's slot is given back now; a long-running one's when
                // its response body ends.
                if let Some(Some(slot)) = slot
                    && long_running
                {
                    // The connection keeps it with the response body (see
                    // `server::ending_with`): one more body wrapper here cost watch replay
                    // 15% in `krust bench api`.
                    response.extensions_mut().insert(HeldSlot(Arc::new(slot)));
                }
                (response, verb.to_uppercase(), resource, subresource)
            }
        };
        self.metrics.observe(
            &verb,
            &resource,
            &subresource,
            response.status().as_u16(),
            started.elapsed(),
        );
        tracing::debug!(%method, %path, code = response.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "request");
        response
    }

    /// Starts auditing a request the audit policy selects (authenticated ones only: a
    /// request without credentials never reaches a resource).
    fn audit_begin(
        &self,
        request: &Request<RequestBody>,
        user: Option<&UserInfo>,
        verb: &str,
        target: Option<&Target>,
        path: &str,
    ) -> Option<crate::audit::Pending> {
        let (log, user) = (self.audit.as_ref()?, user?);
        let uri = request.uri().path_and_query().map_or(path, |p| p.as_str());
        log.begin(crate::audit::RequestInfo {
            user: &user.name,
            groups: &user.groups,
            verb,
            uri,
            path,
            group: target.map_or("", |t| t.rt.group.as_str()),
            version: target.map_or("", |t| t.rt.version.as_str()),
            resource: target.map_or("", |t| t.rt.plural.as_str()),
            subresource: target.and_then(|t| t.subresource.as_deref()).unwrap_or(""),
            namespace: target.and_then(|t| t.namespace.as_deref()).unwrap_or(""),
            name: target.and_then(|t| t.name.as_deref()).unwrap_or(""),
            source_ip: request.extensions().get::<PeerAddr>().map(|p| p.0.ip().to_string()),
            user_agent: request
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        })
    }

    /// The user `real` acts as, after checking it may impersonate each part of `asked`
    /// (the `impersonate` verb on users or serviceaccounts, groups, uids and userextras).
    fn impersonate(&self, real: &UserInfo, asked: Impersonation) -> ApiResult<UserInfo> {
        let check = |group: &str, resource: &str, namespace: &str, name: &str| {
            let attributes = Attributes {
                verb: "impersonate",
                group,
                resource,
                subresource: "",
                namespace,
                name,
                path: "",
            };
            match self.authorizer.authorize(real, &attributes) {
                Decision::Allow => Ok(()),
                Decision::Deny(_) => {
                    let scope = if namespace.is_empty() {
                        "at the cluster scope".to_owned()
                    } else {
                        format!("in the namespace \"{namespace}\"")
                    };
                    Err(ApiError::forbidden(format!(
                        "{resource} \"{name}\" is forbidden: User \"{}\" cannot impersonate resource \"{resource}\" in API group \"{group}\" {scope}",
                        real.name
                    )))
                }
            }
        };
        let mut groups = asked.groups.clone();
        match asked.user.strip_prefix("system:serviceaccount:").and_then(|r| r.split_once(':')) {
            Some((namespace, name)) => {
                check("", "serviceaccounts", namespace, name)?;
                // A ServiceAccount's own groups come with it when none are asked for.
                if groups.is_empty() {
                    groups.push("system:serviceaccounts".to_owned());
                    groups.push(format!("system:serviceaccounts:{namespace}"));
                }
            }
            None => check("", "users", "", &asked.user)?,
        }
        for group in &asked.groups {
            check("", "groups", "", group)?;
        }
        if let Some(uid) = &asked.uid {
            check("authentication.k8s.io", "uids", "", uid)?;
        }
        for (key, value) in &asked.extra {
            check("authentication.k8s.io", &format!("userextras/{key}"), "", value)?;
        }
        if asked.user != "system:anonymous" && !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".to_owned());
        }
        Ok(UserInfo { name: asked.user, groups })
    }

    fn authorize(
        &self,
        user: Option<&UserInfo>,
        verb: &str,
        target: Option<&Target>,
        path: &str,
        query: &Query,
    ) -> ApiResult<()> {
        // Without credentials a request is `system:anonymous`, whom RBAC allows only what
        // is bound to `system:unauthenticated` (upstream's `system:public-info-viewer`:
        // health and version); everything else answers 401, so clients offer credentials.
        let user = match user {
            Some(user) => user,
            None => {
                if target.is_some() || !crate::auth::is_public_path(path) {
                    return Err(ApiError::unauthorized());
                }
                let anonymous = crate::auth::anonymous();
                let attributes = Attributes {
                    verb,
                    group: "",
                    resource: "",
                    subresource: "",
                    namespace: "",
                    name: "",
                    path,
                };
                return match self.authorizer.authorize(&anonymous, &attributes) {
                    Decision::Allow => Ok(()),
                    Decision::Deny(_) => Err(ApiError::unauthorized()),
                };
            }
        };
        // A list or watch of one object by `metadata.name` is authorized as that object, as
        // upstream's request info does (it is how a node watches one Secret it may read).
        let selected = match (verb, query.get("fieldSelector")) {
            ("list" | "watch", Some(selector)) => selector
                .strip_prefix("metadata.name==")
                .or_else(|| selector.strip_prefix("metadata.name="))
                .filter(|name| !name.contains(',')),
            _ => None,
        };
        let attributes = Attributes {
            verb,
            group: target.map_or("", |t| t.rt.group.as_str()),
            resource: target.map_or("", |t| t.rt.plural.as_str()),
            subresource: target.and_then(|t| t.subresource.as_deref()).unwrap_or(""),
            namespace: target.and_then(|t| t.namespace.as_deref()).unwrap_or(""),
            name: target.and_then(|t| t.name.as_deref()).or(selected).unwrap_or(""),
            path,
        };
        match self.authorizer.authorize(user, &attributes) {
            Decision::Allow => Ok(()),
            Decision::Deny(reason) => Err(forbidden(user, &attributes, &reason)),
        }
    }

    /// `krust secrets-encrypt`: `GET status`, `POST prepare|rotate|reencrypt|rotate-keys`
    /// (`?force=true` skips the stage check). Authorized as a non-resource URL, so only
    /// those RBAC lets `get`/`create` it (cluster-admin) reach it.
    async fn serve_encryption(
        &self,
        method: &Method,
        command: &str,
        request: &Request<RequestBody>,
    ) -> ApiResult<Response<Body>> {
        use crate::encryption::EncryptionError;
        let Some(encryption) = &self.encryption else {
            return Err(ApiError::no_route());
        };
        let force = Query::parse(request.uri().query()).flag("force");
        let fail = |e: EncryptionError| match e {
            EncryptionError::Refused(m) => ApiError::bad_request(m),
            EncryptionError::Config(e) => ApiError::bad_request(e.to_string()),
            e => ApiError::internal(e.to_string()),
        };
        let post = || {
            if method == Method::POST {
                Ok(())
            } else {
                Err(ApiError::method_not_allowed(format!(
                    "{command} is a POST (this was {method})"
                )))
            }
        };
        let body = match command {
            "status" => serde_json::json!({"status": encryption.status()}),
            "prepare" => {
                post()?;
                serde_json::json!({"status": encryption.prepare(force).await.map_err(fail)?})
            }
            "rotate" => {
                post()?;
                serde_json::json!({"status": encryption.rotate(force).await.map_err(fail)?})
            }
            "reencrypt" => {
                post()?;
                let (status, done) = encryption.reencrypt_stage(force).await.map_err(fail)?;
                serde_json::json!({"status": status, "reencrypted": done})
            }
            "rotate-keys" => {
                post()?;
                let (status, done) = encryption.rotate_keys().await.map_err(fail)?;
                serde_json::json!({"status": status, "reencrypted": done})
            }
            _ => return Err(ApiError::no_route()),
        };
        Ok(json_response(StatusCode::OK, &body))
    }

    async fn serve_other(
        &self,
        method: &Method,
        path: &str,
        request: &Request<RequestBody>,
    ) -> ApiResult<Response<Body>> {
        if let Some(command) = path.strip_prefix(ENCRYPTION_PATH) {
            return self.serve_encryption(method, command, request).await;
        }
        if method != Method::GET && method != Method::HEAD {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({method})"
            )));
        }
        let accept = header_text(request, header::ACCEPT);
        let trimmed = path.trim_end_matches('/');
        match trimmed {
            "/version" => Ok(json_response(StatusCode::OK, &version_info())),
            "/healthz" | "/livez" => Ok(text_response("ok")),
            "/readyz" => match self.rest.store.current_revision().await {
                Ok(_) => Ok(text_response("ok")),
                Err(e) => Err(ApiError::internal(format!("readyz check failed: storage: {e}"))),
            },
            "/metrics" => {
                let status = self.rest.store.status().await.ok();
                let mut extra = String::new();
                use std::sync::atomic::Ordering;
                extra.push_str(&format!(
                    "krust_storage_compactions_total {}\n",
                    self.compactor.compactions.load(Ordering::Relaxed)
                ));
                extra.push_str(&format!(
                    "krust_storage_compaction_failures_total {}\n",
                    self.compactor.failures.load(Ordering::Relaxed)
                ));
                extra.push_str(&format!(
                    "krust_storage_last_compaction_timestamp_seconds {}\n",
                    self.compactor.last_success_unix.load(Ordering::Relaxed)
                ));
                if let Some(s) = status {
                    extra.push_str(&format!(
                        "krust_storage_revision {}\nkrust_storage_size_bytes {}\n",
                        s.revision, s.size_bytes
                    ));
                }
                let footprint = self.resource_metrics.footprint();
                extra.push_str(&format!(
                    "krust_resource_metrics_nodes {}\nkrust_resource_metrics_pods {}\nkrust_resource_metrics_containers {}\nkrust_resource_metrics_bytes {}\nkrust_resource_metrics_scrape_seconds {}\n",
                    footprint.nodes,
                    footprint.pods,
                    footprint.containers,
                    footprint.bytes,
                    self.resource_metrics.last_scrape().as_secs_f64()
                ));
                let mut r = Response::new(full(self.metrics.render(&extra)));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                Ok(r)
            }
            "/api" => {
                if accepts_aggregated(&accept) {
                    Ok(revalidated(
                        request,
                        aggregated_response(&discovery::aggregated(&self.registry, true)),
                    ))
                } else {
                    Ok(json_response(
                        StatusCode::OK,
                        &discovery::api_versions(&self.advertise_address),
                    ))
                }
            }
            "/apis" => {
                if accepts_aggregated(&accept) {
                    Ok(revalidated(
                        request,
                        aggregated_response(&discovery::aggregated(&self.registry, false)),
                    ))
                } else {
                    Ok(json_response(StatusCode::OK, &discovery::api_group_list(&self.registry)))
                }
            }
            // OpenAPI v2: kubectl before 1.27 fetches it (as protobuf) before every create or
            // apply, and reads from it which types support server-side dry run. It lists no
            // definitions, so such clients skip their client-side validation (the server
            // validates; `fieldValidation`) instead of failing.
            "/openapi/v2" => {
                let accept = header_text(request, header::ACCEPT);
                Ok(if accept.contains("protobuf") {
                    let mut r = Response::new(full(discovery::openapi_v2_protobuf(&self.registry)));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        // As upstream: the requested media type has an '@', which is no
                        // valid Content-Type (Go's clients reject it).
                        HeaderValue::from_static("application/octet-stream"),
                    );
                    r
                } else {
                    json_response(StatusCode::OK, &discovery::openapi_v2_json(&self.registry))
                })
            }
            "/openapi/v3" => Ok(json_response(
                StatusCode::OK,
                &discovery::openapi_root(&self.registry, &self.discovery_hash()),
            )),
            _ => {
                if let Some(gv) = trimmed.strip_prefix("/openapi/v3/") {
                    let doc = discovery::openapi_group_version(&self.registry, gv)
                        .ok_or_else(ApiError::no_route)?;
                    return Ok(revalidated(request, json_response(StatusCode::OK, &doc)));
                }
                let segments: Vec<&str> = trimmed.trim_start_matches('/').split('/').collect();
                let doc = match segments.as_slice() {
                    ["api", v] => discovery::api_resource_list(&self.registry, "", v),
                    ["apis", g] => discovery::api_group(&self.registry, g),
                    ["apis", g, v] => discovery::api_resource_list(&self.registry, g, v),
                    _ => None,
                };
                doc.map(|d| json_response(StatusCode::OK, &d)).ok_or_else(ApiError::no_route)
            }
        }
    }

    fn discovery_hash(&self) -> String {
        let names: Vec<String> = self
            .registry
            .all()
            .iter()
            .map(|t| format!("{}/{}/{}", t.group, t.version, t.plural))
            .collect();
        format!("{:016X}", fnv1a(names.join(",").as_bytes()))
    }

    /// The join endpoints (no client certificate needed: the token is the credential).
    /// The user a bootstrap token authenticates as for `usage`, read from its Secret.
    async fn bootstrap_user(
        &self,
        token: &str,
        usage: crate::bootstrap_token::Usage,
    ) -> Option<UserInfo> {
        let (id, _) = crate::bootstrap_token::parse(token)?;
        let secrets = self.registry.lookup("", "v1", "secrets")?;
        let stored = self
            .rest
            .get(
                &secrets,
                Some(crate::bootstrap_token::NAMESPACE),
                &crate::bootstrap_token::secret_name(id),
            )
            .await
            .ok()?;
        let now = jiff::Timestamp::now().as_second();
        match crate::bootstrap_token::check(&stored.object, token, usage, now) {
            Ok(user) => Some(user),
            Err(reason) => {
                tracing::debug!(reason, "a bootstrap token was refused");
                None
            }
        }
    }

    async fn serve_join(
        &self,
        join: &crate::join::NodeJoin,
        request: Request<RequestBody>,
        user: Option<&UserInfo>,
    ) -> ApiResult<Response<Body>> {
        if request.uri().path() == crate::join::CACERTS_PATH {
            return Ok(text_response(join.pki.ca_cert_pem.clone()));
        }
        if request.method() != Method::POST {
            return Err(ApiError::method_not_allowed("node credentials are requested with POST"));
        }
        let peer = request.extensions().get::<PeerAddr>().map(|p| p.0.ip());
        let now = std::time::Instant::now();
        if let Some(wait) = peer.and_then(|p| join.failures.wait(p, now)) {
            let mut e = ApiError::too_many_requests(
                "too many failed join attempts from this address, try again later",
            );
            e.retry_after = Some(u32::try_from(wait.as_secs()).unwrap_or(u32::MAX).max(1));
            return Err(e);
        }
        let auth = header_text(&request, header::AUTHORIZATION);
        let token = auth.strip_prefix("Bearer ").unwrap_or("").trim().to_owned();
        let accepted = !token.is_empty()
            && (join.accepts(&token) || {
                // A bootstrap token (`krust token create`), bare or as `K10<CA hash>::<token>`.
                let (hash, secret) = pki::join::parse_token(&token);
                hash.is_none_or(|h| h == pki::join::ca_hash(&join.pki.ca_cert_pem))
                    && crate::bootstrap_token::parse(&secret).is_some()
                    && self
                        .bootstrap_user(&secret, crate::bootstrap_token::Usage::Authentication)
                        .await
                        .is_some()
            });
        if !accepted {
            if let Some(peer) = peer {
                join.failures.record(peer, now);
            }
            tracing::warn!(peer = ?peer, "a node join was refused: wrong token");
            return Err(ApiError::unauthorized());
        }
        let content_type = header_text(&request, header::CONTENT_TYPE);
        let body = read_body(request, &content_type).await?;
        let name = body["nodeName"].as_str().unwrap_or("").trim();
        // A name a live node holds is that node's: only its own credentials may renew it.
        let own = user.and_then(crate::node_authorizer::node_of) == Some(name);
        if !own && self.node_is_live(name).await? {
            tracing::warn!(node = name, ?peer, "a node join was refused: the name is in use");
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!(
                    "node \"{name}\" is held by a live node: join with another name, or with that node's own credentials"
                ),
            ));
        }
        Ok(json_response(StatusCode::OK, &join.credentials(&body, peer)?))
    }

    /// Whether a node of that name renewed its Lease within the lease's duration.
    async fn node_is_live(&self, name: &str) -> ApiResult<bool> {
        let Some(leases) = self.registry.lookup("coordination.k8s.io", "v1", "leases") else {
            return Ok(false);
        };
        let lease = match self.rest.get(&leases, Some("kube-node-lease"), name).await {
            Ok(stored) => stored.object,
            Err(e) if e.code == 404 => return Ok(false),
            Err(e) => return Err(e),
        };
        let renewed = lease
            .pointer("/spec/renewTime")
            .and_then(Value::as_str)
            .and_then(|t| t.parse::<jiff::Timestamp>().ok());
        let duration =
            lease.pointer("/spec/leaseDurationSeconds").and_then(Value::as_i64).unwrap_or(40);
        Ok(renewed.is_some_and(|t| jiff::Timestamp::now().duration_since(t).as_secs() < duration))
    }

    /// `pods/proxy`: the pod named `NAME[:PORT]` (or `http:NAME:PORT`) gets the request.
    async fn serve_pod_proxy(
        &self,
        request: Request<RequestBody>,
        target: Target,
    ) -> ApiResult<Response<Body>> {
        let namespace = target.namespace.clone().unwrap_or_default();
        let raw = target.name.clone().ok_or_else(ApiError::no_route)?;
        let parts: Vec<&str> = raw.split(':').collect();
        let (scheme, name, port) = match parts.as_slice() {
            [name] => ("", *name, ""),
            [name, port] => ("", *name, *port),
            [scheme @ ("http" | "https"), name, port] => (*scheme, *name, *port),
            [scheme, _, _] => {
                return Err(ApiError::bad_request(format!(
                    "proxying over {scheme} is not supported"
                )));
            }
            _ => return Err(ApiError::bad_request(format!("invalid proxy name {raw:?}"))),
        };
        // The request's path up to `/proxy`: links in an HTML answer are rewritten under it.
        let prefix = {
            let path = request.uri().path();
            let marker = format!("/{raw}/proxy");
            path.find(&marker).map(|at| path[..at + marker.len()].to_owned()).unwrap_or_default()
        };
        let target_options = crate::proxy::Target { tls: scheme == "https", prefix };
        let object = self.rest.get(&target.rt, Some(&namespace), name).await?.object;
        let path = target.proxy_path.clone().unwrap_or_else(|| "/".to_owned());
        let path_and_query = match request.uri().query() {
            Some(q) if !q.is_empty() => format!("{path}?{q}"),
            _ => path,
        };
        if target.rt.kind == "Service" {
            // Through one of the Service's endpoints, as upstream's service proxy does.
            let endpoints = self
                .registry
                .lookup("", "v1", "endpoints")
                .ok_or_else(|| ApiError::internal("endpoints are not served"))?;
            let listed = match self.rest.get(&endpoints, Some(&namespace), name).await {
                Ok(e) => e.object,
                Err(e) if e.code == 404 => Value::Null,
                Err(e) => return Err(e),
            };
            let addr = crate::proxy::service_endpoint(&object, &listed, port)?;
            return crate::proxy::forward_to(addr, request, &path_and_query, &target_options).await;
        }
        crate::proxy::forward_to_pod(&object, port, request, &path_and_query, &target_options).await
    }

    /// Logs, exec, attach and port-forward: checked here, served by the pod's node agent.
    async fn serve_pod_stream(
        &self,
        request: Request<RequestBody>,
        target: Target,
        query: &Query,
    ) -> ApiResult<Response<Body>> {
        let sub = target.subresource.clone().unwrap_or_default();
        let namespace = target.namespace.clone().unwrap_or_default();
        let name = target.name.clone().ok_or_else(ApiError::no_route)?;
        let pod = self.rest.get(&target.rt, Some(&namespace), &name).await?.object;
        if sub != "log" {
            let attributes = crate::admission::Attributes {
                operation: crate::admission::Operation::Connect,
                rt: &target.rt,
                subresource: Some(&sub),
                namespace: Some(&namespace),
                name: &name,
                old: Some(&pod),
                dry_run: false,
                user: None,
            };
            let _holds = self.rest.admission.mutate(self.rest.as_ref(), &attributes, None).await?;
            self.rest.admission.validate(self.rest.as_ref(), &attributes, None).await?;
        }
        let node = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("");
        if node.is_empty() {
            return Err(ApiError::bad_request(format!("pod {name} does not have a host assigned")));
        }
        let proxy = self.node_proxy.as_ref().ok_or_else(|| {
            ApiError::new(503, "ServiceUnavailable", "this API server does not reach node agents")
        })?;
        let nodes = self
            .registry
            .lookup("", "v1", "nodes")
            .ok_or_else(|| ApiError::internal("nodes are not served"))?;
        let node_object = self.rest.get(&nodes, None, node).await?.object;
        let addr = crate::proxy::node_endpoint(&node_object)
            .ok_or_else(|| ApiError::internal(format!("node {node} has no address")))?;
        let raw_query = request.uri().query().unwrap_or("").to_owned();
        let path = if sub == "portforward" {
            format!("/portForward/{namespace}/{name}?{raw_query}")
        } else {
            let container = crate::proxy::container_for(&pod, query.get("container"), &name)?;
            let kind = match sub.as_str() {
                "log" => "containerLogs",
                "exec" => "exec",
                _ => "attach",
            };
            format!("/{kind}/{namespace}/{name}/{container}?{raw_query}")
        };
        proxy.forward(addr, request, &path).await
    }

    async fn serve_resource(
        self: Arc<Self>,
        request: Request<RequestBody>,
        target: Target,
        verb: &str,
        query: Query,
        user: Option<&UserInfo>,
    ) -> ApiResult<Response<Body>> {
        if target.rt.create_only {
            if verb != "create" {
                return Err(ApiError::method_not_allowed(format!(
                    "{} only supports create",
                    target.rt.plural
                )));
            }
            // A review is no object with metadata: it has no Table form (upstream's 406).
            if only_table(&header_text(&request, header::ACCEPT)) {
                return Err(ApiError::not_acceptable(format!(
                    "the resource {} does not support being converted to a Table",
                    target.rt.plural
                )));
            }
            let content_type = header_text(&request, header::CONTENT_TYPE);
            let user_agent = header_text(&request, header::USER_AGENT);
            let body = read_body(request, &content_type).await?;
            if let Some(("pods", "binding")) = target.rt.strategy.redirects_to() {
                // The object the body names gets the create, through its subresource.
                let name = body.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
                let ns = target.namespace.as_deref().unwrap_or("");
                let options = write_options(&query, &user_agent, user)?;
                let answer = crate::pods::bind(&self.rest, ns, name, &body, &options).await?;
                return Ok(json_response(StatusCode::CREATED, &answer));
            }
            let user = user.ok_or_else(ApiError::unauthorized)?;
            if target.rt.plural == "tokenreviews"
                && let Some(tokens) = &self.tokens
            {
                let answered = self.token_review(tokens, &target.rt, body).await?;
                return Ok(json_response(StatusCode::CREATED, &answered));
            }
            let answered = self.review(&target.rt, body, user, target.namespace.as_deref())?;
            return Ok(json_response(StatusCode::CREATED, &answered));
        }
        let accept = header_text(&request, header::ACCEPT);
        let content_type = header_text(&request, header::CONTENT_TYPE);
        let user_agent = header_text(&request, header::USER_AGENT);
        let rt = target.rt.clone();
        let ns = target.namespace.as_deref();
        let table = wants_table(&accept);
        let include = IncludeObject::parse(query.get("includeObject"))?;
        if let (Some(sub @ ("binding" | "eviction")), Some(ns), Some(name)) =
            (target.subresource.as_deref(), ns, target.name.as_deref())
        {
            if verb != "create" {
                return Err(ApiError::method_not_allowed(format!(
                    "pods/{sub} only supports create"
                )));
            }
            let body = read_body(request, &content_type).await?;
            let answer = if sub == "binding" {
                let options = write_options(&query, &user_agent, user)?;
                crate::pods::bind(&self.rest, ns, name, &body, &options).await?
            } else {
                let options = delete_options(&query, &[], &content_type, user, false)?;
                crate::pods::evict(&self.rest, ns, name, &body, options).await?
            };
            return Ok(json_response(StatusCode::CREATED, &answer));
        }
        if let (Some("token"), Some(ns), Some(name)) =
            (target.subresource.as_deref(), ns, target.name.as_deref())
        {
            if verb != "create" {
                return Err(ApiError::method_not_allowed(
                    "serviceaccounts/token only supports create",
                ));
            }
            let tokens = self.tokens.as_ref().ok_or_else(|| {
                ApiError::method_not_allowed("this server issues no ServiceAccount tokens")
            })?;
            let body = read_body(request, &content_type).await?;
            // Admission sees the request (NodeRestriction: a node asks only for its pods).
            let attributes = crate::admission::Attributes {
                operation: crate::admission::Operation::Create,
                rt: &rt,
                subresource: Some("token"),
                namespace: Some(ns),
                name,
                old: None,
                dry_run: false,
                user,
            };
            self.rest.admission.validate(self.rest.as_ref(), &attributes, Some(&body)).await?;
            let answer = tokens.request(&self.rest, ns, name, &body).await?;
            return Ok(json_response(StatusCode::CREATED, &answer));
        }
        if rt.strategy.is_computed() {
            let labels = query.get("labelSelector").unwrap_or("");
            LabelSelector::parse(labels)?;
            let request = crate::strategy::ComputedRequest {
                source: self.rest.as_ref(),
                namespace: ns,
                name: target.name.as_deref(),
                labels,
                metrics: &self.resource_metrics,
            };
            let protobuf = accept.split(',').any(crate::protobuf::is_protobuf);
            return self.serve_computed(&rt, verb, request, table, protobuf, include).await;
        }
        match verb {
            "get" => {
                let name = target.name.as_deref().unwrap_or("");
                let stored = self.rest.get(&rt, ns, name).await?;
                if target.subresource.as_deref() == Some("scale") {
                    return Ok(json_response(StatusCode::OK, &scale_of(&rt, &stored.object)));
                }
                if table {
                    let rv = stored.mod_revision.to_string();
                    return Ok(table_response(&table::table(
                        &rt.strategy.columns(),
                        &|o, now| rt.strategy.cells(o, now),
                        &[stored.object],
                        include,
                        json!({"resourceVersion": rv}),
                        true,
                    )));
                }
                Ok(json_response(StatusCode::OK, &stored.object))
            }
            "list" => {
                let options = list_options(&rt, &query)?;
                let page = self.rest.list(&rt, ns, &options).await?;
                let mut meta = json!({"resourceVersion": page.revision.to_string()});
                if let Some(token) = &page.continue_token {
                    meta["continue"] = json!(token);
                }
                if table {
                    return Ok(table_response(&table::table(
                        &rt.strategy.columns(),
                        &|o, now| rt.strategy.cells(o, now),
                        &page.objects()?,
                        include,
                        meta,
                        true,
                    )));
                }
                Ok(list_response(&rt, &meta, &page.items))
            }
            "watch" => self.watch(rt, target.namespace, target.name, &query, table, include).await,
            "create" => {
                if target.name.is_some() {
                    return Err(ApiError::method_not_allowed(
                        "POST is not supported on a named object",
                    ));
                }
                let options = write_options(&query, &user_agent, user)?;
                let (body, duplicates) = read_body_checked(request, &content_type).await?;
                let mut warnings = duplicate_fields(options.field_validation, &duplicates)?;
                let (object, more) = self.rest.create(&rt, ns, body, &options).await?;
                warnings.extend(more);
                self.after_write(&rt, &object.object, false, options.dry_run).await;
                Ok(with_warnings(written_response(StatusCode::CREATED, object), &warnings))
            }
            "update" => {
                let name = target.name.clone().unwrap_or_default();
                let options = write_options(&query, &user_agent, user)?;
                let (body, duplicates) = read_body_checked(request, &content_type).await?;
                let mut warnings = duplicate_fields(options.field_validation, &duplicates)?;
                if target.subresource.as_deref() == Some("scale") {
                    return self.update_scale(&rt, ns, &name, body, &options).await;
                }
                let (object, more) = self
                    .rest
                    .update(&rt, ns, &name, body, target.subresource.as_deref(), &options)
                    .await?;
                warnings.extend(more);
                self.after_write(&rt, &object.object, false, options.dry_run).await;
                Ok(with_warnings(written_response(StatusCode::OK, object), &warnings))
            }
            "patch" => {
                let name = target.name.clone().unwrap_or_default();
                let patch_type = PatchType::from_content_type(&content_type).ok_or_else(|| {
                    ApiError::unsupported_media_type(format!(
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {content_type:?})"
                    ))
                })?;
                if patch_type == PatchType::Apply
                    && query.get("fieldManager").is_none_or(str::is_empty)
                {
                    return Err(ApiError::invalid(
                        "PatchOptions",
                        "meta.k8s.io",
                        "",
                        vec![crate::status::Cause::new(
                            "FieldValueRequired",
                            "fieldManager",
                            "Required value: is required for apply patch",
                        )],
                    ));
                }
                if patch_type != PatchType::Apply && query.get("force").is_some() {
                    return Err(ApiError::invalid(
                        "PatchOptions",
                        "meta.k8s.io",
                        "",
                        vec![crate::status::Cause::new(
                            "FieldValueForbidden",
                            "force",
                            "Forbidden: may not be specified for non-apply patch",
                        )],
                    ));
                }
                let bytes = read_bytes(request).await?;
                let options = write_options(&query, &user_agent, user)?;
                let _permit =
                    if patch_type == PatchType::Apply { Some(yaml_permit().await) } else { None };
                let (patch, duplicates) =
                    parse_body_checked(&bytes, patch_type == PatchType::Apply)?;
                let duplicate_warnings = duplicate_fields(options.field_validation, &duplicates)?;
                if target.subresource.as_deref() == Some("scale") {
                    let current = self.rest.get(&rt, ns, &name).await?;
                    let scale = scale_of(&rt, &current.object);
                    let patched = match patch_type {
                        PatchType::Json => crate::patch::json_patch(&scale, &patch)?,
                        _ => crate::patch::merge_patch(&scale, &patch),
                    };
                    return self.update_scale(&rt, ns, &name, patched, &options).await;
                }
                let (object, mut warnings, created) = self
                    .rest
                    .patch(
                        &rt,
                        ns,
                        &name,
                        patch_type,
                        patch,
                        target.subresource.as_deref(),
                        &options,
                    )
                    .await?;
                warnings.splice(0..0, duplicate_warnings);
                self.after_write(&rt, &object.object, false, options.dry_run).await;
                let code = if created { StatusCode::CREATED } else { StatusCode::OK };
                Ok(with_warnings(written_response(code, object), &warnings))
            }
            "delete" => {
                let name = target.name.clone().unwrap_or_default();
                let bytes = read_bytes(request).await?;
                let options =
                    delete_options(&query, &bytes, &content_type, user, rt.orphans_by_default())?;
                let object = self.rest.delete(&rt, ns, &name, &options).await?;
                self.after_write(&rt, &object, true, options.dry_run).await;
                Ok(json_response(StatusCode::OK, &object))
            }
            "deletecollection" => {
                let bytes = read_bytes(request).await?;
                let options =
                    delete_options(&query, &bytes, &content_type, user, rt.orphans_by_default())?;
                let list = list_options(&rt, &query)?;
                let page = self
                    .rest
                    .list(&rt, ns, &ListOptions { limit: 0, continue_token: None, ..list })
                    .await?;
                let mut deleted = Vec::new();
                for item in &page.items {
                    // Only the identity is read: an item too deep to decode is still deleted.
                    let Some((name, item_ns)) = crate::rest::identity_of(item) else {
                        return Err(ApiError::internal("a listed object has no readable metadata"));
                    };
                    match self.rest.delete(&rt, item_ns.as_deref(), &name, &options).await {
                        Ok(obj) => deleted.push(obj),
                        Err(e) if e.code == 404 => {}
                        Err(e) => return Err(e),
                    }
                }
                let list = json!({"kind": rt.list_kind, "apiVersion": rt.api_version(), "metadata": {}, "items": deleted});
                Ok(json_response(StatusCode::OK, &list))
            }
            _ => Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            )),
        }
    }

    async fn update_scale(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        scale: Value,
        options: &WriteOptions,
    ) -> ApiResult<Response<Body>> {
        let replicas = scale.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0);
        if replicas < 0 {
            return Err(ApiError::invalid(
                "Scale",
                "autoscaling",
                name,
                vec![crate::status::Cause::new(
                    "FieldValueInvalid",
                    "spec.replicas",
                    format!("Invalid value: {replicas}: must be greater than or equal to 0"),
                )],
            ));
        }
        let spec_path = rt.scale_paths.as_ref().map_or("/spec/replicas", |p| &p.spec_replicas);
        // The replicas at their path, as a merge patch: `{"spec": {"replicas": n}}`.
        let mut patch = json!(replicas);
        for part in spec_path.trim_start_matches('/').split('/').rev() {
            patch = json!({ part: patch });
        }
        if let Some(rv) = scale
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            patch["metadata"] = json!({"resourceVersion": rv});
        }
        let (object, _, _) =
            self.rest.patch(rt, ns, name, PatchType::Merge, patch, Some("scale"), options).await?;
        Ok(json_response(StatusCode::OK, &scale_of(rt, &object.object)))
    }

    /// What follows a successful write of some types: namespace finalization, and serving (or
    /// no longer serving) the types a CRD defines.
    async fn after_write(
        self: &Arc<Self>,
        rt: &ResourceType,
        object: &Value,
        deleted: bool,
        dry_run: bool,
    ) {
        if dry_run {
            return;
        }
        if rt.strategy.defines_types() {
            if let Err(e) = crate::crd::sync(&self.rest).await {
                tracing::warn!(error = %e, "syncing custom resource types failed");
            }
            // A deleted (or deleting) definition is no longer served; its objects go too.
            if deleted && let Err(e) = crate::crd::delete_instances(&self.rest, object).await {
                tracing::warn!(error = %e, "deleting custom resources of a deleted CRD failed");
            }
        }
    }

    /// Reads of a type computed from the server's own state (component statuses): get and
    /// list only, as upstream.
    async fn serve_computed(
        &self,
        rt: &ResourceType,
        verb: &str,
        request: crate::strategy::ComputedRequest<'_>,
        table: bool,
        protobuf: bool,
        include: IncludeObject,
    ) -> ApiResult<Response<Body>> {
        let name = request.name;
        if protobuf
            && !table
            && (verb == "get" || verb == "list")
            && let Some(encoding) = rt.strategy.computed_protobuf(request, verb == "list")
        {
            let mut r = Response::new(full(encoding.await?));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/vnd.kubernetes.protobuf"),
            );
            return Ok(r);
        }
        let mut objects = rt.strategy.computed_objects(request).await?;
        match verb {
            "get" => {
                let name = name.unwrap_or("");
                objects
                    .retain(|o| o.pointer("/metadata/name").and_then(Value::as_str) == Some(name));
                let object = objects
                    .pop()
                    .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
                if table {
                    return Ok(table_response(&table::table(
                        &rt.strategy.columns(),
                        &|o, now| rt.strategy.cells(o, now),
                        &[object],
                        include,
                        json!({}),
                        true,
                    )));
                }
                Ok(json_response(StatusCode::OK, &object))
            }
            "list" => {
                if table {
                    return Ok(table_response(&table::table(
                        &rt.strategy.columns(),
                        &|o, now| rt.strategy.cells(o, now),
                        &objects,
                        include,
                        json!({}),
                        true,
                    )));
                }
                let list = json!({"kind": rt.list_kind, "apiVersion": rt.api_version(), "metadata": {}, "items": objects});
                Ok(json_response(StatusCode::OK, &list))
            }
            _ => Err(ApiError::method_not_allowed(format!(
                "{} only support get and list",
                rt.plural
            ))),
        }
    }

    /// Answers a review (`kubectl auth can-i`, `auth can-i --list`, `auth whoami`, token and
    /// access reviews) for `user`.
    /// A TokenReview, answered by the ServiceAccount token authenticator.
    async fn token_review(
        &self,
        tokens: &crate::tokens::ServiceAccountTokens,
        rt: &ResourceType,
        body: Value,
    ) -> ApiResult<Value> {
        let (mut review, _) = rt.canonicalize(body, FieldValidation::Ignore)?;
        let token = review.pointer("/spec/token").and_then(Value::as_str).unwrap_or("");
        if token.is_empty() {
            return Err(ApiError::invalid(
                "TokenReview",
                "authentication.k8s.io",
                "",
                vec![crate::status::Cause::new(
                    "FieldValueRequired",
                    "spec.token",
                    "Required value",
                )],
            ));
        }
        let asked: Vec<String> = review
            .pointer("/spec/audiences")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default();
        let wanted = if asked.is_empty() { tokens.audiences.clone() } else { asked };
        let mut from_file = self.token_file.as_ref().and_then(|f| f.user(token));
        if from_file.is_none() && crate::bootstrap_token::parse(token).is_some() {
            from_file =
                self.bootstrap_user(token, crate::bootstrap_token::Usage::Authentication).await;
        }
        if from_file.is_none()
            && let Some(oidc) = self.oidc.as_ref().filter(|o| o.claims_to_be_ours(token))
        {
            from_file = oidc.authenticate(token).await;
        }
        let found = match from_file {
            // A static token is for the API server's audiences.
            Some(user) => {
                let ours: Vec<String> =
                    wanted.iter().filter(|w| tokens.audiences.contains(w)).cloned().collect();
                (!ours.is_empty()).then_some((user, ours))
            }
            None => tokens.review(&self.rest, token, &wanted).await,
        };
        let status = match found {
            Some((user, audiences)) => json!({
                "authenticated": true,
                "user": {"username": user.name, "groups": user.groups},
                "audiences": audiences,
            }),
            None => json!({"authenticated": false, "user": {}, "error": "invalid bearer token"}),
        };
        if let Some(obj) = review.as_object_mut() {
            obj.insert("apiVersion".into(), json!(rt.api_version()));
            obj.insert("kind".into(), json!(rt.kind));
            obj.insert("metadata".into(), json!({"creationTimestamp": null}));
            obj.insert("status".into(), status);
        }
        Ok(review)
    }

    fn review(
        &self,
        rt: &ResourceType,
        body: Value,
        user: &UserInfo,
        namespace: Option<&str>,
    ) -> ApiResult<Value> {
        let (mut review, _) = rt.canonicalize(body, FieldValidation::Ignore)?;
        let context = crate::strategy::ReviewContext {
            user,
            authorizer: self.authorizer.as_ref(),
            namespace,
        };
        let status = rt.strategy.review(&review, &context)?;
        if let Some(obj) = review.as_object_mut() {
            obj.insert("apiVersion".into(), json!(rt.api_version()));
            obj.insert("kind".into(), json!(rt.kind));
            let mut meta = json!({"creationTimestamp": null});
            if let Some(ns) = namespace {
                meta["namespace"] = json!(ns);
            }
            obj.insert("metadata".into(), meta);
            obj.insert("status".into(), status);
        }
        Ok(review)
    }
}

/// FNV-1a: a stable, dependency-free fingerprint for the OpenAPI cache buster.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf29ce484222325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    hash
}

/// A list response assembled from the items' stored JSON, which is never decoded on this path.
fn list_response(rt: &ResourceType, meta: &Value, items: &[Bytes]) -> Response<Body> {
    let head =
        json!({"kind": rt.list_kind, "apiVersion": rt.api_version(), "metadata": meta}).to_string();
    let size = head.len() + items.iter().map(|i| i.len() + 1).sum::<usize>() + 16;
    let mut body = Vec::with_capacity(size);
    // `head` is an object; reopen it to append the items.
    body.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
    body.extend_from_slice(b",\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.extend_from_slice(b"]}");
    let mut response = Response::new(full(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn text_response(text: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(text));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Adds an `ETag` to a whole response and answers `304 Not Modified` when the client's
/// `If-None-Match` names it (kubectl's HTTP cache revalidates discovery and OpenAPI this way).
fn revalidated(request: &Request<RequestBody>, response: Response<Body>) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    // Responses built here hold their whole body, so collecting it completes at once.
    let Some(bytes) = body.collect().now_or_never().and_then(Result::ok).map(|c| c.to_bytes())
    else {
        return Response::from_parts(parts, full(Bytes::new()));
    };
    let etag = format!("\"{:016X}\"", fnv1a(&bytes));
    let matches = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        parts.headers.insert(header::ETAG, value);
    }
    if matches {
        parts.status = StatusCode::NOT_MODIFIED;
        return Response::from_parts(parts, full(Bytes::new()));
    }
    Response::from_parts(parts, full(bytes))
}

fn aggregated_response(value: &Value) -> Response<Body> {
    let mut r = json_response(StatusCode::OK, value);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(discovery::AGGREGATED_CONTENT_TYPE));
    r.headers_mut().insert(header::VARY, HeaderValue::from_static("Accept"));
    r
}

fn table_response(value: &Value) -> Response<Body> {
    let mut r = json_response(StatusCode::OK, value);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;as=Table;v=v1;g=meta.k8s.io"),
    );
    r
}

fn scale_of(rt: &ResourceType, object: &Value) -> Value {
    let (spec_path, status_path) = match &rt.scale_paths {
        Some(paths) => (paths.spec_replicas.as_str(), paths.status_replicas.as_str()),
        None => ("/spec/replicas", "/status/replicas"),
    };
    let selector = match &rt.scale_paths {
        // A custom resource keeps its selector as the string the scale shows.
        Some(paths) => paths
            .label_selector
            .as_deref()
            .and_then(|p| object.pointer(p))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        None => {
            // A ReplicationController's selector is a plain label map; the apps kinds' are
            // LabelSelectors.
            let selector = object.pointer("/spec/selector");
            let structured = selector.and_then(Value::as_object).is_some_and(|m| {
                m.contains_key("matchLabels") || m.contains_key("matchExpressions")
            });
            if structured {
                table::label_selector_string(selector)
            } else {
                table::label_map_string(selector)
            }
        }
    };
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": object.pointer("/metadata/name"),
            "namespace": object.pointer("/metadata/namespace"),
            "uid": object.pointer("/metadata/uid"),
            "resourceVersion": object.pointer("/metadata/resourceVersion"),
            "creationTimestamp": object.pointer("/metadata/creationTimestamp"),
        },
        "spec": {"replicas": object.pointer(spec_path).and_then(Value::as_i64).unwrap_or(0)},
        "status": {"replicas": object.pointer(status_path).and_then(Value::as_i64).unwrap_or(0), "selector": selector},
    })
}

pub(crate) fn list_options(rt: &ResourceType, query: &Query) -> ApiResult<ListOptions> {
    Ok(ListOptions {
        labels: LabelSelector::parse(query.get("labelSelector").unwrap_or(""))?,
        fields: FieldSelector::parse(
            query.get("fieldSelector").unwrap_or(""),
            rt.strategy.selectable_fields(),
        )?,
        limit: match query.get("limit") {
            Some(l) if !l.is_empty() => l
                .parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("limit: invalid value {l:?}")))?
                .max(0) as usize,
            _ => 0,
        },
        continue_token: query.get("continue").filter(|c| !c.is_empty()).map(str::to_owned),
        resource_version: query.get("resourceVersion").map(str::to_owned),
        resource_version_match: query.get("resourceVersionMatch").map(str::to_owned),
    })
}

fn write_options(
    query: &Query,
    user_agent: &str,
    user: Option<&UserInfo>,
) -> ApiResult<WriteOptions> {
    Ok(WriteOptions {
        dry_run: dry_run(query)?,
        field_validation: FieldValidation::parse(query.get("fieldValidation"))?,
        field_manager: field_manager(query, user_agent),
        force: query.flag("force"),
        user: user.cloned(),
    })
}

/// The options of a delete. `orphan_by_default`: the resource's dependents are orphaned
/// when the request says nothing of them (see `ResourceType::orphans_by_default`).
fn delete_options(
    query: &Query,
    body: &[u8],
    content_type: &str,
    user: Option<&UserInfo>,
    orphan_by_default: bool,
) -> ApiResult<DeleteOptions> {
    let mut options = DeleteOptions {
        user: user.cloned(),
        propagation_policy: query.get("propagationPolicy").map(str::to_owned),
        grace_period_seconds: query.get("gracePeriodSeconds").and_then(|g| g.parse().ok()),
        dry_run: dry_run(query)?,
        ..DeleteOptions::default()
    };
    let mut orphan_dependents = query.get("orphanDependents").map(|o| o == "true");
    if !body.is_empty() {
        let value: Value = if protobuf::is_protobuf(content_type) {
            protobuf::decode_object(body)?
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?
        };
        if let Some(p) = value.get("propagationPolicy").and_then(Value::as_str) {
            if !["Foreground", "Background", "Orphan"].contains(&p) {
                return Err(ApiError::bad_request(format!(
                    "propagationPolicy: Unsupported value: \"{p}\""
                )));
            }
            options.propagation_policy = Some(p.to_owned());
        }
        if let Some(o) = value.get("orphanDependents").and_then(Value::as_bool) {
            orphan_dependents = Some(o);
        }
        if let Some(g) = value.get("gracePeriodSeconds").and_then(Value::as_i64) {
            options.grace_period_seconds = Some(g);
        }
        if let Some(d) = value.get("dryRun").and_then(Value::as_array) {
            options.dry_run |= d.iter().any(|v| v == "All");
        }
        options.precondition_uid =
            value.pointer("/preconditions/uid").and_then(Value::as_str).map(str::to_owned);
        options.precondition_rv = value
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_owned);
    }
    // A policy decides; else the deprecated `orphanDependents` (false: dependents go in the
    // background); else the resource's own default.
    if options.propagation_policy.is_none() && orphan_dependents.unwrap_or(orphan_by_default) {
        options.propagation_policy = Some("Orphan".into());
    }
    Ok(options)
}

async fn read_bytes(request: Request<RequestBody>) -> ApiResult<Bytes> {
    let mut body = request.into_body();
    let mut buffer = bytes::BytesMut::new();
    let mut too_large = false;
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("reading request body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        seen += data.len();
        if seen > MAX_BODY_BYTES {
            // Keep reading (and dropping) so the client finishes sending and sees our 413
            // instead of a reset connection; give up on absurd sizes.
            too_large = true;
            if seen > 16 * MAX_BODY_BYTES {
                break;
            }
            continue;
        }
        buffer.extend_from_slice(&data);
    }
    if too_large {
        return Err(ApiError::too_large(format!(
            "Request entity too large: limit is {MAX_BODY_BYTES}"
        )));
    }
    Ok(buffer.freeze())
}

/// Decodes a JSON (or, where allowed, YAML) body, with the paths of its duplicate keys.
fn parse_body_checked(bytes: &[u8], allow_yaml: bool) -> ApiResult<(Value, Vec<String>)> {
    match crate::json::decode(bytes) {
        Ok((v, duplicates)) if v.is_object() || v.is_array() => Ok((v, duplicates)),
        Ok(_) => Err(ApiError::bad_request("the request body must be a JSON object")),
        Err(e) if allow_yaml => parse_yaml(bytes).map(|v| (v, Vec::new())).map_err(|yaml| {
            ApiError::bad_request(format!(
                "error decoding request body: not JSON ({e}) nor YAML ({yaml})"
            ))
        }),
        Err(e) => Err(ApiError::bad_request(format!("error decoding request body: {e}"))),
    }
}

/// Whether a YAML text defines an anchor (`&name` where a node can start). A string that
/// merely contains such text only gets the smaller node budget.
fn defines_anchors(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().any(|(i, b)| {
        *b == b'&'
            && (i == 0
                || matches!(bytes[i - 1], b' ' | b'\t' | b'\n' | b'[' | b'{' | b',' | b':' | b'-'))
            && bytes.get(i + 1).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
    })
}

/// A turn at decoding YAML: at most two at once. A YAML body costs far more memory to decode
/// than its size (anchors are replayed), so its budget is per decode, and this keeps many
/// concurrent ones from multiplying it.
async fn yaml_permit() -> Option<tokio::sync::SemaphorePermit<'static>> {
    static YAML_DECODES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
    YAML_DECODES.acquire().await.ok()
}

/// Parses a YAML document into JSON (YAML bodies are a JSON superset upstream accepts).
pub(crate) fn parse_yaml(bytes: &[u8]) -> Result<Value, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
    // Aliases are bounded (billion laughs): a 3 MiB body never needs more than this.
    let mut budget = serde_saphyr::Budget::default();
    budget.max_aliases = 10_000;
    // Decoding costs memory per node produced, and only aliases make nodes out of nothing
    // (billion laughs: 16 refused bombs cost the server ~80 MiB at 100,000 nodes). A document
    // that defines anchors gets a node budget far above any real manifest's; one without
    // them cannot have more nodes than its 3 MiB of text.
    budget.max_nodes = if defines_anchors(text) {
        crate::limits::MAX_YAML_ANCHORED_NODES
    } else {
        crate::limits::MAX_YAML_NODES
    };
    budget.max_recorded_anchor_bytes = 4 * 1024 * 1024;
    budget.max_total_scalar_bytes = 8 * 1024 * 1024;
    budget.max_events = 2 * crate::limits::MAX_YAML_NODES;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    let value: Value =
        serde_saphyr::from_str_with_options(text, options).map_err(|e| e.to_string())?;
    if value.is_object() || value.is_array() { Ok(value) } else { Err("not an object".into()) }
}

async fn read_body(request: Request<RequestBody>, content_type: &str) -> ApiResult<Value> {
    read_body_checked(request, content_type).await.map(|(v, _)| v)
}

/// What `fieldValidation` makes of duplicate keys in a body: a 400 under Strict, warnings
/// under Warn, nothing under Ignore (upstream's strict decoding).
fn duplicate_fields(validation: FieldValidation, duplicates: &[String]) -> ApiResult<Vec<String>> {
    if duplicates.is_empty() {
        return Ok(Vec::new());
    }
    let messages: Vec<String> =
        duplicates.iter().map(|d| format!("duplicate field \"{d}\"")).collect();
    match validation {
        FieldValidation::Strict => {
            Err(ApiError::bad_request(format!("strict decoding error: {}", messages.join(", "))))
        }
        FieldValidation::Warn => Ok(messages),
        FieldValidation::Ignore => Ok(Vec::new()),
    }
}

async fn read_body_checked(
    request: Request<RequestBody>,
    content_type: &str,
) -> ApiResult<(Value, Vec<String>)> {
    let media = content_type.split(';').next().unwrap_or("").trim();
    let protobuf = protobuf::is_protobuf(content_type);
    let yaml = media == "application/yaml";
    if !(protobuf || yaml || media.is_empty() || media == "application/json" || media == "*/*") {
        return Err(ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {media:?})"
        )));
    }
    let bytes = read_bytes(request).await?;
    let (value, duplicates) = if protobuf {
        (protobuf::decode_object(&bytes)?, Vec::new())
    } else if yaml {
        let _permit = yaml_permit().await;
        let value = parse_yaml(&bytes)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML body: {e}")))?;
        (value, Vec::new())
    } else {
        parse_body_checked(&bytes, false)?
    };
    if !value.is_object() {
        return Err(ApiError::bad_request("the request body must be a JSON object"));
    }
    Ok((value, duplicates))
}

fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "37",
        "emulationMajor": "1",
        "emulationMinor": "37",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "36",
        "gitVersion": GIT_VERSION,
        // The commit the binary was built from (set by scripts/install.sh); all zeros when
        // unknown, still the hex clients expect.
        "gitCommit": match option_env!("KRUST_GIT_COMMIT") {
            Some(commit) if !commit.is_empty() => commit,
            _ => "0000000000000000000000000000000000000000",
        },
        "gitTreeState": "clean",
        "buildDate": "2026-11-27T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH }),
    })
}

/// What the `Impersonate-*` headers ask to act as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Impersonation {
    user: String,
    groups: Vec<String>,
    uid: Option<String>,
    extra: Vec<(String, String)>,
}

/// The impersonation `request` asks for, if any; 400 for groups, a uid or extras without a
/// user, as upstream.
fn impersonation(request: &Request<RequestBody>) -> ApiResult<Option<Impersonation>> {
    let mut asked = Impersonation::default();
    let mut user = None;
    let mut any = false;
    for (name, value) in request.headers() {
        let name = name.as_str();
        if !name.starts_with("impersonate-") {
            continue;
        }
        any = true;
        let value = value
            .to_str()
            .map_err(|_| ApiError::bad_request(format!("invalid {name} header")))?
            .to_owned();
        match name {
            "impersonate-user" => user = Some(value),
            "impersonate-group" => asked.groups.push(value),
            "impersonate-uid" => asked.uid = Some(value),
            other => {
                if let Some(key) = other.strip_prefix("impersonate-extra-") {
                    asked.extra.push((key.to_owned(), value));
                }
            }
        }
    }
    if !any {
        return Ok(None);
    }
    asked.user = user.filter(|u| !u.is_empty()).ok_or_else(|| {
        ApiError::bad_request(
            "requested impersonation of groups, a uid or extras without impersonating a user",
        )
    })?;
    Ok(Some(asked))
}

/// A denied request's 403, worded as upstream's: what was refused, to whom, where.
fn forbidden(user: &UserInfo, attributes: &Attributes<'_>, reason: &str) -> ApiError {
    let who = &user.name;
    let verb = attributes.verb;
    let mut message = if attributes.resource.is_empty() {
        format!("forbidden: User \"{who}\" cannot {verb} path \"{}\"", attributes.path)
    } else {
        let mut resource = attributes.resource.to_owned();
        if !attributes.subresource.is_empty() {
            resource = format!("{resource}/{}", attributes.subresource);
        }
        let qualified = if attributes.group.is_empty() {
            attributes.resource.to_owned()
        } else {
            format!("{}.{}", attributes.resource, attributes.group)
        };
        let object = if attributes.name.is_empty() {
            qualified
        } else {
            format!("{qualified} \"{}\"", attributes.name)
        };
        let scope = if attributes.namespace.is_empty() {
            "at the cluster scope".to_owned()
        } else {
            format!("in the namespace \"{}\"", attributes.namespace)
        };
        format!(
            "{object} is forbidden: User \"{who}\" cannot {verb} resource \"{resource}\" in API group \"{}\" {scope}",
            attributes.group
        )
    };
    if !reason.is_empty() {
        message = format!("{message}: {reason}");
    }
    let error = ApiError::forbidden(message);
    if attributes.resource.is_empty() {
        error
    } else {
        error.with_details(attributes.group, attributes.resource, attributes.name)
    }
}

/// The bearer token of `request`'s `Authorization` header, if any.
/// Writes a request's last audit event, with the response's object when the level wants
/// it (never for a stream, whose body is still to come).
async fn audit_finish(
    pending: crate::audit::Pending,
    mut response: Response<Body>,
    streaming: bool,
) -> Response<Body> {
    let code = response.status().as_u16();
    let annotations =
        response.extensions_mut().remove::<crate::audit::Annotations>().unwrap_or_default();
    if streaming || !pending.wants_response_body() {
        pending.finish(code, streaming, None, annotations);
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    };
    pending.finish(code, false, Some(&bytes), annotations);
    Response::from_parts(parts, full(bytes))
}

fn bearer(request: &Request<RequestBody>) -> Option<&str> {
    let value = request.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_resolve_like_upstream_paths() {
        let registry = Registry::new();
        let resolve = |p: &str| match route(&registry, p) {
            Ok(Route::Resource(t)) => {
                Some((t.rt.plural.clone(), t.namespace, t.name, t.subresource))
            }
            _ => None,
        };
        assert_eq!(
            resolve("/api/v1/namespaces/default/pods"),
            Some(("pods".into(), Some("default".into()), None, None))
        );
        assert_eq!(
            resolve("/api/v1/namespaces/kube-system"),
            Some(("namespaces".into(), None, Some("kube-system".into()), None))
        );
        assert_eq!(
            resolve("/apis/apps/v1/namespaces/x/deployments/web/scale"),
            Some((
                "deployments".into(),
                Some("x".into()),
                Some("web".into()),
                Some("scale".into())
            ))
        );
        assert_eq!(
            resolve("/api/v1/nodes/n1/status"),
            Some(("nodes".into(), None, Some("n1".into()), Some("status".into())))
        );
        assert_eq!(resolve("/api/v1/pods"), Some(("pods".into(), None, None, None)));
        assert!(route(&registry, "/api/v1/foos").is_err());
        assert!(route(&registry, "/api/v1/namespaces/default/configmaps/x/scale").is_err());
    }

    #[test]
    fn query_decoding_and_accept_negotiation() {
        let q =
            Query::parse(Some("labelSelector=name%3Drel1%2Cowner%3Dhelm&watch=true&dryRun=All"));
        assert_eq!(q.get("labelSelector"), Some("name=rel1,owner=helm"));
        assert!(q.flag("watch"));
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
        assert!(accepts_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
        ));
    }
}
