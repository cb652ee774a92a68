//! WebSocket (RFC 6455), server side: the handshake answer and message framing over an
//! upgraded connection. kubectl speaks `v5.channel.k8s.io` (exec, attach) and
//! `SPDY/3.1+portforward.k8s.io` (port-forward) over it; older clients `channel.k8s.io`,
//! `base64.channel.k8s.io` (exec) and `binary.k8s.io`, `base64.binary.k8s.io` (logs).

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` answer to a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{}{GUID}", key.trim()).as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// A complete message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A binary message.
    Binary(Vec<u8>),
    /// A text message.
    Text(String),
    /// A ping to answer.
    Ping(Vec<u8>),
    /// The peer closes, with its code.
    Close(Option<u16>),
}

/// Biggest message accepted (kubectl's stdin chunks are 32 KiB; port-forward data up to that).
const MAX_MESSAGE: usize = 16 << 20;

/// Reads messages from a client (whose frames are masked).
#[derive(Debug)]
pub struct Reader<R> {
    inner: R,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// A reader over the upgraded connection's read half.
    pub fn new(inner: R) -> Reader<R> {
        Reader { inner }
    }

    /// The next message; `None` at end of stream. Pongs are skipped.
    pub async fn next(&mut self) -> std::io::Result<Option<Message>> {
        let mut assembled: Vec<u8> = Vec::new();
        let mut first_opcode = None;
        loop {
            let mut head = [0u8; 2];
            match self.inner.read_exact(&mut head).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e),
            }
            let fin = head[0] & 0x80 != 0;
            let opcode = head[0] & 0x0f;
            let masked = head[1] & 0x80 != 0;
            let mut len = u64::from(head[1] & 0x7f);
            if len == 126 {
                let mut b = [0u8; 2];
                self.inner.read_exact(&mut b).await?;
                len = u64::from(u16::from_be_bytes(b));
            } else if len == 127 {
                let mut b = [0u8; 8];
                self.inner.read_exact(&mut b).await?;
                len = u64::from_be_bytes(b);
            }
            if len as usize > MAX_MESSAGE || assembled.len() + len as usize > MAX_MESSAGE {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "websocket message too large",
                ));
            }
            let mut mask = [0u8; 4];
            if masked {
                self.inner.read_exact(&mut mask).await?;
            }
            let mut payload = vec![0u8; len as usize];
            self.inner.read_exact(&mut payload).await?;
            if masked {
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= mask[i % 4];
                }
            }
            match opcode {
                0x8 => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    return Ok(Some(Message::Close(code)));
                }
                0x9 => return Ok(Some(Message::Ping(payload))),
                0xA => continue,
                0x0..=0x2 => {
                    if opcode != 0 {
                        first_opcode = Some(opcode);
                    }
                    assembled.extend_from_slice(&payload);
                    if fin {
                        return Ok(Some(match first_opcode {
                            Some(0x1) => {
                                Message::Text(String::from_utf8_lossy(&assembled).into_owned())
                            }
                            _ => Message::Binary(assembled),
                        }));
                    }
                }
                _ => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "unknown websocket opcode",
                    ));
                }
            }
        }
    }
}

/// Writes unmasked (server) frames.
#[derive(Debug)]
pub struct Writer<W> {
    inner: W,
}

fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// A writer over the upgraded connection's write half.
    pub fn new(inner: W) -> Writer<W> {
        Writer { inner }
    }

    /// Sends one binary message.
    pub async fn binary(&mut self, payload: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(&frame(0x2, payload)).await?;
        self.inner.flush().await
    }

    /// Sends one text message.
    pub async fn text(&mut self, payload: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(&frame(0x1, payload)).await?;
        self.inner.flush().await
    }

    /// Answers a ping.
    pub async fn pong(&mut self, payload: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(&frame(0xA, payload)).await?;
        self.inner.flush().await
    }

    /// Sends a close frame with `code` (1000 = normal).
    pub async fn close(&mut self, code: u16) -> std::io::Result<()> {
        self.inner.write_all(&frame(0x8, &code.to_be_bytes())).await?;
        self.inner.flush().await?;
        self.inner.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_the_rfc_example() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[tokio::test]
    async fn masked_fragmented_client_frames_are_reassembled() {
        let mask = [1u8, 2, 3, 4];
        let masked = |data: &[u8]| {
            data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect::<Vec<u8>>()
        };
        let mut wire = vec![0x02, 0x80 | 3];
        wire.extend_from_slice(&mask);
        wire.extend(masked(b"abc"));
        wire.extend_from_slice(&[0x80, 0x80 | 2]);
        wire.extend_from_slice(&mask);
        wire.extend(masked(b"de"));
        wire.extend_from_slice(&[0x88, 0x80 | 2]);
        wire.extend_from_slice(&mask);
        wire.extend(masked(&1000u16.to_be_bytes()));
        let mut reader = Reader::new(&wire[..]);
        assert_eq!(reader.next().await.unwrap(), Some(Message::Binary(b"abcde".to_vec())));
        assert_eq!(reader.next().await.unwrap(), Some(Message::Close(Some(1000))));
        assert_eq!(reader.next().await.unwrap(), None);
        let long = frame(2, &vec![7u8; 70_000]);
        assert_eq!(&long[..2], &[0x82, 127]);
    }
}
