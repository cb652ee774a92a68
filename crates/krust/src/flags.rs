//! Values of command-line flags shared by the subcommands.

use std::time::Duration;

/// A duration as upstream's flags take it: `500ms`, `10s`, `5m`, `1h` (bare numbers are
/// seconds).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("invalid duration unit in {s:?} (use ms, s, m or h)")),
    }
}
