//! Probes (startup, readiness, liveness) and lifecycle hooks. Each probe of a running
//! container runs in its own task at its own period and publishes its verdict in the
//! container's `ProbeState`, waking the pod worker only when a verdict changes, as upstream's
//! probe workers and results manager do.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ExecAction, GRPCAction, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::cri::{Runtime, SharedRuntime};

/// The outcome of one probe run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Passed.
    Success,
    /// Failed, with the reason shown in the `Unhealthy` event.
    Failure(String),
}

/// What the probes of one container concluded so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeState {
    /// The startup probe passed (or there is none).
    pub started: bool,
    /// The readiness probe passes (or there is none and the container started).
    pub ready: bool,
    /// The liveness (or startup) probe failed past its threshold: restart the container.
    pub kill: Option<String>,
}

/// Where probes connect: the pod's address and the container's exec target.
#[derive(Debug, Clone)]
pub struct Target {
    /// CRI container ID (for exec probes).
    pub container_id: String,
    /// The pod's address.
    pub pod_ip: String,
}

/// Runs one probe action.
pub async fn run(
    cri: &dyn Runtime,
    probe: &Probe,
    container: &Container,
    target: &Target,
) -> Outcome {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(exec) = &probe.exec {
        return run_exec(cri, exec, target, timeout).await;
    }
    if let Some(http) = &probe.http_get {
        return run_http(http, container, target, timeout).await;
    }
    if let Some(tcp) = &probe.tcp_socket {
        return run_tcp(tcp, container, target, timeout).await;
    }
    if let Some(grpc) = &probe.grpc {
        return run_grpc(grpc, target, timeout).await;
    }
    Outcome::Failure("probe has no action".into())
}

async fn run_exec(
    cri: &dyn Runtime,
    exec: &ExecAction,
    target: &Target,
    timeout: Duration,
) -> Outcome {
    let run = cri.exec_sync(
        target.container_id.clone(),
        exec.command.clone().unwrap_or_default(),
        timeout.as_secs() as i64,
    );
    match tokio::time::timeout(timeout + Duration::from_secs(1), run).await {
        Ok(Ok(r)) => {
            if r.exit_code == 0 {
                Outcome::Success
            } else {
                let mut out = String::from_utf8_lossy(&r.stdout).into_owned();
                out.push_str(&String::from_utf8_lossy(&r.stderr));
                Outcome::Failure(if out.trim().is_empty() {
                    format!(
                        "command {:?} exited with {}",
                        exec.command.clone().unwrap_or_default(),
                        r.exit_code
                    )
                } else {
                    out.trim().to_owned()
                })
            }
        }
        Ok(Err(e)) => Outcome::Failure(format!("exec failed: {}", e.message())),
        Err(_) => Outcome::Failure(format!("command timed out after {}s", timeout.as_secs())),
    }
}

/// A port given by number or by the name of one of the container's ports.
fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("unknown port name {name:?}"))
        }
    }
}

async fn run_tcp(
    tcp: &TCPSocketAction,
    container: &Container,
    target: &Target,
    timeout: Duration,
) -> Outcome {
    let port = match resolve_port(&tcp.port, container) {
        Ok(p) => p,
        Err(e) => return Outcome::Failure(e),
    };
    let host = tcp.host.clone().unwrap_or_else(|| target.pod_ip.clone());
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host.as_str(), port))).await
    {
        Ok(Ok(_)) => Outcome::Success,
        Ok(Err(e)) => Outcome::Failure(format!("dial tcp {host}:{port}: {e}")),
        Err(_) => Outcome::Failure(format!("dial tcp {host}:{port}: i/o timeout")),
    }
}

/// An HTTP(S) GET: 200–399 passes, as upstream.
pub async fn http_get(
    http: &HTTPGetAction,
    container: &Container,
    pod_ip: &str,
    timeout: Duration,
) -> Outcome {
    let port = match resolve_port(&http.port, container) {
        Ok(p) => p,
        Err(e) => return Outcome::Failure(e),
    };
    let https = http.scheme.as_deref() == Some("HTTPS");
    let scheme = if https { "https" } else { "http" };
    let host = http.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| pod_ip.to_owned());
    let path = http.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".to_owned());
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.37\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for h in http.http_headers.iter().flatten() {
        request.push_str(&format!("{}: {}\r\n", h.name, h.value));
    }
    request.push_str("\r\n");
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        if https {
            // Probes do not verify certificates, as upstream's prober does not.
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let config = pki::tls::insecure_client().map_err(std::io::Error::other)?;
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
            status_line(tls, &request).await
        } else {
            status_line(tcp, &request).await
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(head)) => {
            let code: u16 =
                head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            if (200..400).contains(&code) {
                Outcome::Success
            } else {
                Outcome::Failure(format!("HTTP probe failed with statuscode: {code}"))
            }
        }
        Ok(Err(e)) => Outcome::Failure(format!("Get \"{scheme}://{host}:{port}{path}\": {e}")),
        Err(_) => Outcome::Failure(format!(
            "Get \"{scheme}://{host}:{port}{path}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
    }
}

/// Sends `request` and reads up to the end of the status line.
async fn status_line<S>(mut stream: S, request: &str) -> std::io::Result<String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(request.as_bytes()).await?;
    let mut buf = vec![0u8; 1024];
    let mut got = 0;
    while got < buf.len() {
        let n = stream.read(&mut buf[got..]).await?;
        if n == 0 {
            break;
        }
        got += n;
        if buf[..got].windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&buf[..got]).into_owned())
}

async fn run_http(
    http: &HTTPGetAction,
    container: &Container,
    target: &Target,
    timeout: Duration,
) -> Outcome {
    http_get(http, container, &target.pod_ip, timeout).await
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

async fn run_grpc(grpc: &GRPCAction, target: &Target, timeout: Duration) -> Outcome {
    let address = format!("http://{}:{}", target.pod_ip, grpc.port);
    let attempt = async {
        let channel = tonic::transport::Endpoint::from_shared(address.clone())
            .map_err(|e| e.to_string())?
            .connect_timeout(timeout)
            .connect()
            .await
            .map_err(|e| {
                format!(
                    "failed to connect service {:?} within {}s: {e}",
                    address,
                    timeout.as_secs()
                )
            })?;
        let mut client = tonic::client::Grpc::new(channel);
        client.ready().await.map_err(|e| e.to_string())?;
        let path = http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check");
        let request = tonic::Request::new(HealthCheckRequest {
            service: grpc.service.clone().unwrap_or_default(),
        });
        let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
        let response = client
            .unary(request, path, codec)
            .await
            .map_err(|s| format!("rpc error: code = {:?} desc = {}", s.code(), s.message()))?;
        Ok::<i32, String>(response.into_inner().status)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(1)) => Outcome::Success,
        Ok(Ok(status)) => {
            Outcome::Failure(format!("service unhealthy (responded with {})", serving_name(status)))
        }
        Ok(Err(e)) => Outcome::Failure(e),
        Err(_) => Outcome::Failure(format!(
            "timeout: health rpc did not complete within {}s",
            timeout.as_secs()
        )),
    }
}

fn serving_name(status: i32) -> &'static str {
    match status {
        0 => "UNKNOWN",
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "UNKNOWN",
    }
}

/// The kind of a probe, as events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `startupProbe`.
    Startup,
    /// `readinessProbe`.
    Readiness,
    /// `livenessProbe`.
    Liveness,
}

impl Kind {
    /// `Startup`, `Readiness`, `Liveness`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Readiness => "Readiness",
            Kind::Liveness => "Liveness",
        }
    }
}

/// A probe failure to report as an `Unhealthy` event.
pub type Report = Arc<dyn Fn(Kind, &str) + Send + Sync>;

/// The probe tasks of one running container; dropping it stops them.
pub struct Probers {
    /// The container these probe.
    pub container_id: String,
    /// Their shared verdict.
    pub state: Arc<Mutex<ProbeState>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Probers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probers").field("container_id", &self.container_id).finish()
    }
}

impl Drop for Probers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts the probes of `container` (running as `target.container_id`).
pub fn start(
    cri: SharedRuntime,
    container: &Container,
    target: Target,
    wake: Arc<Notify>,
    report: Report,
) -> Probers {
    let state = Arc::new(Mutex::new(ProbeState {
        started: container.startup_probe.is_none(),
        ready: container.readiness_probe.is_none() && container.startup_probe.is_none(),
        kill: None,
    }));
    let started_signal = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    let probes = [
        (Kind::Startup, container.startup_probe.clone()),
        (Kind::Readiness, container.readiness_probe.clone()),
        (Kind::Liveness, container.liveness_probe.clone()),
    ];
    for (kind, probe) in probes {
        let Some(probe) = probe else { continue };
        let cri = cri.clone();
        let container = container.clone();
        let target = target.clone();
        let state = state.clone();
        let wake = wake.clone();
        let report = report.clone();
        let started_signal = started_signal.clone();
        tasks.push(tokio::spawn(async move {
            probe_loop(kind, probe, cri, container, target, state, wake, report, started_signal)
                .await;
        }));
    }
    Probers { container_id: target.container_id, state, tasks }
}

#[allow(clippy::too_many_arguments)]
async fn probe_loop(
    kind: Kind,
    probe: Probe,
    cri: SharedRuntime,
    container: Container,
    target: Target,
    state: Arc<Mutex<ProbeState>>,
    wake: Arc<Notify>,
    report: Report,
    started_signal: Arc<Notify>,
) {
    // Readiness and liveness wait for the startup probe.
    if kind != Kind::Startup {
        loop {
            let started = state.lock().map(|s| s.started).unwrap_or(false);
            if started {
                break;
            }
            started_signal.notified().await;
        }
    }
    let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
    let success_threshold = probe.success_threshold.unwrap_or(1).max(1);
    let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1);
    tokio::time::sleep(Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64))
        .await;
    let (mut successes, mut failures) = (0, 0);
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let outcome = run(cri.as_ref(), &probe, &container, &target).await;
        match outcome {
            Outcome::Success => {
                successes += 1;
                failures = 0;
            }
            Outcome::Failure(ref why) => {
                failures += 1;
                successes = 0;
                report(kind, why);
            }
        }
        let mut changed = false;
        if let Ok(mut s) = state.lock() {
            match (kind, &outcome) {
                (Kind::Startup, Outcome::Success)
                    if successes >= success_threshold && !s.started =>
                {
                    s.started = true;
                    s.ready = container.readiness_probe.is_none();
                    changed = true;
                }
                (Kind::Startup, Outcome::Failure(_)) if failures >= failure_threshold => {
                    s.kill = Some(format!(
                        "Container {} failed startup probe, will be restarted",
                        container.name
                    ));
                    changed = true;
                }
                (Kind::Readiness, Outcome::Success)
                    if successes >= success_threshold && !s.ready =>
                {
                    s.ready = true;
                    changed = true;
                }
                (Kind::Readiness, Outcome::Failure(_))
                    if failures >= failure_threshold && s.ready =>
                {
                    s.ready = false;
                    changed = true;
                }
                (Kind::Liveness, Outcome::Failure(_))
                    if failures >= failure_threshold && s.kill.is_none() =>
                {
                    s.kill = Some(format!(
                        "Container {} failed liveness probe, will be restarted",
                        container.name
                    ));
                    changed = true;
                }
                _ => {}
            }
        }
        if changed {
            wake.notify_one();
            if kind == Kind::Startup {
                started_signal.notify_waiters();
                // The startup probe stops once it has passed.
                if state.lock().map(|s| s.started).unwrap_or(false) {
                    return;
                }
            }
            if state.lock().map(|s| s.kill.is_some()).unwrap_or(false) {
                return;
            }
        }
    }
}

/// Runs a lifecycle hook (postStart or preStop) to completion or `timeout`.
pub async fn run_hook(
    cri: &dyn Runtime,
    hook: &LifecycleHandler,
    container: &Container,
    target: &Target,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(exec) = &hook.exec {
        let run = cri.exec_sync(
            target.container_id.clone(),
            exec.command.clone().unwrap_or_default(),
            timeout.as_secs() as i64,
        );
        return match run.await {
            Ok(r) if r.exit_code == 0 => Ok(()),
            Ok(r) => Err(format!(
                "command {:?} exited with {}: {}",
                exec.command.clone().unwrap_or_default().join(" "),
                r.exit_code,
                String::from_utf8_lossy(&r.stderr).trim()
            )),
            Err(e) => Err(e.message().to_owned()),
        };
    }
    if let Some(http) = &hook.http_get {
        return match http_get(http, container, &target.pod_ip, timeout).await {
            Outcome::Success => Ok(()),
            Outcome::Failure(why) => Err(why),
        };
    }
    if let Some(sleep) = &hook.sleep {
        tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64).min(timeout)).await;
        return Ok(());
    }
    // A tcpSocket hook is deprecated upstream and never executed: nothing to do.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tcp_and_http_probes_against_a_local_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let code = if req.starts_with("GET /healthz ") {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let container = Container {
            name: "c".into(),
            ports: Some(vec![k8s_openapi::api::core::v1::ContainerPort {
                name: Some("web".into()),
                container_port: i32::from(port),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let ok = HTTPGetAction {
            path: Some("/healthz".into()),
            port: IntOrString::String("web".into()),
            ..Default::default()
        };
        assert_eq!(
            http_get(&ok, &container, "127.0.0.1", Duration::from_secs(1)).await,
            Outcome::Success
        );
        let bad = HTTPGetAction {
            path: Some("/other".into()),
            port: IntOrString::Int(i32::from(port)),
            ..Default::default()
        };
        assert_eq!(
            http_get(&bad, &container, "127.0.0.1", Duration::from_secs(1)).await,
            Outcome::Failure("HTTP probe failed with statuscode: 503".into())
        );
        let target = Target { container_id: String::new(), pod_ip: "127.0.0.1".into() };
        let tcp = TCPSocketAction { port: IntOrString::Int(i32::from(port)), host: None };
        assert_eq!(
            run_tcp(&tcp, &container, &target, Duration::from_secs(1)).await,
            Outcome::Success
        );
        let closed = TCPSocketAction { port: IntOrString::Int(1), host: None };
        assert!(matches!(
            run_tcp(&closed, &container, &target, Duration::from_secs(1)).await,
            Outcome::Failure(_)
        ));
    }

    /// A gRPC health server (HTTP/2, as grpc-go answers) whose answer is `status`.
    async fn health_server(status: u8) -> u16 {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| async move {
                        assert_eq!(request.uri().path(), "/grpc.health.v1.Health/Check");
                        let _ = request.into_body().collect().await;
                        // One length-prefixed message: field 1 (status) = `status`.
                        let message = bytes::Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]);
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        let frames = futures::stream::iter(vec![
                            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(message)),
                            Ok(hyper::body::Frame::trailers(trailers)),
                        ]);
                        let body = http_body_util::StreamBody::new(frames);
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "application/grpc")
                                .body(body)
                                .unwrap(),
                        )
                    },
                );
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(io, service)
                    .await;
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn https_probes_skip_certificate_verification() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["nobody.invalid".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let Ok(mut tls) = acceptor.accept(tcp).await else { continue };
                let mut buf = [0u8; 512];
                let _ = tls.read(&mut buf).await;
                let _ = tls.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
                let _ = tls.shutdown().await;
            }
        });
        let container = Container { name: "c".into(), ..Default::default() };
        let probe = HTTPGetAction {
            scheme: Some("HTTPS".into()),
            port: IntOrString::Int(i32::from(port)),
            ..Default::default()
        };
        assert_eq!(
            http_get(&probe, &container, "127.0.0.1", Duration::from_secs(2)).await,
            Outcome::Success
        );
    }

    #[tokio::test]
    async fn grpc_probes_speak_the_health_protocol() {
        let target = Target { container_id: String::new(), pod_ip: "127.0.0.1".into() };
        let serving = health_server(1).await;
        let probe = GRPCAction { port: i32::from(serving), ..Default::default() };
        assert_eq!(run_grpc(&probe, &target, Duration::from_secs(2)).await, Outcome::Success);
        let not_serving = health_server(2).await;
        let probe = GRPCAction {
            port: i32::from(not_serving),
            service: Some("x".into()),
            ..Default::default()
        };
        assert_eq!(
            run_grpc(&probe, &target, Duration::from_secs(2)).await,
            Outcome::Failure("service unhealthy (responded with NOT_SERVING)".into())
        );
        let probe = GRPCAction { port: 1, ..Default::default() };
        assert!(matches!(
            run_grpc(&probe, &target, Duration::from_secs(1)).await,
            Outcome::Failure(_)
        ));
    }
}
