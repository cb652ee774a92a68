//! The CRI log format containers' output is written in: `<time> <stream> <F|P> <text>` per
//! record (a `P` record continues in the next one). Read by `kubectl logs` and by the pod
//! worker for `FallbackToLogsOnError`.

/// One parsed CRI log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line<'a> {
    /// RFC 3339 timestamp as written.
    pub time: &'a str,
    /// `stdout` or `stderr`.
    pub stream: &'a str,
    /// The line ends here (`F`) or continues in the next record (`P`).
    pub full: bool,
    /// The text.
    pub text: &'a str,
}

/// Parses one CRI log record.
pub fn parse_line(line: &str) -> Option<Line<'_>> {
    let mut parts = line.splitn(4, ' ');
    let time = parts.next()?;
    let stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or("");
    Some(Line { time, stream, full: !tag.starts_with('P'), text })
}
