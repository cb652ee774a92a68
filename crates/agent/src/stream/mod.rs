//! Streaming to and from containers: logs, exec, attach and port-forward, served on the
//! agent's HTTPS endpoint for the API server to proxy, over the protocols kubectl speaks.

pub mod context;
pub mod exec;
pub mod logs;
pub mod server;
pub mod spdy;
pub mod stats;
pub mod upstream;
pub mod ws;

/// Decodes `%XX` escapes and `+` (as spaces) of a query component.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `key=value` pairs of a query string, decoded, in order.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode() {
        assert_eq!(
            query_pairs("command=sh&command=-c&command=echo+hi%21&tty=true"),
            vec![
                ("command".to_owned(), "sh".to_owned()),
                ("command".to_owned(), "-c".to_owned()),
                ("command".to_owned(), "echo hi!".to_owned()),
                ("tty".to_owned(), "true".to_owned()),
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
    }
}
