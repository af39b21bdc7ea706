//! Posting slots and repeating posts.
//!
//! A team sets weekly times per connection ("Mondays and Thursdays at 09:30"), in its timezone.
//! `schedule_at: "next_slot"` gives each target the first of its connection's slots that no other
//! delivery to that connection holds. A slot is a wall-clock time, so it stays at 09:30 across a
//! DST change; a slot inside the spring-forward gap does not exist that day and is skipped.
//!
//! A repeating post (`repeat_every_days: N`) schedules its next occurrence, a new post with the
//! same content and targets, when it is done (published, partly published or failed; not when it
//! is cancelled), N days of local time after this one's time. Each occurrence counts against the
//! monthly posts quota; when the quota refuses, the series stops and the team is told.

use crate::model::{DeliveryState, PostState};
use crate::store::{DeliveryRow, Posts, insert_deliveries, store};
use chrono::{DateTime, Datelike, Duration, NaiveDateTime, Timelike, Utc};
use herald_accounts::audit::{self, Actor, Event};
use herald_accounts::{Principal, Quota, authorize};
use herald_core::time::{Tz, local_to_utc};
use herald_core::{Action, Error, ErrorCode};
use herald_store::{Backend, Ts, Tx, TxConn, exec, on_read, on_tx};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashSet;
use utoipa::ToSchema;
use uuid::Uuid;

/// How far ahead `next_slot` looks for a free slot.
const HORIZON_WEEKS: i64 = 12;
const MAX_SLOTS: usize = 100;
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A weekly posting time in the team's timezone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Slot {
    /// `mon`, `tue`, `wed`, `thu`, `fri`, `sat` or `sun`.
    pub day: String,
    /// `HH:MM`, 24-hour, local time.
    pub time: String,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SlotsInput {
    pub slots: Vec<Slot>,
}

fn invalid(field: &str, msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::ValidationFailed, msg).with_details(json!({"field": field}))
}

impl Slot {
    /// (weekday from Monday = 0, minute after midnight).
    fn parse(&self, i: usize) -> Result<(i64, i64), Error> {
        let day = DAYS.iter().position(|d| self.day.eq_ignore_ascii_case(d)).ok_or_else(|| {
            invalid(
                &format!("slots[{i}].day"),
                format!("`{}` is not a day; use mon, tue, wed, thu, fri, sat or sun", self.day),
            )
        })?;
        let t = chrono::NaiveTime::parse_from_str(&self.time, "%H:%M").map_err(|_| {
            invalid(&format!("slots[{i}].time"), format!("`{}` is not a time; use HH:MM, like 09:30", self.time))
        })?;
        Ok((day as i64, (t.hour() * 60 + t.minute()) as i64))
    }

    fn from_row(weekday: i64, minute: i64) -> Slot {
        Slot { day: DAYS[weekday.clamp(0, 6) as usize].into(), time: format!("{:02}:{:02}", minute / 60, minute % 60) }
    }
}

/// The first slot instant after `after` that is not in `taken`, within the horizon.
pub(crate) fn next_slot_time(
    slots: &[(i64, i64)],
    tz: Tz,
    after: DateTime<Utc>,
    taken: &HashSet<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    let mut slots = slots.to_vec();
    slots.sort_unstable_by_key(|(_, m)| *m);
    let start = after.with_timezone(&tz).date_naive();
    for offset in 0..=HORIZON_WEEKS * 7 {
        let date = start + Duration::days(offset);
        let weekday = date.weekday().num_days_from_monday() as i64;
        for (_, minute) in slots.iter().filter(|(d, _)| *d == weekday) {
            let local = date.and_hms_opt((*minute / 60) as u32, (*minute % 60) as u32, 0)?;
            let Ok(at) = local_to_utc(local, tz) else { continue }; // in the spring-forward gap
            if at > after && !taken.contains(&at) {
                return Some(at);
            }
        }
    }
    None
}

/// `anchor` plus `days` days of wall-clock time in `tz`, as often as it takes to pass `now`.
pub(crate) fn next_occurrence(anchor: DateTime<Utc>, days: i64, tz: Tz, now: DateTime<Utc>) -> DateTime<Utc> {
    let mut local: NaiveDateTime = anchor.with_timezone(&tz).naive_local();
    loop {
        local += Duration::days(days.max(1));
        // A wall-clock time the clocks skip that day moves past the change.
        let at = local_to_utc(local, tz).or_else(|_| local_to_utc(local + Duration::hours(1), tz));
        if let Ok(at) = at
            && at > now
        {
            return at;
        }
    }
}

/// Serialises slot choices per connection: PostgreSQL writers may run at once; SQLite has one.
async fn lock_connection(tx: &mut Tx, connection: Uuid) -> Result<(), Error> {
    if tx.backend() == Backend::Sqlite {
        return Ok(()); // its single writer already serialises them
    }
    if let TxConn::Postgres(c) = tx.conn().await.map_err(store)? {
        let key = i64::from_be_bytes(connection.as_bytes()[..8].try_into().expect("8 bytes"));
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(key).execute(&mut *c).await.map_err(store)?;
    }
    Ok(())
}

/// The next free slot of `connection` after now, read inside the creating transaction (after its
/// first write, so on SQLite nobody else can take the slot meanwhile).
pub(crate) async fn next_free(tx: &mut Tx, connection: Uuid, tz: Tz) -> Result<Option<DateTime<Utc>>, Error> {
    lock_connection(tx, connection).await?;
    let slots: Vec<(i64, i64)> = on_tx!(tx, c => sqlx::query_as(
        "SELECT weekday, minute FROM posting_slots WHERE connection_id = $1")
        .bind(connection).fetch_all(&mut *c).await)
    .map_err(store)?;
    if slots.is_empty() {
        return Ok(None);
    }
    let now = Utc::now();
    let until = now + Duration::weeks(HORIZON_WEEKS) + Duration::days(1);
    let taken: Vec<Ts> = on_tx!(tx, c => sqlx::query_scalar(
        "SELECT run_at FROM deliveries WHERE connection_id = $1 AND run_at > $2 AND run_at < $3 \
         AND state IN ('pending', 'scheduled', 'publishing', 'published', 'unconfirmed')")
        .bind(connection).bind(Ts(now)).bind(Ts(until)).fetch_all(&mut *c).await)
    .map_err(store)?;
    let taken: HashSet<DateTime<Utc>> = taken.into_iter().map(|t| t.0).collect();
    Ok(next_slot_time(&slots, tz, now, &taken))
}

impl Posts {
    /// When `connection`'s next free posting slot comes, without taking it: a workflow's delay
    /// step waits for it.
    pub async fn next_free_slot(&self, team: Uuid, connection: Uuid) -> Result<Option<DateTime<Utc>>, Error> {
        let tz = self.team_timezone(team, None).await?;
        let mut tx = self.db.begin().await.map_err(Error::from)?;
        let at = next_free(&mut tx, connection, tz).await;
        tx.rollback().await.map_err(Error::from)?;
        at
    }

    /// A connection's posting slots, by day and time.
    pub async fn slots(&self, p: &Principal, connection: Uuid) -> Result<Vec<Slot>, Error> {
        let (team, _) = authorize(p, Action::Read)?;
        self.connections.get(team, connection).await?;
        let rows: Vec<(i64, i64)> = on_read!(self.db, c => sqlx::query_as(
            "SELECT weekday, minute FROM posting_slots WHERE team_id = $1 AND connection_id = $2 ORDER BY weekday, minute")
            .bind(team).bind(connection).fetch_all(c).await)
        .map_err(store)?;
        Ok(rows.into_iter().map(|(d, m)| Slot::from_row(d, m)).collect())
    }

    /// Replaces a connection's posting slots. Posts already in a slot keep their time.
    pub async fn set_slots(&self, p: &Principal, connection: Uuid, input: SlotsInput) -> Result<Vec<Slot>, Error> {
        let (team, _) = authorize(p, Action::Publish)?;
        self.connections.get(team, connection).await?;
        if input.slots.len() > MAX_SLOTS {
            return Err(invalid("slots", format!("at most {MAX_SLOTS} slots per connection")));
        }
        let mut parsed = input.slots.iter().enumerate().map(|(i, s)| s.parse(i)).collect::<Result<Vec<_>, _>>()?;
        parsed.sort_unstable();
        parsed.dedup();
        let mut tx = self.db.begin().await.map_err(Error::from)?;
        exec!(tx, "DELETE FROM posting_slots WHERE team_id = $1 AND connection_id = $2", team, connection)
            .map_err(store)?;
        for (day, minute) in &parsed {
            exec!(
                tx,
                "INSERT INTO posting_slots (team_id, connection_id, weekday, minute) VALUES ($1, $2, $3, $4)",
                team,
                connection,
                *day,
                *minute
            )
            .map_err(store)?;
        }
        audit::record(
            &mut tx,
            &Actor::of(p),
            Event::new(Some(team), "connection.slots_set")
                .target("connection", connection)
                .details(json!({"slots": parsed.len()})),
        )
        .await?;
        tx.commit().await.map_err(Error::from)?;
        Ok(parsed.into_iter().map(|(d, m)| Slot::from_row(d, m)).collect())
    }
}

/// Schedules the next occurrence of a repeating post that just finished, inside `tx`. Returns the
/// new post's id, or `None` when the series ends here (no targets left, or the quota refused).
pub(crate) async fn schedule_repeat(tx: &mut Tx, post: Uuid) -> Result<Option<Uuid>, Error> {
    #[derive(sqlx::FromRow)]
    struct P {
        team_id: Uuid,
        author_user: Option<Uuid>,
        author_key: Option<Uuid>,
        content: String,
        schedule_at: Option<Ts>,
        timezone: Option<String>,
        campaign: Option<String>,
        tags: String,
        created_at: Ts,
        repeat_days: Option<i64>,
        series_id: Option<Uuid>,
    }
    let p: P = on_tx!(tx, c => sqlx::query_as(
        "SELECT team_id, author_user, author_key, content, schedule_at, timezone, campaign, tags, created_at, \
         repeat_days, series_id FROM posts WHERE id = $1")
        .bind(post).fetch_one(&mut *c).await)
    .map_err(store)?;
    let Some(days) = p.repeat_days.filter(|d| *d > 0) else { return Ok(None) };
    let zone = match &p.timezone {
        Some(z) => z.clone(),
        None => on_tx!(tx, c => sqlx::query_scalar::<_, String>("SELECT timezone FROM teams WHERE id = $1")
            .bind(p.team_id).fetch_one(&mut *c).await)
        .map_err(store)?,
    };
    let tz = herald_core::time::parse_timezone(&zone).unwrap_or(Tz::UTC);
    let now = Utc::now();
    let at = next_occurrence(p.schedule_at.unwrap_or(p.created_at).0, days, tz, now);
    let series = p.series_id.unwrap_or(post);

    // The targets whose connections still exist, each with its pacing bucket.
    let targets: Vec<(Uuid, String, String, Option<String>)> = on_tx!(tx, c => sqlx::query_as(
        "SELECT d.connection_id, d.platform, d.content, j.bucket_key FROM deliveries d \
         JOIN connections c ON c.id = d.connection_id LEFT JOIN jobs j ON j.id = d.job_id \
         WHERE d.post_id = $1 ORDER BY d.id")
        .bind(post).fetch_all(&mut *c).await)
    .map_err(store)?;
    let stop = |why: String| json!({"post": post, "series": series, "why": why});
    if targets.is_empty() {
        let data = stop("none of its connections exist any more".into());
        crate::events::emit(
            tx,
            p.team_id,
            "post.repeat_stopped",
            ("post", post),
            "a repeating post stopped: none of its connections exist any more",
            data,
        )
        .await?;
        return Ok(None);
    }
    if let Err(e) = herald_accounts::consume_monthly(tx, p.team_id, Quota::PostsPerMonth, 1).await {
        if e.code != ErrorCode::QuotaExceeded {
            return Err(e);
        }
        let message = format!("a repeating post stopped: {}", e.message);
        crate::events::emit(tx, p.team_id, "post.repeat_stopped", ("post", post), &message, stop(e.message)).await?;
        return Ok(None);
    }
    let id = Uuid::now_v7();
    let stamp = Ts::now();
    exec!(
        tx,
        "INSERT INTO posts (id, team_id, author_user, author_key, state, content, schedule_at, timezone, campaign, tags, \
         repeat_days, series_id, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13)",
        id,
        p.team_id,
        p.author_user,
        p.author_key,
        PostState::Scheduled.as_str(),
        &p.content,
        Ts(at),
        &p.timezone,
        &p.campaign,
        &p.tags,
        days,
        series,
        stamp
    )
    .map_err(store)?;
    let (mut rows, buckets): (Vec<DeliveryRow>, Vec<Option<String>>) = targets
        .into_iter()
        .map(|(connection, platform, overrides, bucket)| {
            let d =
                DeliveryRow::fresh(id, p.team_id, connection, &platform, DeliveryState::Scheduled, overrides, Some(at));
            (d, bucket)
        })
        .unzip();
    insert_deliveries(tx, stamp, &mut rows, Some(&buckets)).await?;
    let data =
        json!({"post": id, "state": PostState::Scheduled, "schedule_at": at, "series": series, "previous": post});
    crate::events::emit(
        tx,
        p.team_id,
        "post.created",
        ("post", id),
        "the next post of a series was created",
        data.clone(),
    )
    .await?;
    crate::events::emit(tx, p.team_id, "post.scheduled", ("post", id), "post scheduled", data).await?;
    Ok(Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn slots_keep_their_wall_clock_time_across_dst_and_skip_taken_ones() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        // Mondays and Thursdays at 09:30 local.
        let slots = [(0, 570), (3, 570)];
        // Thursday 2026-03-26, 10:00 Berlin (CET, +01:00): today's slot has passed.
        let after = utc("2026-03-26T09:00:00Z");
        let first = next_slot_time(&slots, tz, after, &HashSet::new()).unwrap();
        assert_eq!(first, utc("2026-03-30T07:30:00Z"), "Monday after the change is CEST, +02:00");
        let taken: HashSet<_> = [first].into();
        let second = next_slot_time(&slots, tz, after, &taken).unwrap();
        assert_eq!(second, utc("2026-04-02T07:30:00Z"));
        // No slots, no time.
        assert_eq!(next_slot_time(&[], tz, after, &HashSet::new()), None);
    }

    #[test]
    fn a_slot_in_the_spring_gap_is_skipped_that_day() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        // Sundays at 02:30: on 2026-03-29 that time does not exist in Berlin.
        let slots = [(6, 150)];
        let after = utc("2026-03-28T12:00:00Z");
        let at = next_slot_time(&slots, tz, after, &HashSet::new()).unwrap();
        assert_eq!(at, utc("2026-04-05T00:30:00Z"));
    }

    #[test]
    fn repeats_keep_the_local_hour_and_skip_missed_occurrences() {
        let tz: Tz = "America/New_York".parse().unwrap();
        // Saturday 2026-10-31 09:00 EDT (-04:00), every 7 days: the next is 09:00 EST (-05:00).
        let anchor = tz.with_ymd_and_hms(2026, 10, 31, 9, 0, 0).unwrap().with_timezone(&Utc);
        let next = next_occurrence(anchor, 7, tz, anchor);
        assert_eq!(next, utc("2026-11-07T14:00:00Z"));
        // Long overdue (a node was down for weeks): the next one is in the future, on the rhythm.
        let now = utc("2026-11-20T00:00:00Z");
        assert_eq!(next_occurrence(anchor, 7, tz, now), utc("2026-11-21T14:00:00Z"));
    }
}
