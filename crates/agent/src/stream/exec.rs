//! exec, attach and port-forward: the client's upgrade (WebSocket `v5.channel.k8s.io` or
//! `v4.channel.k8s.io`, WebSocket-tunnelled SPDY for port-forward, or the legacy direct SPDY
//! upgrade) bridged to the CRI runtime's streaming server, which speaks SPDY.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::context::{Body, StreamContext, pod_uid, text};
use super::spdy::{self, Session, Stream, StreamWriter, header};
use super::{upstream, ws};
use crate::pods::runtime::{self, State};

/// The exec/attach options of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOptions {
    /// argv.
    pub command: Vec<String>,
    /// Attach stdin.
    pub stdin: bool,
    /// Attach stdout.
    pub stdout: bool,
    /// Attach stderr.
    pub stderr: bool,
    /// Allocate a TTY.
    pub tty: bool,
}

impl ExecOptions {
    /// Parses the query (`command=` once per argument).
    pub fn from_query(query: &str) -> ExecOptions {
        let mut o = ExecOptions::default();
        for (k, v) in super::query_pairs(query) {
            let truthy = v == "true" || v == "1";
            match k.as_str() {
                "command" => o.command.push(v),
                "stdin" => o.stdin = truthy,
                "stdout" => o.stdout = truthy,
                "stderr" => o.stderr = truthy,
                "tty" => o.tty = truthy,
                _ => {}
            }
        }
        // With a TTY, stderr is merged into stdout.
        if o.tty {
            o.stderr = false;
        }
        o
    }
}

/// How the client wants to talk.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Transport {
    /// WebSocket with this subprotocol.
    WebSocket(String),
    /// Direct SPDY with this stream protocol.
    Spdy(String),
}

fn header_text<'a>(request: &'a Request<Incoming>, name: &str) -> Vec<&'a str> {
    request
        .headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect()
}

fn negotiate(request: &Request<Incoming>, websocket: &[&str], spdy: &[&str]) -> Option<Transport> {
    let upgrade = header_text(request, "upgrade").join(",").to_ascii_lowercase();
    if upgrade.contains("websocket") {
        let offered = header_text(request, "sec-websocket-protocol");
        return websocket
            .iter()
            .find(|p| offered.contains(p))
            .map(|p| Transport::WebSocket((*p).to_owned()));
    }
    if upgrade.contains("spdy/3.1") {
        let offered = header_text(request, "x-stream-protocol-version");
        return spdy.iter().find(|p| offered.contains(p)).map(|p| Transport::Spdy((*p).to_owned()));
    }
    None
}

fn switching(request: &Request<Incoming>, transport: &Transport) -> Response<Body> {
    let mut response = Response::new(Empty::<Bytes>::new().map_err(|never| match never {}).boxed());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    match transport {
        Transport::WebSocket(protocol) => {
            h.insert(UPGRADE, HeaderValue::from_static("websocket"));
            let key = request
                .headers()
                .get("sec-websocket-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if let Ok(v) = HeaderValue::from_str(&ws::accept_key(key)) {
                h.insert("sec-websocket-accept", v);
            }
            if let Ok(v) = HeaderValue::from_str(protocol) {
                h.insert("sec-websocket-protocol", v);
            }
        }
        Transport::Spdy(protocol) => {
            h.insert(UPGRADE, HeaderValue::from_static("SPDY/3.1"));
            if let Ok(v) = HeaderValue::from_str(protocol) {
                h.insert("x-stream-protocol-version", v);
            }
        }
    }
    response
}

/// Streams of one exec session to the runtime.
struct Upstream {
    session: Session,
    error: Stream,
    stdin: Option<StreamWriter>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    resize: Option<StreamWriter>,
}

async fn open_upstream(url: &str, o: &ExecOptions) -> Result<Upstream, String> {
    let session = upstream::connect(url, "v4.channel.k8s.io").await.map_err(|e| e.to_string())?;
    let kind = |t: &str| vec![("streamType".to_owned(), t.to_owned())];
    let open = |t: &'static str| {
        let session = session.clone();
        async move { session.open(kind(t)).await.map_err(|e| e.to_string()) }
    };
    let error = open("error").await?;
    let stdin = if o.stdin { Some(open("stdin").await?.writer()) } else { None };
    let stdout = if o.stdout { Some(open("stdout").await?) } else { None };
    let stderr = if o.stderr { Some(open("stderr").await?) } else { None };
    let resize = if o.tty { Some(open("resize").await?.writer()) } else { None };
    Ok(Upstream { session, error, stdin, stdout, stderr, resize })
}

/// `exec` (or, with `attach`, `attach`) into `container` of `namespace/pod`.
pub async fn exec(
    ctx: StreamContext,
    request: Request<Incoming>,
    namespace: &str,
    pod: &str,
    container: &str,
    attach: bool,
) -> Response<Body> {
    let options = ExecOptions::from_query(request.uri().query().unwrap_or(""));
    let Some(transport) = negotiate(
        &request,
        &[
            "v5.channel.k8s.io",
            "v4.channel.k8s.io",
            "v4.base64.channel.k8s.io",
            "channel.k8s.io",
            "base64.channel.k8s.io",
        ],
        &["v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io"],
    ) else {
        return text(
            StatusCode::BAD_REQUEST,
            "an upgrade to WebSocket (v5.channel.k8s.io) or SPDY/3.1 is required",
        );
    };
    if !attach && options.command.is_empty() {
        return text(StatusCode::BAD_REQUEST, "you must specify at least 1 command");
    }
    let Some(uid) = pod_uid(&ctx, namespace, pod) else {
        return text(StatusCode::NOT_FOUND, &format!("pod {namespace}/{pod} is not on this node"));
    };
    let container_id = match runtime::observe(ctx.cri.as_ref(), &uid).await {
        Ok(o) => match o.latest(container).filter(|c| c.state == State::Running) {
            Some(c) => c.id.clone(),
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("container {container} is not running in pod {pod}"),
                );
            }
        },
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let url = if attach {
        ctx.cri
            .attach(cri::AttachRequest {
                container_id,
                stdin: options.stdin,
                tty: options.tty,
                stdout: options.stdout,
                stderr: options.stderr,
            })
            .await
    } else {
        ctx.cri
            .exec(cri::ExecRequest {
                container_id,
                cmd: options.command.clone(),
                tty: options.tty,
                stdin: options.stdin,
                stdout: options.stdout,
                stderr: options.stderr,
            })
            .await
    };
    let url = match url {
        Ok(u) => u,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.message()),
    };
    let upstream = match open_upstream(&url, &options).await {
        Ok(u) => u,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    let response = switching(&request, &transport);
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(request).await else { return };
        let io = TokioIo::new(upgraded);
        match transport {
            Transport::WebSocket(protocol) => {
                bridge_websocket(io, upstream, Framing::of(&protocol)).await
            }
            Transport::Spdy(_) => bridge_spdy(io, upstream).await,
        }
    });
    response
}

/// Logs over a WebSocket: each chunk of the log one message (binary, or base64 text for
/// `base64.binary.k8s.io`), then a normal close.
pub(crate) fn websocket_log(
    request: Request<Incoming>,
    protocol: &'static str,
    mut chunks: mpsc::Receiver<Bytes>,
) -> Response<Body> {
    let response = switching(&request, &Transport::WebSocket(protocol.to_owned()));
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(request).await else { return };
        let (_read, write) = tokio::io::split(TokioIo::new(upgraded));
        let mut writer = ws::Writer::new(write);
        while let Some(chunk) = chunks.recv().await {
            let sent = if protocol.starts_with("base64.") {
                use base64::Engine;
                let text = base64::engine::general_purpose::STANDARD.encode(&chunk);
                writer.text(text.as_bytes()).await
            } else {
                writer.binary(&chunk).await
            };
            if sent.is_err() {
                return;
            }
        }
        let _ = writer.close(1000).await;
    });
    response
}

/// A JSON `Status` for the error channel, or Success when the runtime sent none.
fn final_status(error: Vec<u8>) -> Vec<u8> {
    if error.iter().all(u8::is_ascii_whitespace) {
        br#"{"metadata":{},"status":"Success"}"#.to_vec()
    } else {
        error
    }
}

/// How a WebSocket subprotocol frames the channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Framing {
    /// `v5`: a client's close of stdin arrives on channel 255.
    v5: bool,
    /// `base64.*`: text messages, the channel as an ASCII digit and the data base64-encoded.
    base64: bool,
    /// `v4` and later: the error channel carries a `Status` (success too); before, only an
    /// error's text.
    status: bool,
}

impl Framing {
    pub(crate) fn of(protocol: &str) -> Framing {
        Framing {
            v5: protocol.starts_with("v5."),
            base64: protocol.contains("base64."),
            status: protocol.starts_with("v4.") || protocol.starts_with("v5."),
        }
    }

    /// One message to the client on `channel`.
    fn encode(self, channel: u8, data: &[u8]) -> WsOut {
        use base64::Engine;
        if self.base64 {
            let mut text = vec![b'0' + channel];
            text.extend(base64::engine::general_purpose::STANDARD.encode(data).into_bytes());
            WsOut::Text(text)
        } else {
            let mut framed = Vec::with_capacity(data.len() + 1);
            framed.push(channel);
            framed.extend_from_slice(data);
            WsOut::Data(framed)
        }
    }

    /// What the client gets on the error channel once the command ended, given what the
    /// runtime's error stream said (a `Status`, or nothing on success): from `v4` on the
    /// `Status` itself, success included; before, as upstream's kubelet writes it, nothing
    /// on success and the error's message otherwise.
    fn error_channel(self, status: Vec<u8>) -> Option<Vec<u8>> {
        let status = final_status(status);
        if self.status {
            return Some(status);
        }
        match serde_json::from_slice::<serde_json::Value>(&status) {
            Ok(v) if v["status"] == "Success" => None,
            Ok(v) => match v["message"].as_str() {
                Some(message) => Some(message.as_bytes().to_vec()),
                None => Some(status),
            },
            Err(_) => Some(status),
        }
    }

    /// A client's message as (channel, data).
    fn decode(self, message: ws::Message) -> Option<(u8, Vec<u8>)> {
        use base64::Engine;
        match message {
            ws::Message::Binary(data) if !data.is_empty() && !self.base64 => {
                Some((data[0], data[1..].to_vec()))
            }
            ws::Message::Text(text) if self.base64 && !text.is_empty() => {
                let channel = text.as_bytes()[0].checked_sub(b'0')?;
                let data = base64::engine::general_purpose::STANDARD.decode(&text[1..]).ok()?;
                Some((channel, data))
            }
            _ => None,
        }
    }
}

async fn bridge_websocket<IO>(io: IO, up: Upstream, framing: Framing)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(io);
    let (out_tx, mut out_rx) = mpsc::channel::<WsOut>(64);
    let writer = tokio::spawn(async move {
        let mut w = ws::Writer::new(w);
        while let Some(m) = out_rx.recv().await {
            let sent = match m {
                WsOut::Data(d) => w.binary(&d).await,
                WsOut::Text(t) => w.text(&t).await,
                WsOut::Pong(p) => w.pong(&p).await,
            };
            if sent.is_err() {
                return;
            }
        }
        let _ = w.close(1000).await;
    });
    let Upstream { session, mut error, stdin, stdout, stderr, resize } = up;
    // Client → runtime: stdin (channel 0), resize (4), and v5's close signal (255).
    let reader_out = out_tx.clone();
    let reader = tokio::spawn(async move {
        let mut reader = ws::Reader::new(r);
        while let Ok(Some(message)) = reader.next().await {
            let message = match message {
                ws::Message::Ping(p) => {
                    let _ = reader_out.send(WsOut::Pong(p)).await;
                    continue;
                }
                ws::Message::Close(_) => break,
                other => other,
            };
            let Some((channel, data)) = framing.decode(message) else { continue };
            match channel {
                0 => {
                    if let Some(s) = &stdin
                        && s.write(&data).is_err()
                    {
                        break;
                    }
                }
                4 => {
                    if let Some(s) = &resize {
                        let _ = s.write(&data);
                    }
                }
                255 if framing.v5 && data.first() == Some(&0) => {
                    if let Some(s) = &stdin {
                        s.close();
                    }
                }
                _ => {}
            }
        }
        if let Some(s) = &stdin {
            s.close();
        }
    });
    // Runtime → client: stdout (1), stderr (2).
    let pump = |stream: Option<Stream>, channel: u8| {
        let out = out_tx.clone();
        tokio::spawn(async move {
            let Some(mut stream) = stream else { return };
            while let Some(chunk) = stream.read().await {
                if out.send(framing.encode(channel, &chunk)).await.is_err() {
                    return;
                }
            }
        })
    };
    let out_pump = pump(stdout, 1);
    let err_pump = pump(stderr, 2);
    let mut status = Vec::new();
    while let Some(chunk) = error.read().await {
        status.extend_from_slice(&chunk);
    }
    let _ = out_pump.await;
    let _ = err_pump.await;
    if let Some(message) = framing.error_channel(status) {
        let _ = out_tx.send(framing.encode(3, &message)).await;
    }
    drop(out_tx);
    reader.abort();
    let _ = writer.await;
    session.go_away();
}

enum WsOut {
    Data(Vec<u8>),
    Text(Vec<u8>),
    Pong(Vec<u8>),
}

/// The legacy SPDY upgrade: the client opens one stream per channel; each is joined to the
/// runtime's stream of the same type.
async fn bridge_spdy<IO>(io: IO, up: Upstream)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (client, mut incoming) = Session::start(io, false);
    let Upstream { session, error, stdin, stdout, stderr, resize } = up;
    let mut to_runtime = std::collections::HashMap::new();
    if let Some(s) = stdin {
        to_runtime.insert("stdin", s);
    }
    if let Some(s) = resize {
        to_runtime.insert("resize", s);
    }
    let mut from_runtime = std::collections::HashMap::new();
    from_runtime.insert("error", error);
    if let Some(s) = stdout {
        from_runtime.insert("stdout", s);
    }
    if let Some(s) = stderr {
        from_runtime.insert("stderr", s);
    }
    let mut tasks = Vec::new();
    let expected = to_runtime.len() + from_runtime.len();
    for _ in 0..expected {
        let Ok(Some(stream)) =
            tokio::time::timeout(std::time::Duration::from_secs(30), incoming.recv()).await
        else {
            break;
        };
        stream.reply();
        let kind = header(&stream.headers, "streamtype").unwrap_or_default().to_owned();
        if let Some(target) = to_runtime.remove(kind.as_str()) {
            tasks.push(tokio::spawn(async move {
                let mut stream = stream;
                while let Some(chunk) = stream.read().await {
                    if target.write(&chunk).is_err() {
                        break;
                    }
                }
                target.close();
            }));
        } else if let Some(mut source) = from_runtime.remove(kind.as_str()) {
            let target = stream.writer();
            tasks.push(tokio::spawn(async move {
                while let Some(chunk) = source.read().await {
                    if target.write(&chunk).is_err() {
                        break;
                    }
                }
                target.close();
            }));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    client.go_away();
    session.go_away();
}

/// `port-forward` to `namespace/pod`.
pub async fn port_forward(
    ctx: StreamContext,
    request: Request<Incoming>,
    namespace: &str,
    pod: &str,
) -> Response<Body> {
    let Some(transport) = negotiate(
        &request,
        &["SPDY/3.1+portforward.k8s.io", "portforward.k8s.io"],
        &["portforward.k8s.io"],
    ) else {
        return text(StatusCode::BAD_REQUEST, "an upgrade to SPDY/3.1 (or WebSocket) is required");
    };
    let Some(uid) = pod_uid(&ctx, namespace, pod) else {
        return text(StatusCode::NOT_FOUND, &format!("pod {namespace}/{pod} is not on this node"));
    };
    let sandbox = match runtime::observe(ctx.cri.as_ref(), &uid).await {
        Ok(o) => match o.sandbox().filter(|s| s.ready) {
            Some(s) => s.id.clone(),
            None => return text(StatusCode::BAD_REQUEST, &format!("pod {pod} is not running")),
        },
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    if let Transport::WebSocket(p) = &transport
        && p != "SPDY/3.1+portforward.k8s.io"
    {
        return text(
            StatusCode::BAD_REQUEST,
            "only SPDY-tunnelled port-forward is supported over WebSocket",
        );
    }
    let response = switching(&request, &transport);
    let cri = ctx.cri.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(request).await else { return };
        let io = TokioIo::new(upgraded);
        match transport {
            Transport::Spdy(_) => forward_session(io, cri, sandbox).await,
            Transport::WebSocket(_) => {
                // The WebSocket carries a byte stream of SPDY frames; unwrap it into a pipe.
                let (ours, theirs) = tokio::io::duplex(256 << 10);
                let (r, w) = tokio::io::split(io);
                let (mut pipe_r, mut pipe_w) = tokio::io::split(ours);
                let (pong_tx, mut pong_rx) = mpsc::channel::<Vec<u8>>(4);
                let inbound = tokio::spawn(async move {
                    let mut reader = ws::Reader::new(r);
                    while let Ok(Some(m)) = reader.next().await {
                        match m {
                            ws::Message::Binary(data) => {
                                if pipe_w.write_all(&data).await.is_err() {
                                    break;
                                }
                            }
                            ws::Message::Ping(p) => {
                                let _ = pong_tx.send(p).await;
                            }
                            ws::Message::Close(_) => break,
                            ws::Message::Text(_) => {}
                        }
                    }
                    let _ = pipe_w.shutdown().await;
                });
                let outbound = tokio::spawn(async move {
                    let mut writer = ws::Writer::new(w);
                    let mut buf = vec![0u8; 32 << 10];
                    loop {
                        tokio::select! {
                            n = pipe_r.read(&mut buf) => match n {
                                Ok(0) | Err(_) => break,
                                Ok(n) => if writer.binary(&buf[..n]).await.is_err() { break },
                            },
                            Some(p) = pong_rx.recv() => { let _ = writer.pong(&p).await; }
                        }
                    }
                    let _ = writer.close(1000).await;
                });
                forward_session(theirs, cri, sandbox).await;
                inbound.abort();
                let _ = outbound.await;
            }
        }
    });
    response
}

/// Serves one client SPDY session of port-forward streams: each (error, data) pair with a
/// `port` header is joined to a pair opened on the runtime's port-forward session.
async fn forward_session<IO>(io: IO, cri: crate::cri::SharedRuntime, sandbox: String)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (client, mut incoming) = Session::start(io, false);
    let url = match cri.port_forward(sandbox).await {
        Ok(url) => url,
        Err(e) => {
            tracing::warn!(error = %e, "CRI port-forward failed");
            client.go_away();
            return;
        }
    };
    let runtime = match upstream::connect(&url, "portforward.k8s.io").await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "connecting to the runtime's port-forward failed");
            client.go_away();
            return;
        }
    };
    while let Some(stream) = incoming.recv().await {
        let runtime = runtime.clone();
        tokio::spawn(async move {
            let headers: spdy::Headers = ["streamtype", "port", "requestid"]
                .iter()
                .filter_map(|k| header(&stream.headers, k).map(|v| ((*k).to_owned(), v.to_owned())))
                .map(|(k, v)| {
                    let name = match k.as_str() {
                        "streamtype" => "streamType",
                        "requestid" => "requestID",
                        _ => "port",
                    };
                    (name.to_owned(), v)
                })
                .collect();
            let upstream = match runtime.open(headers).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "opening a port-forward stream on the runtime failed");
                    stream.writer().reset();
                    return;
                }
            };
            stream.reply();
            join(stream, upstream).await;
        });
    }
    runtime.go_away();
}

/// Copies both ways between two streams until both sides closed.
async fn join(a: Stream, b: Stream) {
    let (mut a_read, a_write) = a.split();
    let (mut b_read, b_write) = b.split();
    let one = tokio::spawn(async move {
        while let Some(chunk) = a_read.read().await {
            if b_write.write(&chunk).is_err() {
                break;
            }
        }
        b_write.close();
    });
    let two = tokio::spawn(async move {
        while let Some(chunk) = b_read.read().await {
            if a_write.write(&chunk).is_err() {
                break;
            }
        }
        a_write.close();
    });
    let _ = one.await;
    let _ = two.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_options_from_kubectl_queries() {
        let o = ExecOptions::from_query(
            "command=ls&command=%2Ftmp&container=web&stdin=true&stdout=true&stderr=true&tty=true",
        );
        assert_eq!(o.command, ["ls", "/tmp"]);
        assert!(o.stdin && o.stdout && o.tty);
        assert!(!o.stderr, "a TTY merges stderr into stdout");
        assert_eq!(final_status(Vec::new()), br#"{"metadata":{},"status":"Success"}"#.to_vec());
    }
}

#[cfg(test)]
mod framing_tests {
    use super::*;

    #[test]
    fn older_subprotocols_frame_as_upstream() {
        let v1 = Framing::of("channel.k8s.io");
        assert!(!v1.v5 && !v1.base64 && !v1.status);
        let WsOut::Data(d) = v1.encode(1, b"hi") else { panic!("binary") };
        assert_eq!(d, b"\x01hi");
        let b64 = Framing::of("base64.channel.k8s.io");
        let WsOut::Text(t) = b64.encode(2, b"hi") else { panic!("text") };
        assert_eq!(t, b"2aGk=");
        assert_eq!(b64.decode(ws::Message::Text("0aGk=".into())), Some((0, b"hi".to_vec())));
        assert_eq!(b64.decode(ws::Message::Binary(b"\x00hi".to_vec())), None);
        let v5 = Framing::of("v5.channel.k8s.io");
        assert!(v5.v5 && v5.status && !v5.base64);
        assert_eq!(v5.decode(ws::Message::Binary(b"\x00hi".to_vec())), Some((0, b"hi".to_vec())));
        // The error channel: a Status from v4 on, success included; before, errors' text only.
        let success = br#"{"metadata":{},"status":"Success"}"#.to_vec();
        let failure =
            br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code"}"#
                .to_vec();
        assert_eq!(v1.error_channel(success.clone()), None);
        assert_eq!(v1.error_channel(Vec::new()), None);
        assert_eq!(
            b64.error_channel(failure.clone()),
            Some(b"command terminated with non-zero exit code".to_vec())
        );
        assert_eq!(v5.error_channel(success.clone()), Some(success));
        assert_eq!(v5.error_channel(failure.clone()), Some(failure));
    }
}
