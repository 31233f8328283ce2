//! Kubernetes resource quantities (`500m`, `2`, `128Mi`, `1G`, `1e3`) as
//! exact thousandths, so CPU and memory compare and add without rounding.

/// A quantity in thousandths of its unit (millicores for CPU, millibytes
/// for memory).
pub type Milli = i128;

/// Parses a quantity; `None` when it is not one.
pub fn parse(s: &str) -> Option<Milli> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let suffixes: [(&str, i128, bool); 13] = [
        ("Ki", 1 << 10, false),
        ("Mi", 1 << 20, false),
        ("Gi", 1 << 30, false),
        ("Ti", 1 << 40, false),
        ("Pi", 1 << 50, false),
        ("Ei", 1 << 60, false),
        ("m", 1, true),
        ("k", 1_000, false),
        ("M", 1_000_000, false),
        ("G", 1_000_000_000, false),
        ("T", 1_000_000_000_000, false),
        ("P", 1_000_000_000_000_000, false),
        ("E", 1_000_000_000_000_000_000, false),
    ];
    let (number, factor, milli) = suffixes
        .iter()
        .find_map(|(suffix, factor, milli)| s.strip_suffix(suffix).map(|n| (n, *factor, *milli)))
        .unwrap_or((s, 1, false));
    let value: f64 = number.parse().ok()?;
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    let scale = if milli { 1.0 } else { 1000.0 };
    Some((value * scale * factor as f64).round() as i128)
}

/// Formats thousandths back as a plain quantity (`250m`, `2`).
pub fn format(milli: Milli) -> String {
    if milli % 1000 == 0 {
        (milli / 1000).to_string()
    } else {
        format!("{milli}m")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_exactly() {
        assert_eq!(parse("500m"), Some(500));
        assert_eq!(parse("2"), Some(2000));
        assert_eq!(parse("0.5"), Some(500));
        assert_eq!(parse("128Mi"), Some(128 * 1024 * 1024 * 1000));
        assert_eq!(parse("1G"), Some(1_000_000_000_000));
        assert_eq!(parse("1e3"), Some(1_000_000));
        assert_eq!(parse("abc"), None);
        assert_eq!(parse("-1"), None);
        assert_eq!(format(250), "250m");
        assert_eq!(format(2000), "2");
    }
}
