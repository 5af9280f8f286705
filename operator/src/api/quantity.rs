//! Kubernetes resource quantities as byte counts (`25Mi`, `1G`, `1048576`).

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Parses a quantity into bytes. Fractions are allowed with decimal suffixes (`1.5Gi`); the
/// result is rounded up to whole bytes. Returns `None` for anything that is not a quantity.
pub fn to_bytes(q: &Quantity) -> Option<u64> {
    let s = q.0.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if number.is_empty() || number.matches('.').count() > 1 {
        return None;
    }
    let multiplier: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        exp if exp.len() > 1 && exp.starts_with(['e', 'E']) => 10f64.powi(
            exp[1..]
                .parse::<i32>()
                .ok()
                .filter(|e| (0..=18).contains(e))?,
        ),
        _ => return None,
    };
    let value: f64 = number.parse().ok()?;
    let bytes = (value * multiplier).ceil();
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Option<u64> {
        to_bytes(&Quantity(s.into()))
    }

    #[test]
    fn parses_binary_and_decimal_suffixes() {
        assert_eq!(b("25Mi"), Some(25 * 1024 * 1024));
        assert_eq!(b("1Gi"), Some(1 << 30));
        assert_eq!(b("1G"), Some(1_000_000_000));
        assert_eq!(b("512"), Some(512));
        assert_eq!(b("1.5Ki"), Some(1536));
        assert_eq!(b("2k"), Some(2000));
        assert_eq!(b("1e3"), Some(1000));
    }

    #[test]
    fn refuses_non_quantities() {
        for s in ["", "Mi", "1.2.3", "10 Mi", "-1", "5x", "1e", "1e-3"] {
            assert_eq!(b(s), None, "{s:?}");
        }
    }
}
