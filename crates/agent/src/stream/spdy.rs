//! SPDY/3.1 sessions, in both roles: the framing Kubernetes streaming still uses. kubectl
//! tunnels it inside WebSocket for port-forward and speaks it directly on its legacy upgrade;
//! the CRI runtime's streaming server (exec, attach, port-forward) speaks it to us.
//!
//! Header blocks are zlib streams primed with the SPDY/3 dictionary, one compression context
//! per direction for the whole session. Flow-control windows are not enforced, as Go's
//! spdystream (the peer in every case here) does not enforce them either.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// The header-compression dictionary of the SPDY/3 specification (section 2.6.10.1).
const DICTIONARY: &[u8] = include_bytes!("spdy3.dict");

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const FLAG_FIN: u8 = 0x01;
/// Largest frame accepted.
const MAX_FRAME: usize = 16 << 20;
/// Data chunks a stream buffers before the session waits for its reader.
const STREAM_BUFFER: usize = 64;

/// Header names (lower-case) and values.
pub type Headers = Vec<(String, String)>;

/// The value of header `name` (case-insensitive).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

enum Out {
    Raw(Vec<u8>),
    Syn { id: u32, fin: bool, headers: Headers },
    Reply { id: u32, headers: Headers },
}

struct Slot {
    data: Option<mpsc::Sender<Bytes>>,
    reply: Option<oneshot::Sender<Headers>>,
}

struct Inner {
    out: mpsc::UnboundedSender<Out>,
    streams: Mutex<HashMap<u32, Slot>>,
    next_id: AtomicU32,
}

/// One SPDY session.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("spdy::Session")
    }
}

/// One stream of a session.
pub struct Stream {
    /// Stream ID.
    pub id: u32,
    /// The headers it was opened with (for streams the peer opened) or answered with.
    pub headers: Headers,
    data: mpsc::Receiver<Bytes>,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("id", &self.id).field("headers", &self.headers).finish()
    }
}

/// Half of a stream that writes, so reading and writing can go to different tasks.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StreamWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamWriter").field("id", &self.id).finish()
    }
}

fn data_frame(id: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

fn control_frame(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

impl StreamWriter {
    /// Sends data.
    pub fn write(&self, data: &[u8]) -> std::io::Result<()> {
        // Frames carry at most 16 MiB; chunk well below that.
        for chunk in data.chunks(32 << 10) {
            self.inner.out.send(Out::Raw(data_frame(self.id, 0, chunk))).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "spdy session closed")
            })?;
        }
        Ok(())
    }

    /// Half-closes the stream (FIN): the peer sees end of data.
    pub fn close(&self) {
        let _ = self.inner.out.send(Out::Raw(data_frame(self.id, FLAG_FIN, &[])));
    }

    /// Resets the stream.
    pub fn reset(&self) {
        let mut payload = self.id.to_be_bytes().to_vec();
        payload.extend_from_slice(&5u32.to_be_bytes()); // CANCEL
        let _ = self.inner.out.send(Out::Raw(control_frame(RST_STREAM, 0, &payload)));
    }
}

impl Stream {
    /// The next chunk of data; `None` once the peer closed its side.
    pub async fn read(&mut self) -> Option<Bytes> {
        self.data.recv().await
    }

    /// A writer for this stream.
    pub fn writer(&self) -> StreamWriter {
        StreamWriter { id: self.id, inner: self.inner.clone() }
    }

    /// Answers a stream the peer opened (SYN_REPLY).
    pub fn reply(&self) {
        let _ = self.inner.out.send(Out::Reply { id: self.id, headers: Vec::new() });
    }

    /// Splits the stream into its reader (this) and a writer.
    pub fn split(self) -> (Stream, StreamWriter) {
        let w = self.writer();
        (self, w)
    }
}

impl Session {
    /// Starts a session over `io`. `client` decides stream ID parity (odd for clients).
    /// Returns the session and the streams the peer opens.
    pub fn start<IO>(io: IO, client: bool) -> (Session, mpsc::Receiver<Stream>)
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            out: out_tx,
            streams: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(if client { 1 } else { 2 }),
        });
        let (incoming_tx, incoming_rx) = mpsc::channel(16);
        tokio::spawn(write_loop(write, out_rx));
        tokio::spawn(read_loop(read, inner.clone(), incoming_tx));
        (Session { inner }, incoming_rx)
    }

    /// Opens a stream with `headers` and waits for the peer's reply.
    pub async fn open(&self, headers: Headers) -> std::io::Result<Stream> {
        let id = self.inner.next_id.fetch_add(2, Ordering::SeqCst);
        let (data_tx, data_rx) = mpsc::channel(STREAM_BUFFER);
        let (reply_tx, reply_rx) = oneshot::channel();
        if let Ok(mut streams) = self.inner.streams.lock() {
            streams.insert(id, Slot { data: Some(data_tx), reply: Some(reply_tx) });
        }
        self.inner.out.send(Out::Syn { id, fin: false, headers: headers.clone() }).map_err(
            |_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "spdy session closed"),
        )?;
        let answered = tokio::time::timeout(std::time::Duration::from_secs(30), reply_rx)
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "no SYN_REPLY from the peer")
            })?
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "stream reset by the peer")
            })?;
        let mut all = headers;
        all.extend(answered);
        Ok(Stream { id, headers: all, data: data_rx, inner: self.inner.clone() })
    }

    /// Ends the session (GOAWAY).
    pub fn go_away(&self) {
        let mut payload = 0u32.to_be_bytes().to_vec();
        payload.extend_from_slice(&0u32.to_be_bytes());
        let _ = self.inner.out.send(Out::Raw(control_frame(GOAWAY, 0, &payload)));
    }
}

/// Encodes and compresses a header block with the session's compressor.
fn header_block(compress: &mut Compress, headers: &Headers) -> Vec<u8> {
    let mut plain = Vec::new();
    plain.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (k, v) in headers {
        let k = k.to_ascii_lowercase();
        plain.extend_from_slice(&(k.len() as u32).to_be_bytes());
        plain.extend_from_slice(k.as_bytes());
        plain.extend_from_slice(&(v.len() as u32).to_be_bytes());
        plain.extend_from_slice(v.as_bytes());
    }
    let mut out = Vec::with_capacity(plain.len() + 64);
    let mut consumed = 0;
    loop {
        out.reserve(plain.len() + 64);
        let before = compress.total_in();
        if compress.compress_vec(&plain[consumed..], &mut out, FlushCompress::Sync).is_err() {
            break;
        }
        consumed += (compress.total_in() - before) as usize;
        // A sync flush is complete when all input is in and the output had room to spare.
        if consumed >= plain.len() && out.len() < out.capacity() {
            break;
        }
    }
    out
}

async fn write_loop<W: AsyncWrite + Unpin>(mut w: W, mut out: mpsc::UnboundedReceiver<Out>) {
    let mut compress = Compress::new(Compression::default(), true);
    if compress.set_dictionary(DICTIONARY).is_err() {
        return;
    }
    while let Some(item) = out.recv().await {
        let bytes = match item {
            Out::Raw(b) => b,
            Out::Syn { id, fin, headers } => {
                let mut payload = id.to_be_bytes().to_vec();
                payload.extend_from_slice(&0u32.to_be_bytes());
                payload.extend_from_slice(&[0, 0]);
                payload.extend(header_block(&mut compress, &headers));
                control_frame(SYN_STREAM, if fin { FLAG_FIN } else { 0 }, &payload)
            }
            Out::Reply { id, headers } => {
                let mut payload = id.to_be_bytes().to_vec();
                payload.extend(header_block(&mut compress, &headers));
                control_frame(SYN_REPLY, 0, &payload)
            }
        };
        if w.write_all(&bytes).await.is_err() {
            return;
        }
        // Coalesce what is queued into one flush.
        if out.is_empty() && w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// Inflates one header block with the session's decompressor.
fn inflate(decompress: &mut Decompress, block: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(block.len() * 4 + 64);
    let mut consumed = 0usize;
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    for _ in 0..1000 {
        if out.capacity() - out.len() < 256 {
            out.reserve(out.capacity().max(1024));
        }
        let before_in = decompress.total_in();
        let before_out = out.len();
        match decompress.decompress_vec(&block[consumed..], &mut out, FlushDecompress::Sync) {
            Ok(_) => {}
            Err(e) if e.needs_dictionary().is_some() => {
                consumed += (decompress.total_in() - before_in) as usize;
                decompress.set_dictionary(DICTIONARY).map_err(|_| bad("bad spdy dictionary"))?;
                continue;
            }
            Err(_) => return Err(bad("corrupt spdy header block")),
        }
        consumed += (decompress.total_in() - before_in) as usize;
        if consumed >= block.len() && out.len() == before_out {
            break;
        }
        if consumed >= block.len() && out.len() < out.capacity() {
            break;
        }
    }
    Ok(out)
}

fn parse_headers(plain: &[u8]) -> std::io::Result<Headers> {
    let bad =
        || std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed spdy header block");
    let mut pos = 0usize;
    let mut take = |n: usize| -> std::io::Result<&[u8]> {
        let end = pos.checked_add(n).filter(|e| *e <= plain.len()).ok_or_else(bad)?;
        let s = &plain[pos..end];
        pos = end;
        Ok(s)
    };
    let count = u32::from_be_bytes(take(4)?.try_into().map_err(|_| bad())?);
    let mut headers = Vec::new();
    for _ in 0..count.min(1024) {
        let len = u32::from_be_bytes(take(4)?.try_into().map_err(|_| bad())?) as usize;
        let name = String::from_utf8_lossy(take(len)?).to_ascii_lowercase();
        let len = u32::from_be_bytes(take(4)?.try_into().map_err(|_| bad())?) as usize;
        let value = String::from_utf8_lossy(take(len)?).into_owned();
        // Several values of one header are separated by NUL.
        for v in value.split('\0') {
            headers.push((name.clone(), v.to_owned()));
        }
    }
    Ok(headers)
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut r: R,
    inner: Arc<Inner>,
    incoming: mpsc::Sender<Stream>,
) {
    let mut decompress = Decompress::new(true);
    loop {
        let mut head = [0u8; 8];
        if r.read_exact(&mut head).await.is_err() {
            break;
        }
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if len > MAX_FRAME {
            break;
        }
        let flags = head[4];
        let mut payload = vec![0u8; len];
        if r.read_exact(&mut payload).await.is_err() {
            break;
        }
        if head[0] & 0x80 == 0 {
            let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
            let sender = inner
                .streams
                .lock()
                .ok()
                .and_then(|s| s.get(&id).and_then(|slot| slot.data.clone()));
            if let Some(tx) = sender
                && !payload.is_empty()
            {
                let _ = tx.send(Bytes::from(payload)).await;
            }
            if flags & FLAG_FIN != 0
                && let Ok(mut streams) = inner.streams.lock()
                && let Some(slot) = streams.get_mut(&id)
            {
                slot.data = None;
            }
            continue;
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let id_at = |p: &[u8]| {
            p.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff)
        };
        match kind {
            SYN_STREAM if payload.len() >= 10 => {
                let Some(id) = id_at(&payload) else { break };
                let Ok(plain) = inflate(&mut decompress, &payload[10..]) else { break };
                let Ok(headers) = parse_headers(&plain) else { break };
                let (data_tx, data_rx) = mpsc::channel(STREAM_BUFFER);
                let fin = flags & FLAG_FIN != 0;
                if let Ok(mut streams) = inner.streams.lock() {
                    streams.insert(id, Slot { data: (!fin).then_some(data_tx), reply: None });
                }
                let stream = Stream { id, headers, data: data_rx, inner: inner.clone() };
                // Nobody accepts streams in this role: refuse it.
                if let Err(refused) = incoming.send(stream).await {
                    refused.0.writer().reset();
                }
            }
            SYN_REPLY if payload.len() >= 4 => {
                let Some(id) = id_at(&payload) else { break };
                let Ok(plain) = inflate(&mut decompress, &payload[4..]) else { break };
                let headers = parse_headers(&plain).unwrap_or_default();
                if let Ok(mut streams) = inner.streams.lock()
                    && let Some(slot) = streams.get_mut(&id)
                {
                    if let Some(reply) = slot.reply.take() {
                        let _ = reply.send(headers);
                    }
                    if flags & FLAG_FIN != 0 {
                        slot.data = None;
                    }
                }
            }
            // Keep the decompressor in step even though the headers are not used.
            HEADERS if payload.len() >= 4 && inflate(&mut decompress, &payload[4..]).is_err() => {
                break;
            }
            RST_STREAM => {
                if let Some(id) = id_at(&payload)
                    && let Ok(mut streams) = inner.streams.lock()
                {
                    streams.remove(&id);
                }
            }
            PING => {
                let _ = inner.out.send(Out::Raw(control_frame(PING, 0, &payload)));
            }
            GOAWAY => break,
            _ => {}
        }
    }
    // The connection is gone: every stream ends.
    if let Ok(mut streams) = inner.streams.lock() {
        streams.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_is_the_specified_one() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert_eq!(
            crate::image::sha256_hex(DICTIONARY),
            "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"
        );
    }

    #[test]
    fn header_blocks_round_trip_across_frames() {
        let mut compress = Compress::new(Compression::default(), true);
        compress.set_dictionary(DICTIONARY).unwrap();
        let mut decompress = Decompress::new(true);
        for i in 0..5 {
            let headers: Headers = vec![
                ("streamType".into(), "data".into()),
                ("port".into(), format!("80{i}")),
                ("requestID".into(), i.to_string()),
            ];
            let block = header_block(&mut compress, &headers);
            let plain = inflate(&mut decompress, &block).unwrap();
            let parsed = parse_headers(&plain).unwrap();
            assert_eq!(header(&parsed, "streamtype"), Some("data"));
            assert_eq!(header(&parsed, "port"), Some(format!("80{i}").as_str()));
        }
    }

    #[tokio::test]
    async fn a_client_and_a_server_exchange_streams() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (client, _none) = Session::start(a, true);
        let (_server, mut incoming) = Session::start(b, false);
        let serve = tokio::spawn(async move {
            let mut stream = incoming.recv().await.unwrap();
            assert_eq!(header(&stream.headers, "streamtype"), Some("data"));
            stream.reply();
            let mut got = Vec::new();
            while let Some(chunk) = stream.read().await {
                got.extend_from_slice(&chunk);
            }
            let w = stream.writer();
            w.write(&got.iter().rev().copied().collect::<Vec<u8>>()).unwrap();
            w.close();
        });
        let mut stream = client.open(vec![("streamType".into(), "data".into())]).await.unwrap();
        let w = stream.writer();
        w.write(b"hello ").unwrap();
        w.write(b"world").unwrap();
        w.close();
        let mut back = Vec::new();
        while let Some(chunk) = stream.read().await {
            back.extend_from_slice(&chunk);
        }
        assert_eq!(back, b"dlrow olleh");
        serve.await.unwrap();
    }
}
