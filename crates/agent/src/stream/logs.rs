//! Container logs: the CRI log files (`<RFC3339Nano> <stream> <P|F> <text>` per line) read
//! back with `kubectl logs` options: tail, since, timestamps, limit, previous and follow.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

pub use crate::cri::log::{Line, parse_line};

/// `kubectl logs` options (`PodLogOptions`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogOptions {
    /// Keep streaming until the container stops.
    pub follow: bool,
    /// The previous instance of the container.
    pub previous: bool,
    /// Prefix each line with its timestamp.
    pub timestamps: bool,
    /// Only the last N lines.
    pub tail_lines: Option<usize>,
    /// Only lines at or after this time (ns since the epoch).
    pub since_ns: Option<i128>,
    /// Stop after this many bytes.
    pub limit_bytes: Option<usize>,
}

impl LogOptions {
    /// Parses the query of a `/containerLogs` request.
    pub fn from_query(query: &str) -> Result<LogOptions, String> {
        let mut o = LogOptions::default();
        for (k, v) in super::query_pairs(query) {
            let truthy = v == "true" || v == "1";
            match k.as_str() {
                "follow" => o.follow = truthy,
                "previous" => o.previous = truthy,
                "timestamps" => o.timestamps = truthy,
                "tailLines" => {
                    o.tail_lines = Some(v.parse().map_err(|_| format!("invalid tailLines {v:?}"))?)
                }
                "limitBytes" => {
                    o.limit_bytes =
                        Some(v.parse().map_err(|_| format!("invalid limitBytes {v:?}"))?)
                }
                "sinceSeconds" => {
                    let secs: i64 = v.parse().map_err(|_| format!("invalid sinceSeconds {v:?}"))?;
                    let now = jiff::Timestamp::now().as_nanosecond();
                    o.since_ns = Some(now - i128::from(secs) * 1_000_000_000);
                }
                "sinceTime" => {
                    let t: jiff::Timestamp =
                        v.parse().map_err(|_| format!("invalid sinceTime {v:?}"))?;
                    o.since_ns = Some(t.as_nanosecond());
                }
                _ => {}
            }
        }
        Ok(o)
    }
}

fn render(line: &Line<'_>, options: &LogOptions) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.text.len() + 40);
    if options.timestamps {
        out.extend_from_slice(line.time.as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(line.text.as_bytes());
    if line.full {
        out.push(b'\n');
    }
    out
}

fn after_since(line: &Line<'_>, options: &LogOptions) -> bool {
    match options.since_ns {
        None => true,
        Some(since) => {
            line.time.parse::<jiff::Timestamp>().map(|t| t.as_nanosecond() >= since).unwrap_or(true)
        }
    }
}

/// Streams the log at `path` into `out` as `options` say. `running` tells whether the
/// container still runs (for `follow`); the stream ends once it stopped and the file is read.
pub async fn stream(
    path: PathBuf,
    options: LogOptions,
    out: mpsc::Sender<Bytes>,
    running: impl Fn() -> futures::future::BoxFuture<'static, bool> + Send,
) -> std::io::Result<()> {
    let mut sent = 0usize;
    let mut send = |bytes: Vec<u8>| {
        let budget = options.limit_bytes.map(|l| l.saturating_sub(sent));
        let bytes = match budget {
            Some(0) => return None,
            Some(b) if bytes.len() > b => bytes[..b].to_vec(),
            _ => bytes,
        };
        sent += bytes.len();
        Some(Bytes::from(bytes))
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && options.follow => {
            wait_for(&path).await?
        }
        Err(e) => return Err(e),
    };
    let mut reader = tokio::io::BufReader::new(file);
    // The backlog: everything now in the file, trimmed to the tail.
    let mut backlog: Vec<Vec<u8>> = Vec::new();
    let mut line = String::new();
    let mut position: u64 = 0;
    loop {
        line.clear();
        let n = reader.read_line(&mut line).await?;
        if n == 0 || !line.ends_with('\n') {
            break;
        }
        position += n as u64;
        if let Some(parsed) = parse_line(line.trim_end_matches('\n'))
            && after_since(&parsed, &options)
        {
            backlog.push(render(&parsed, &options));
        }
    }
    if let Some(tail) = options.tail_lines {
        let full_lines = backlog.iter().filter(|l| l.ends_with(b"\n")).count();
        if full_lines > tail {
            let mut skip = full_lines - tail;
            let mut start = 0;
            for (i, l) in backlog.iter().enumerate() {
                if skip == 0 {
                    start = i;
                    break;
                }
                if l.ends_with(b"\n") {
                    skip -= 1;
                }
                start = i + 1;
            }
            backlog.drain(..start);
        }
    }
    for l in backlog {
        match send(l) {
            Some(b) => {
                if out.send(b).await.is_err() {
                    return Ok(());
                }
            }
            None => return Ok(()),
        }
    }
    if !options.follow {
        return Ok(());
    }
    // Follow: poll for appended lines until the container stops and the file is drained.
    let mut idle_checks = 0u32;
    loop {
        reader.seek(std::io::SeekFrom::Start(position)).await?;
        line.clear();
        let n = reader.read_line(&mut line).await?;
        if n > 0 && line.ends_with('\n') {
            position += n as u64;
            idle_checks = 0;
            if let Some(parsed) = parse_line(line.trim_end_matches('\n')) {
                match send(render(&parsed, &options)) {
                    Some(b) => {
                        if out.send(b).await.is_err() {
                            return Ok(());
                        }
                    }
                    None => return Ok(()),
                }
            }
            continue;
        }
        if out.is_closed() {
            return Ok(());
        }
        idle_checks += 1;
        // Every half second of silence, ask whether the container still runs.
        if idle_checks.is_multiple_of(5) && !running().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for(path: &Path) -> std::io::Result<tokio::fs::File> {
    for _ in 0..100 {
        if let Ok(f) = tokio::fs::File::open(path).await {
            return Ok(f);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::fs::File::open(path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_and_render() {
        let l = parse_line("2026-11-27T23:16:22.123456789Z stdout F hello world").unwrap();
        assert_eq!((l.stream, l.full, l.text), ("stdout", true, "hello world"));
        let options = LogOptions { timestamps: true, ..Default::default() };
        assert_eq!(render(&l, &options), b"2026-11-27T23:16:22.123456789Z hello world\n");
        let partial = parse_line("2026-11-27T23:16:22Z stderr P par").unwrap();
        assert_eq!(render(&partial, &LogOptions::default()), b"par");
        let o =
            LogOptions::from_query("follow=true&tailLines=10&timestamps=true&sinceSeconds=3600")
                .unwrap();
        assert!(o.follow && o.timestamps && o.since_ns.is_some());
        assert_eq!(o.tail_lines, Some(10));
        assert!(LogOptions::from_query("tailLines=x").is_err());
    }

    #[tokio::test]
    async fn tail_since_and_limit_select_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(
            &path,
            "2020-01-01T00:00:00Z stdout F one\n2026-01-01T00:00:00Z stdout F two\n2026-01-01T00:00:01Z stderr F three\n",
        )
        .unwrap();
        let collect = |options: LogOptions| {
            let path = path.clone();
            async move {
                let (tx, mut rx) = mpsc::channel(16);
                stream(path, options, tx, || Box::pin(async { false })).await.unwrap();
                let mut all = Vec::new();
                while let Some(b) = rx.recv().await {
                    all.extend_from_slice(&b);
                }
                String::from_utf8(all).unwrap()
            }
        };
        assert_eq!(collect(LogOptions::default()).await, "one\ntwo\nthree\n");
        assert_eq!(
            collect(LogOptions { tail_lines: Some(2), ..Default::default() }).await,
            "two\nthree\n"
        );
        let since = "2025-01-01T00:00:00Z".parse::<jiff::Timestamp>().unwrap().as_nanosecond();
        assert_eq!(
            collect(LogOptions { since_ns: Some(since), ..Default::default() }).await,
            "two\nthree\n"
        );
        assert_eq!(
            collect(LogOptions { limit_bytes: Some(6), ..Default::default() }).await,
            "one\ntw"
        );
    }
}
