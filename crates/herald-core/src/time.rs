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

pub use chrono_tz::Tz;

/// An IANA timezone such as `Europe/Berlin` or `UTC`.
pub fn parse_timezone(name: &str) -> Result<chrono_tz::Tz, String> {
    name.trim().parse::<chrono_tz::Tz>().map_err(|_| {
        format!("`{name}` is not a timezone; use an IANA name such as Europe/Berlin, America/New_York or UTC")
    })
}

/// A wall-clock time in `tz` as UTC. When clocks go back, a time that happens twice is the first
/// of the two; when they go forward, a time that never happens is an error that says so, rather
/// than a silent shift.
pub fn local_to_utc(local: chrono::NaiveDateTime, tz: chrono_tz::Tz) -> Result<chrono::DateTime<chrono::Utc>, String> {
    use chrono::{LocalResult, TimeZone};
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => Ok(t.with_timezone(&chrono::Utc)),
        LocalResult::Ambiguous(first, _) => Ok(first.with_timezone(&chrono::Utc)),
        LocalResult::None => Err(format!(
            "{} does not exist in {tz}: the clocks move forward then; choose a time after the change",
            local.format("%Y-%m-%d %H:%M")
        )),
    }
}

/// A schedule time: RFC 3339 with an offset or `Z` is an instant; without one
/// (`2026-03-29T09:00`, seconds optional) it is a wall-clock time in `tz`.
pub fn parse_schedule(input: &str, tz: chrono_tz::Tz) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let s = input.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"] {
        if let Ok(local) = chrono::NaiveDateTime::parse_from_str(s, format) {
            return local_to_utc(local, tz);
        }
    }
    Err(format!(
        "`{input}` is not a time; write 2026-03-29T09:00 (in the timezone) or 2026-03-29T07:00:00Z (an instant)"
    ))
}

#[cfg(test)]
mod zone_tests {
    use super::*;

    #[test]
    fn local_times_cross_dst_changes_correctly() {
        let berlin = parse_timezone("Europe/Berlin").unwrap();
        // Winter (UTC+1) and summer (UTC+2) either side of 2026-03-29.
        assert_eq!(parse_schedule("2026-03-28T09:00", berlin).unwrap().to_rfc3339(), "2026-03-28T08:00:00+00:00");
        assert_eq!(parse_schedule("2026-03-29T09:00", berlin).unwrap().to_rfc3339(), "2026-03-29T07:00:00+00:00");
        // 02:30 never happens on that night.
        let e = parse_schedule("2026-03-29T02:30", berlin).unwrap_err();
        assert!(e.contains("does not exist") && e.contains("Europe/Berlin"), "{e}");
        // 02:30 happens twice on 2026-10-25: the first one (still UTC+2).
        assert_eq!(parse_schedule("2026-10-25T02:30", berlin).unwrap().to_rfc3339(), "2026-10-25T00:30:00+00:00");
        // An instant is an instant whatever the zone.
        assert_eq!(parse_schedule("2026-03-29T09:00:00Z", berlin).unwrap().to_rfc3339(), "2026-03-29T09:00:00+00:00");
        let ny = parse_timezone("America/New_York").unwrap();
        assert_eq!(parse_schedule("2026-03-08 12:00", ny).unwrap().to_rfc3339(), "2026-03-08T16:00:00+00:00");
        assert!(parse_timezone("Mars/Olympus").unwrap_err().contains("IANA"));
        assert!(parse_schedule("tomorrow", berlin).is_err());
    }
}
