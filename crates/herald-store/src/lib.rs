//! Herald's storage: one [`Db`] handle over SQLite (embedded, the default) or PostgreSQL, chosen by
//! the URL scheme. Each backend has its own migrations; both must behave the same, which the
//! shared test suite (see [`testing`]) checks.
//!
//! Writes go through [`Tx`], so a caller can make several changes (a post, its deliveries, their
//! jobs) commit or roll back together.
#![forbid(unsafe_code)]

pub mod cache;
mod db;
mod error;
pub mod group;
pub mod jsonb;
mod migrations;
mod portable;
pub mod testing;
mod tx;
mod url;
mod wakeups;

pub use cache::ReadCache;
pub use db::{Backend, Db, Pools, StoreOptions, Writer, WriterStats};
pub use error::StoreError;
pub use portable::{Ids, Ts};
pub use tx::{Deferred, Snapshot, SqliteTx, Tx, TxConn};
pub use url::DatabaseUrl;
pub use wakeups::Wakeups;

/// One column of `rows`, as an array to bind for PostgreSQL's `UNNEST($N::type[], …)`: a batch
/// statement over arrays has one text whatever its number of rows, so it is parsed and planned
/// once per connection and kept, where a `VALUES` list is a new statement for each size (and
/// sqlx sends a new statement in two round trips, the first to describe it).
pub fn column<'a, T, U>(rows: &'a [T], f: impl FnMut(&'a T) -> U) -> Vec<U> {
    rows.iter().map(f).collect()
}

/// `$first, $first+1, …` for an `IN (…)` list of `n` values; both backends take `$N` parameters.
pub fn placeholders(first: usize, n: usize) -> String {
    let mut out = String::with_capacity(n * 6);
    push_placeholders(&mut out, first, n);
    out
}

/// `($first, …), (…), …`: `rows` rows of `per_row` parameters each, for a multi-row `VALUES`.
/// Batch writes build these on the writer's path, so it is one string, not one per parameter.
pub fn value_rows(first: usize, rows: usize, per_row: usize) -> String {
    let mut out = String::with_capacity(rows * (per_row * 6 + 4));
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        push_placeholders(&mut out, first + r * per_row, per_row);
        out.push(')');
    }
    out
}

fn push_placeholders(out: &mut String, first: usize, n: usize) {
    use std::fmt::Write;
    for i in first..first + n {
        if i > first {
            out.push_str(", ");
        }
        let _ = write!(out, "${i}");
    }
}

/// Rewrites a statement whose `$N` parameters appear in order, each once (`$1`, `$2`, … as
/// written, outside quoted text), as anonymous `?` parameters, which SQLite binds by position.
/// SQLite finds a named parameter by scanning the statement's list of names, at prepare and at
/// each bind, so a batch statement with thousands of them costs a quadratic scan on the single
/// writer (`herald bench deliveries`: a third of the writer's time). `None` when the parameters
/// are not in that order, or there are none.
pub fn anonymous_params(sql: &str) -> Option<String> {
    params_in_order(sql, |out, _| out.push('?')).map(|(sql, _)| sql)
}

/// Rewrites a statement's `$N` parameters, which must appear in order, each once (outside quoted
/// text), with `write` (given each one's number); also says how many there were. `None` when the
/// parameters are not in that order, or there are none.
pub(crate) fn params_in_order(sql: &str, mut write: impl FnMut(&mut String, usize)) -> Option<(String, usize)> {
    let mut next = 1usize;
    let out = rewrite_params(sql, |out, n| {
        (n == next).then(|| {
            write(out, next);
            next += 1;
        })
    })?;
    (next > 1).then_some((out, next - 1))
}

/// `sql` with each `$N` parameter (outside quoted text, in any order, repeated or not) numbered
/// `$N+by`, for a statement that goes after another's parameters.
pub(crate) fn shift_params(sql: &str, by: usize) -> String {
    let shifted = rewrite_params(sql, |out, n| {
        out.push('$');
        out.push_str(&(n + by).to_string());
        Some(())
    });
    // Only a number too big for `usize` is not rewritten: no parameter PostgreSQL takes either,
    // so the statement fails there, as written.
    shifted.unwrap_or_else(|| sql.to_string())
}

/// `sql` with each `$N` parameter outside quoted text replaced by what `write` (given `N`) puts
/// in its place; `None` as soon as `write` answers `None`.
fn rewrite_params(sql: &str, mut write: impl FnMut(&mut String, usize) -> Option<()>) -> Option<String> {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len() + 8);
    let (mut last, mut i) = (0usize, 0usize);
    let mut quote: Option<u8> = None;
    while i < b.len() {
        match (quote, b[i]) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, c @ (b'\'' | b'"')) => quote = Some(c),
            (None, b'$') if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let end = (i + 1..b.len()).find(|&j| !b[j].is_ascii_digit()).unwrap_or(b.len());
                out.push_str(&sql[last..i]);
                write(&mut out, sql[i + 1..end].parse().ok()?)?;
                (last, i) = (end, end);
                continue;
            }
            (None, _) => {}
        }
        i += 1;
    }
    out.push_str(&sql[last..]);
    Some(out)
}

/// Microseconds since the Unix epoch, UTC: how SQLite stores every time.
pub fn to_micros(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_micros()
}

/// The inverse of [`to_micros`].
pub fn from_micros(us: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(us).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::{anonymous_params, placeholders, shift_params, value_rows};

    #[test]
    fn parameters_shift_in_any_order_and_quoted_text_stays() {
        assert_eq!(
            shift_params("SELECT $2, $1, 'it''s $1', \"$3\", $1::int8[], $10", 4),
            "SELECT $6, $5, 'it''s $1', \"$3\", $5::int8[], $14"
        );
        assert_eq!(shift_params("SELECT 1", 3), "SELECT 1");
    }

    #[test]
    fn placeholders_number_from_the_first_and_rows_go_on_from_each_other() {
        assert_eq!(placeholders(3, 3), "$3, $4, $5");
        assert_eq!(placeholders(1, 0), "");
        assert_eq!(value_rows(2, 2, 3), "($2, $3, $4), ($5, $6, $7)");
        assert_eq!(value_rows(1, 1, 1), "($1)");
        assert_eq!(value_rows(1, 0, 4), "");
    }

    #[test]
    fn parameters_in_order_become_anonymous_and_others_stay_as_written() {
        assert_eq!(
            anonymous_params("INSERT INTO t VALUES ($1, $2), ($3, '$4 $.a', \"$9\", $4) -- $10").as_deref(),
            None,
            "a comment is not parsed: $10 after $4 is out of order"
        );
        assert_eq!(
            anonymous_params("INSERT INTO t VALUES ($1, $2), ($3, 'it''s $7', json_extract(x, '$.a'), $4)").as_deref(),
            Some("INSERT INTO t VALUES (?, ?), (?, 'it''s $7', json_extract(x, '$.a'), ?)")
        );
        assert_eq!(anonymous_params("UPDATE t SET a = $1, b = $1 WHERE id = $2"), None, "$1 twice");
        assert_eq!(anonymous_params("SELECT $2, $1"), None, "out of order");
        assert_eq!(anonymous_params("SELECT 1"), None, "no parameters");
        assert_eq!(anonymous_params("SELECT $1,$2").as_deref(), Some("SELECT ?,?"));
    }
}
