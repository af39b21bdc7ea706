//! Cron schedules in a timezone. Times are worked out in local time (croner resolves the DST gap
//! and overlap), stored as UTC, and each firing is one event whose external id is the scheduled
//! instant, so two nodes, or a restart mid-firing, can never fire one time twice.

use crate::model::{Missed, Settings};
use chrono::{DateTime, TimeDelta, Utc};
use croner::Cron;
use std::str::FromStr;

/// A firing later than this after its time counts as missed (Herald was down, or busy).
pub const GRACE: TimeDelta = TimeDelta::seconds(60);

/// Parses a 5-field (or 6-field, seconds first) cron expression.
pub fn parse(expr: &str) -> Result<Cron, String> {
    if expr.len() > 200 {
        return Err("the cron expression is too long".into());
    }
    Cron::from_str(expr)
        .map_err(|e| format!("`{expr}` is not a cron expression ({e}); e.g. \"0 9 * * 1-5\" is 09:00 on weekdays"))
}

fn zone(s: &Settings) -> chrono_tz::Tz {
    s.timezone.as_deref().and_then(|z| z.parse().ok()).unwrap_or(chrono_tz::UTC)
}

/// The first firing strictly after `after`.
pub fn next_after(s: &Settings, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let cron = parse(s.cron.as_deref()?).ok()?;
    let local = after.with_timezone(&zone(s));
    cron.find_next_occurrence(&local, false).ok().map(|t| t.with_timezone(&Utc))
}

/// The latest firing at or before `at`.
pub fn latest_at_or_before(s: &Settings, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let cron = parse(s.cron.as_deref()?).ok()?;
    let local = at.with_timezone(&zone(s));
    cron.find_previous_occurrence(&local, true).ok().map(|t| t.with_timezone(&Utc))
}

/// What a due schedule does now: the time to fire for (if any), and the next time to wake.
#[derive(Debug, Clone, PartialEq)]
pub struct Due {
    pub fire: Option<DateTime<Utc>>,
    /// How many times were missed and not fired.
    pub skipped: u32,
    pub next: Option<DateTime<Utc>>,
}

/// Decides a due schedule whose stored next time is `due`. On time: fire it. Late past the grace
/// (Herald was down): with `run_once`, fire once for the latest missed time; with `skip`, fire
/// nothing. Either way the next time is the first one after now.
pub fn decide(s: &Settings, due: DateTime<Utc>, now: DateTime<Utc>) -> Due {
    let next = next_after(s, now);
    if now - due <= GRACE {
        return Due { fire: Some(due), skipped: 0, next };
    }
    let latest = latest_at_or_before(s, now).filter(|t| *t >= due).unwrap_or(due);
    let mut missed = 0u32;
    let mut t = due;
    while t <= now && missed < 10_000 {
        missed += 1;
        match next_after(s, t) {
            Some(n) => t = n,
            None => break,
        }
    }
    match s.missed.unwrap_or_default() {
        Missed::RunOnce => Due { fire: Some(latest), skipped: missed.saturating_sub(1), next },
        Missed::Skip => Due { fire: None, skipped: missed, next },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn settings(cron: &str, tz: &str, missed: Missed) -> Settings {
        Settings { cron: Some(cron.into()), timezone: Some(tz.into()), missed: Some(missed), ..Settings::default() }
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn a_local_time_keeps_its_wall_clock_across_dst() {
        // 09:00 in Berlin is 08:00 UTC in winter and 07:00 UTC in summer (DST began 2026-03-29).
        let s = settings("0 9 * * *", "Europe/Berlin", Missed::RunOnce);
        assert_eq!(next_after(&s, utc(2026, 3, 27, 12, 0)), Some(utc(2026, 3, 28, 8, 0)));
        assert_eq!(next_after(&s, utc(2026, 3, 28, 12, 0)), Some(utc(2026, 3, 29, 7, 0)));
        // And back on 2026-10-25.
        assert_eq!(next_after(&s, utc(2026, 10, 24, 12, 0)), Some(utc(2026, 10, 25, 8, 0)));
    }

    #[test]
    fn the_spring_gap_and_the_autumn_overlap_fire_once() {
        // 02:30 does not exist in Berlin on 2026-03-29: that day fires once (at the shifted
        // instant) or not at all, never twice; the next day is at 02:30 CEST (00:30 UTC).
        let s = settings("30 2 * * *", "Europe/Berlin", Missed::RunOnce);
        let mut t = utc(2026, 3, 28, 12, 0);
        let mut fires = Vec::new();
        for _ in 0..3 {
            t = next_after(&s, t).unwrap();
            fires.push(t);
        }
        assert!(fires.windows(2).all(|w| w[1] - w[0] >= TimeDelta::hours(12)), "{fires:?}");
        assert_eq!(*fires.last().unwrap(), utc(2026, 3, 31, 0, 30));
        // 02:30 happens twice on 2026-10-25 (CEST, then CET): one firing that day.
        let mut t = utc(2026, 10, 24, 12, 0);
        let mut fires = Vec::new();
        for _ in 0..3 {
            t = next_after(&s, t).unwrap();
            fires.push(t);
        }
        let on_the_day =
            fires.iter().filter(|f| f.date_naive() == chrono::NaiveDate::from_ymd_opt(2026, 10, 25).unwrap()).count();
        assert_eq!(on_the_day, 1, "{fires:?}");
        assert_eq!(fires[0], utc(2026, 10, 25, 0, 30), "the first 02:30 (CEST) is the one used");
    }

    #[test]
    fn missed_firings_run_once_or_are_skipped() {
        let due = utc(2026, 5, 1, 9, 0);
        let now = utc(2026, 5, 1, 12, 10);
        let s = settings("0 * * * *", "UTC", Missed::RunOnce);
        let d = decide(&s, due, now);
        assert_eq!(d.fire, Some(utc(2026, 5, 1, 12, 0)), "the latest missed time fires, once");
        assert_eq!(d.skipped, 3);
        assert_eq!(d.next, Some(utc(2026, 5, 1, 13, 0)));
        let s = settings("0 * * * *", "UTC", Missed::Skip);
        let d = decide(&s, due, now);
        assert_eq!(d.fire, None);
        assert_eq!(d.skipped, 4);
        assert_eq!(d.next, Some(utc(2026, 5, 1, 13, 0)));
        // On time (within the grace): the due time fires.
        let d = decide(&s, due, due + TimeDelta::seconds(5));
        assert_eq!(d.fire, Some(due));
        assert_eq!(d.next, Some(utc(2026, 5, 1, 10, 0)));
    }

    #[test]
    fn bad_expressions_are_refused_with_an_example() {
        let e = parse("every day").unwrap_err();
        assert!(e.contains("0 9 * * 1-5"), "{e}");
        assert!(parse("0 9 * * 1-5").is_ok());
    }
}
