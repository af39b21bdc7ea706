//! Durations as people write them in configuration: `30s`, `5m`, `2h`, `7d`, `250ms`, or bare seconds.

use std::time::Duration;

/// Parses `250ms`, `30s`, `5m`, `2h`, `7d` or a bare number of seconds.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("`{input}` is not a duration; write it like 30s, 5m, 2h or 7d"))?;
    let secs = |k: u64| n.checked_mul(k).map(Duration::from_secs);
    let d = match unit.trim() {
        "" | "s" => secs(1),
        "ms" => Some(Duration::from_millis(n)),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        other => {
            return Err(format!("`{input}` has an unknown unit `{other}`; use ms, s, m, h or d"));
        }
    };
    d.ok_or_else(|| format!("`{input}` is too large"))
}

/// The inverse of [`parse_duration`], choosing the largest whole unit.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    match s {
        0 => "0s".into(),
        _ if s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        _ if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        _ if s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_round_trip() {
        for (text, secs) in [("30s", 30), ("5m", 300), ("2h", 7200), ("7d", 604_800), ("45", 45)] {
            assert_eq!(parse_duration(text).unwrap(), Duration::from_secs(secs));
        }
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(format_duration(Duration::from_secs(604_800)), "7d");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert!(parse_duration("5 weeks").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}
