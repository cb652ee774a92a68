//! Resource quantities (`100m`, `128Mi`, `1e3`) as numbers, for the scheduler, the
//! controllers and the node agent alike.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A quantity's value as a float (cores for CPU, bytes for memory).
pub fn parse_quantity(q: &Quantity) -> Option<f64> {
    let s = q.0.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    // An exponent form like 1e3 has its 'e' inside the number.
    if let Some(rest) = suffix.strip_prefix(['e', 'E'])
        && rest.parse::<i32>().is_ok()
    {
        return s.parse::<f64>().ok();
    }
    let n: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        "Pi" => 1024.0f64.powi(5),
        "Ei" => 1024.0f64.powi(6),
        _ => return None,
    };
    Some(n * factor)
}

/// CPU in millicores.
pub fn millicores(q: &Quantity) -> Option<i64> {
    parse_quantity(q).map(|v| (v * 1000.0).ceil() as i64)
}

/// Bytes.
pub fn bytes(q: &Quantity) -> Option<i64> {
    parse_quantity(q).map(|v| v.ceil() as i64)
}
