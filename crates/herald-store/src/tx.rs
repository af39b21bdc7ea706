use crate::db::{Backend, Pools, Writer, WriterConn, WriterUse};
use crate::error::StoreError;
use crate::wakeups::Wakeups;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::sqlite::SqliteArguments;
use sqlx::sqlite::{SqliteQueryResult, SqliteRow, SqliteStatement, SqliteTypeInfo};
use sqlx::{
    Arguments, Either, Encode, Execute, Executor, FromRow, PgConnection, Postgres, Sqlite, SqliteConnection,
    Transaction, Type,
};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::OwnedMutexGuard;

/// A write transaction on either backend. Work done through it commits or rolls back as one;
/// dropping it without [`Tx::commit`] rolls back.
pub struct Tx {
    inner: Inner,
    pending: Pending,
    notify: BTreeSet<String>,
    after_commit: Vec<Box<dyn FnOnce() + Send>>,
    wakeups: Arc<Wakeups>,
}

enum Inner {
    Sqlite(SqliteTx),
    Postgres(Transaction<'static, Postgres>),
}

/// SQLite's connection inside a [`Tx`] or a [`Snapshot`], for statements run on it
/// (`&mut SqliteTx` is an [`sqlx::Executor`]). On the writer, the first statement carries the
/// transaction's `BEGIN IMMEDIATE` in the same trip to the connection's thread, when nothing
/// deferred went before it: most transactions begin with a read (an `INSERT … RETURNING`, a
/// claim), and a `BEGIN` of its own would be a trip, two thread wake-ups, while the writer is held.
#[derive(Debug)]
pub enum SqliteTx {
    /// SQLite's write connection, in `BEGIN IMMEDIATE` (once the first statement has gone).
    Writer(WriterTx),
    /// A read connection (a [`Snapshot`]).
    Read(Transaction<'static, Sqlite>),
}

/// The writer, held for one transaction. Dropped without [`WriterTx::end`], it rolls back on a
/// task that keeps the writer until then, so the next transaction starts clean.
///
/// Its `BEGIN IMMEDIATE` waits to go with the first statements, so a transaction whose
/// statements are all [deferred](Tx::defer) is one trip to the connection's thread.
pub struct WriterTx {
    guard: Option<OwnedMutexGuard<WriterConn>>,
    since: Instant,
    usage: Arc<WriterUse>,
    begun: bool,
}

impl std::fmt::Debug for WriterTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterTx").field("begun", &self.begun).finish_non_exhaustive()
    }
}

/// The rows of a statement queued by [`Tx::defer_read`], as its backend gave them.
enum Rows {
    Sqlite(Vec<SqliteRow>),
    Postgres(Vec<PgRow>),
}

impl Rows {
    fn decode<O>(self) -> Result<Vec<O>, sqlx::Error>
    where
        O: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow>,
    {
        match self {
            Rows::Sqlite(rows) => rows.iter().map(O::from_row).collect(),
            Rows::Postgres(rows) => rows.iter().map(O::from_row).collect(),
        }
    }
}

/// Statements queued by [`Tx::defer`].
enum Pending {
    /// One multi-statement string with its arguments in order: SQLite runs it in one trip to
    /// the connection's thread, binding each statement's `?` parameters after the last one's.
    Sqlite { sql: String, args: SqliteArguments, error: Option<String> },
    /// PostgreSQL takes one statement per message; each is sent in turn, except that plain
    /// inserts queued one after another go as one (see [`PgDeferred`]).
    Postgres { statements: Vec<PgDeferred>, error: Option<String> },
}

/// A deferred PostgreSQL statement: one, or plain inserts queued one after another, sent as one
/// statement of data-modifying `WITH` parts (each insert a round trip less). That is safe for
/// them alone: an `INSERT … VALUES` reads no table, so it does not matter that the parts run
/// with one snapshot; foreign keys and unique indexes are still checked, at the statement's end.
/// Anything else (an update, an insert that selects, upserts, or returns) goes as written.
struct PgDeferred {
    /// The parts, each with its parameters numbered after the previous ones'.
    parts: Vec<String>,
    args: PgArguments,
    /// Parameters the parts take; a part joins only while the sum fits PostgreSQL's limit.
    params: usize,
    plain_inserts: bool,
    /// A statement queued by [`Tx::defer_read`]: its rows are the caller's.
    reads: bool,
}

impl PgDeferred {
    /// PostgreSQL's limit on a statement's parameters.
    const MAX_PARAMS: usize = 65_535;

    /// `part`: the caller vouches that `sql` may go as a part (see [`Tx::defer_part`]).
    fn new(sql: &str, part: bool) -> PgDeferred {
        // Parts join only after one whose parameters are numbered as `defer` asks.
        let params = crate::params_in_order(sql, |_, _| ()).map(|(_, n)| n);
        PgDeferred {
            parts: vec![sql.to_string()],
            args: PgArguments::default(),
            params: params.unwrap_or(0),
            plain_inserts: params.is_some() && may_fold(sql, part),
            reads: false,
        }
    }

    /// Adds `sql` as the last part, if both are plain inserts (or vouched parts) whose parameters
    /// fit together.
    fn fold(&mut self, sql: &str, part: bool) -> bool {
        if !self.plain_inserts || !may_fold(sql, part) {
            return false;
        }
        let offset = self.params;
        let Some((shifted, n)) = crate::params_in_order(sql, |out, k| {
            let _ = write!(out, "${}", k + offset);
        }) else {
            return false;
        };
        if offset + n > Self::MAX_PARAMS {
            return false;
        }
        self.parts.push(shifted);
        self.params += n;
        true
    }

    /// `main` with every part of this one before it in its `WITH`, and `main`'s parameters
    /// numbered after the parts' (see [`Tx::carry`]). `None` when `main` begins `WITH RECURSIVE`,
    /// which must stay first.
    fn carried_by(&self, main: &str) -> Option<String> {
        let trimmed = main.trim_start();
        let upper = trimmed.get(..15).unwrap_or(trimmed).to_ascii_uppercase();
        if upper.starts_with("WITH RECURSIVE") {
            return None;
        }
        let mut sql = with_parts(&self.parts);
        let main = crate::shift_params(trimmed, self.params);
        match upper.starts_with("WITH ") {
            true => {
                let _ = write!(sql, ", {}", &main[5..]);
            }
            false => {
                let _ = write!(sql, " {main}");
            }
        }
        Some(sql)
    }

    fn sql(&self) -> String {
        match self.parts.as_slice() {
            [one] => one.clone(),
            [first @ .., last] => format!("{} {last}", with_parts(first)),
            [] => String::new(),
        }
    }
}

/// `WITH deferred_0 AS (…), deferred_1 AS (…)`: the parts, for a statement to follow.
fn with_parts(parts: &[String]) -> String {
    let mut sql = String::from("WITH ");
    for (i, part) in parts.iter().enumerate() {
        let _ = write!(sql, "{}deferred_{i} AS ({part})", if i > 0 { ", " } else { "" });
    }
    sql
}

/// Whether `sql` may go as a part: a plain insert, or a write the caller vouched for
/// ([`Tx::defer_part`]).
fn may_fold(sql: &str, vouched: bool) -> bool {
    vouched || plain_insert(sql)
}

/// `INSERT INTO t (…) VALUES …` or `INSERT INTO t (…) SELECT * FROM UNNEST(…)`, and nothing
/// more: it reads no table and returns nothing.
fn plain_insert(sql: &str) -> bool {
    let upper = sql.trim_start().to_ascii_uppercase();
    let rows = if upper.contains(" VALUES ") {
        !upper.contains("SELECT")
    } else {
        // The arrays' rows, and no other SELECT or FROM that could read a table.
        upper.contains(" SELECT * FROM UNNEST(")
            && upper.matches("SELECT").count() == 1
            && upper.matches("FROM").count() == 1
    };
    upper.starts_with("INSERT INTO ")
        && rows
        && !["ON CONFLICT", "RETURNING", "WITH", "JOIN", "DEFAULT VALUES"].iter().any(|w| upper.contains(w))
}

impl Pending {
    fn new(backend: Backend) -> Pending {
        match backend {
            Backend::Sqlite => Pending::Sqlite { sql: String::new(), args: SqliteArguments::default(), error: None },
            Backend::Postgres => Pending::Postgres { statements: Vec::new(), error: None },
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Pending::Sqlite { sql, error, .. } => sql.is_empty() && error.is_none(),
            Pending::Postgres { statements, error } => statements.is_empty() && error.is_none(),
        }
    }

    fn take(&mut self) -> Pending {
        let empty = match self {
            Pending::Sqlite { .. } => Pending::new(Backend::Sqlite),
            Pending::Postgres { .. } => Pending::new(Backend::Postgres),
        };
        std::mem::replace(self, empty)
    }
}

/// A statement queued by [`Tx::defer`], taking its parameters in order.
pub struct Deferred<'t> {
    pending: &'t mut Pending,
}

impl Deferred<'_> {
    /// Binds the next `$N` parameter.
    pub fn bind<'q, T>(self, value: T) -> Self
    where
        T: Encode<'q, Sqlite> + Type<Sqlite> + Encode<'q, Postgres> + Type<Postgres>,
    {
        let failed = match &mut *self.pending {
            Pending::Sqlite { args, error, .. } => args.add(value).err().map(|e| (e, error)),
            Pending::Postgres { statements, error } => match statements.last_mut() {
                Some(s) => s.args.add(value).err().map(|e| (e, error)),
                None => None,
            },
        };
        if let Some((e, error)) = failed {
            error.get_or_insert_with(|| e.to_string());
        }
        self
    }

    /// Binds the next `$N` parameter of a statement deferred on PostgreSQL only (an array for
    /// `UNNEST`, say); on SQLite it fails the transaction.
    pub fn bind_pg<'q, T>(self, value: T) -> Self
    where
        T: Encode<'q, Postgres> + Type<Postgres>,
    {
        match &mut *self.pending {
            Pending::Sqlite { error, .. } => {
                debug_assert!(false, "a PostgreSQL parameter bound on SQLite");
                error.get_or_insert_with(|| "a PostgreSQL-only parameter was bound on SQLite".to_string());
            }
            Pending::Postgres { statements, error } => {
                if let Some(Err(e)) = statements.last_mut().map(|s| s.args.add(value)) {
                    error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        self
    }
}

impl WriterTx {
    async fn begin(writer: &Writer, urgent: bool) -> Result<WriterTx, StoreError> {
        let asked = Instant::now();
        let mut w = if urgent {
            writer.conn.clone().lock_owned().await
        } else {
            let _next_in_line = writer.door.lock().await;
            writer.conn.clone().lock_owned().await
        };
        let since = Instant::now();
        writer.usage.waited_ns.fetch_add((since - asked).as_nanos() as u64, Ordering::Relaxed);
        let open = w.open;
        let conn = w.conn.as_mut().ok_or(sqlx::Error::PoolClosed)?;
        if open {
            // The last one's rollback could not run (no runtime, cancelled, or it failed). An
            // error here means no transaction was open after all.
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            w.open = false;
        }
        Ok(WriterTx { guard: Some(w), since, usage: writer.usage.clone(), begun: false })
    }

    fn conn(&mut self) -> &mut SqliteConnection {
        let w = self.guard.as_mut().expect("a writer transaction holds the writer until it ends");
        w.conn.as_mut().expect("a closed writer begins no transaction")
    }

    /// Sends the `BEGIN` if it has not gone yet, the deferred statements, and `then`, in one trip.
    /// Answers the rows of a statement queued by [`Tx::defer_read`] (deferred ones return none).
    async fn send(&mut self, pending: Pending, then: Option<&str>) -> Result<Vec<SqliteRow>, sqlx::Error> {
        let Pending::Sqlite { sql: deferred, args, error } = pending else {
            unreachable!("SQLite's writer queues SQLite statements")
        };
        if let Some(e) = error {
            return Err(sqlx::Error::Encode(e.into()));
        }
        let mut sql = String::new();
        if !self.begun {
            sql.push_str("BEGIN IMMEDIATE;\n");
        }
        sql.push_str(&deferred);
        sql.push_str(then.unwrap_or(""));
        if sql.is_empty() {
            return Ok(Vec::new());
        }
        self.mark_begun();
        self.usage.trips.fetch_add(1, Ordering::Relaxed);
        let sent = Instant::now();
        let rows = sqlx::query_with(sqlx::AssertSqlSafe(sql), args).fetch_all(self.conn()).await;
        self.usage.sent_ns.fetch_add(sent.elapsed().as_nanos() as u64, Ordering::Relaxed);
        rows
    }

    /// The transaction counts as begun from the trip that carries its `BEGIN`, even if that
    /// trip's future is dropped: the next `begin` or the drop ends it.
    fn mark_begun(&mut self) {
        if !self.begun {
            self.usage.before_ns.fetch_add(self.since.elapsed().as_nanos() as u64, Ordering::Relaxed);
            self.begun = true;
            if let Some(w) = self.guard.as_mut() {
                w.open = true;
            }
        }
    }

    /// `query` as it goes to the connection: as it is once the transaction has begun, else with
    /// the `BEGIN IMMEDIATE` in front of its SQL, as one multi-statement query. The `BEGIN` takes
    /// no parameters, so the query's own (`$N` or `?`) bind as they would alone.
    fn with_begin<'q, E: Execute<'q, Sqlite>>(&mut self, mut query: E) -> Sent<'q, E> {
        if self.begun {
            return Sent::Begun(query);
        }
        let args = match query.take_arguments() {
            Ok(args) => args,
            Err(e) => return Sent::Failed(sqlx::Error::Encode(e)),
        };
        let persistent = query.persistent() && args.is_some();
        let sql = format!("BEGIN IMMEDIATE;\n{}", query.sql().as_str());
        self.mark_begun();
        Sent::Beginning(sqlx::query_with(sqlx::AssertSqlSafe(sql), args.unwrap_or_default()).persistent(persistent))
    }

    /// COMMIT (with the deferred statements) or ROLLBACK (dropping them); answers the rows of a
    /// statement queued by [`Tx::defer_read`]. If it fails the transaction may still be open; the
    /// drop ends it. A transaction that never began ends without a trip.
    async fn end(mut self, pending: Pending, commit: bool) -> Result<Vec<SqliteRow>, StoreError> {
        let mut rows = Vec::new();
        if commit {
            if self.begun || !pending.is_empty() {
                rows = self.send(pending, Some("COMMIT")).await?;
            }
        } else if self.begun {
            self.usage.trips.fetch_add(1, Ordering::Relaxed);
            sqlx::query("ROLLBACK").execute(self.conn()).await?;
        }
        if let Some(w) = self.guard.as_mut() {
            w.open = false;
        }
        Ok(rows)
    }
}

impl Drop for WriterTx {
    fn drop(&mut self) {
        self.usage.transactions.fetch_add(1, Ordering::Relaxed);
        self.usage.held_ns.fetch_add(self.since.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let Some(mut w) = self.guard.take() else { return };
        if !w.open {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Some(conn) = w.conn.as_mut()
                    && sqlx::query("ROLLBACK").execute(&mut *conn).await.is_ok()
                {
                    w.open = false;
                }
            });
        }
    }
}

/// The connection inside a [`Tx`], for code that writes its SQL per backend.
pub enum TxConn<'a> {
    Sqlite(&'a mut SqliteTx),
    Postgres(&'a mut PgConnection),
}

impl Inner {
    fn conn(&mut self) -> TxConn<'_> {
        match self {
            Inner::Sqlite(tx) => TxConn::Sqlite(tx),
            Inner::Postgres(tx) => TxConn::Postgres(tx),
        }
    }
}

/// A statement for the writer's connection (see [`WriterTx::with_begin`]).
enum Sent<'q, E> {
    /// The transaction has begun: the query goes as it is.
    Begun(E),
    /// The query with the transaction's `BEGIN` in front.
    Beginning(sqlx::query::Query<'q, Sqlite, SqliteArguments>),
    /// Its arguments did not encode; nothing goes.
    Failed(sqlx::Error),
}

impl<'c> Executor<'c> for &'c mut SqliteTx {
    type Database = Sqlite;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<SqliteQueryResult, SqliteRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Sqlite>,
    {
        let w = match self {
            SqliteTx::Read(tx) => return (&mut **tx).fetch_many(query),
            SqliteTx::Writer(w) => w,
        };
        match w.with_begin(query) {
            Sent::Begun(q) => w.conn().fetch_many(q),
            Sent::Beginning(q) => {
                // The BEGIN's own result goes: SQLite reports the changes of the last statement
                // that made any, which would count in the caller's.
                let mut begun = false;
                Box::pin(w.conn().fetch_many(q).filter(move |step| {
                    let begin = !begun && matches!(step, Ok(Either::Left(_)));
                    begun |= begin;
                    std::future::ready(!begin)
                }))
            }
            Sent::Failed(e) => Box::pin(futures::stream::once(std::future::ready(Err(e)))),
        }
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<SqliteRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Sqlite>,
    {
        let w = match self {
            SqliteTx::Read(tx) => return (&mut **tx).fetch_optional(query),
            SqliteTx::Writer(w) => w,
        };
        match w.with_begin(query) {
            Sent::Begun(q) => w.conn().fetch_optional(q),
            Sent::Beginning(q) => w.conn().fetch_optional(q),
            Sent::Failed(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [SqliteTypeInfo],
    ) -> BoxFuture<'e, Result<SqliteStatement, sqlx::Error>>
    where
        'c: 'e,
    {
        match self {
            SqliteTx::Read(tx) => (&mut **tx).prepare_with(sql, parameters),
            SqliteTx::Writer(w) => w.conn().prepare_with(sql, parameters),
        }
    }
}

impl Tx {
    pub(crate) async fn begin(pools: &Pools, wakeups: Arc<Wakeups>, urgent: bool) -> Result<Tx, StoreError> {
        let inner = match pools {
            Pools::Sqlite { write, .. } => Inner::Sqlite(SqliteTx::Writer(WriterTx::begin(write, urgent).await?)),
            Pools::Postgres(pool) => Inner::Postgres(pool.begin().await?),
        };
        let pending = Pending::new(match inner {
            Inner::Postgres(_) => Backend::Postgres,
            _ => Backend::Sqlite,
        });
        Ok(Tx { inner, pending, notify: BTreeSet::new(), after_commit: Vec::new(), wakeups })
    }

    /// The connection, for a statement whose result the caller reads. The deferred statements
    /// (and on SQLite a `BEGIN` not yet sent) go first.
    pub async fn conn(&mut self) -> Result<TxConn<'_>, sqlx::Error> {
        self.flush().await?;
        if let Inner::Sqlite(SqliteTx::Writer(w)) = &self.inner {
            w.usage.trips.fetch_add(1, Ordering::Relaxed);
        }
        Ok(self.inner.conn())
    }

    /// Queues a statement whose result nobody reads: an insert or update that either works or
    /// fails the transaction. It runs before anything else touches the transaction: with the next
    /// [`Tx::conn`] or with the commit, and on SQLite, together with them in one trip to the
    /// writer's thread (each trip costs two thread wake-ups, more than most statements take). An
    /// error surfaces there, and the transaction cannot commit. Parameters are `$1, $2, …` in
    /// order, each once (as [`Backend::sql`] needs), bound with [`Deferred::bind`]; the statement
    /// must return no rows. On PostgreSQL plain inserts deferred one after another go as one
    /// statement ([`PgDeferred`]).
    pub fn defer(&mut self, sql: &str) -> Deferred<'_> {
        self.defer_as(sql, false)
    }

    fn defer_as(&mut self, sql: &str, part: bool) -> Deferred<'_> {
        match &mut self.pending {
            Pending::Sqlite { sql: queued, error, .. } => {
                match crate::anonymous_params(sql) {
                    Some(anonymous) => queued.push_str(&anonymous),
                    None if !sql.contains('$') => queued.push_str(sql),
                    None => {
                        debug_assert!(false, "parameters not $1, $2, … in order: {sql}");
                        error.get_or_insert_with(|| {
                            format!("a deferred statement's parameters are out of order: {sql}")
                        });
                    }
                }
                queued.push_str(";\n");
            }
            Pending::Postgres { statements, .. } => {
                if !statements.last_mut().is_some_and(|last| last.fold(sql, part)) {
                    statements.push(PgDeferred::new(sql, part));
                }
            }
        }
        Deferred { pending: &mut self.pending }
    }

    /// [`Tx::defer`] for a write that may go as a part of the statement plain inserts fold into
    /// on PostgreSQL ([`PgDeferred`]), though it is not one: an upsert, say. The caller vouches
    /// that it returns nothing and reads no table that the other deferred statements (or a
    /// statement that [carries](Tx::carry) them) write, since all the parts run with one snapshot.
    pub fn defer_part(&mut self, sql: &str) -> Deferred<'_> {
        self.defer_as(sql, true)
    }

    /// On PostgreSQL, when what is deferred is plain inserts (one [`PgDeferred`]), takes them to
    /// go as parts of `sql`'s `WITH`: one trip instead of two. Answers the statement to run
    /// instead of `sql` (whose `$N` parameters are numbered after the inserts') and the inserts'
    /// arguments, to which the caller binds `sql`'s own; `None` (nothing taken) otherwise.
    ///
    /// The parts run with `sql`'s snapshot, so `sql` must not read the tables they write: it
    /// would not see their rows. Foreign keys and unique keys are still checked, at its end.
    pub fn carry(&mut self, sql: &str) -> Option<(String, PgArguments)> {
        let Pending::Postgres { statements, error: None } = &mut self.pending else { return None };
        let [one] = statements.as_slice() else { return None };
        if !one.plain_inserts {
            return None;
        }
        let carried = one.carried_by(sql)?;
        let one = statements.pop().expect("one deferred statement");
        Some((carried, one.args))
    }

    /// Queues a statement whose rows the caller reads (an `UPDATE … RETURNING`, a `SELECT`), to
    /// go after what is deferred: [`Tx::fetch_read`] sends them and answers its rows, or
    /// [`Tx::commit_read`] does so with the commit. Its parameters are bound as a deferred
    /// statement's ([`Deferred::bind`]), and nothing else may be deferred before it is sent.
    ///
    /// On SQLite the deferred statements, the read (and the commit) are one trip to the writer's
    /// thread, where [`Tx::conn`] sends what is deferred in a trip of its own before the read,
    /// and the commit is a third. Each trip costs two thread wake-ups while the writer is held,
    /// and on a busy machine each wake-up waits for a CPU. On PostgreSQL the statements go one
    /// after the other, as they would through [`Tx::conn`].
    pub fn defer_read(&mut self, sql: &str) -> Deferred<'_> {
        match &mut self.pending {
            Pending::Sqlite { .. } => self.defer_as(sql, false),
            Pending::Postgres { statements, .. } => {
                debug_assert!(!statements.iter().any(|s| s.reads), "one read at a time: {sql}");
                let mut read = PgDeferred::new(sql, false);
                read.plain_inserts = false; // nothing folds into it
                read.reads = true;
                statements.push(read);
                Deferred { pending: &mut self.pending }
            }
        }
    }

    /// Sends what is deferred with the read queued by [`Tx::defer_read`], and answers its rows.
    pub async fn fetch_read<O>(&mut self) -> Result<Vec<O>, sqlx::Error>
    where
        O: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow>,
    {
        self.flush().await?.decode()
    }

    /// Commits, sending what is deferred with the read queued by [`Tx::defer_read`] (on SQLite
    /// with the `COMMIT`, in one trip), and answers its rows. They are the caller's only if the
    /// commit succeeded: an error means nothing of the transaction was written.
    pub async fn commit_read<O>(self) -> Result<Vec<O>, StoreError>
    where
        O: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow>,
    {
        Ok(self.commit_rows().await?.decode()?)
    }

    /// Sends the deferred statements now; answers the rows of one queued by [`Tx::defer_read`].
    async fn flush(&mut self) -> Result<Rows, sqlx::Error> {
        match (&mut self.inner, self.pending.take()) {
            // A `BEGIN` not sent yet goes with the next statement (see [`SqliteTx`]).
            (Inner::Sqlite(SqliteTx::Writer(w)), pending) if !pending.is_empty() => {
                Ok(Rows::Sqlite(w.send(pending, None).await?))
            }
            (Inner::Postgres(tx), Pending::Postgres { statements, error }) => {
                if let Some(e) = error {
                    return Err(sqlx::Error::Encode(e.into()));
                }
                let mut rows = Vec::new();
                for s in statements {
                    let query = sqlx::query_with(sqlx::AssertSqlSafe(s.sql()), s.args);
                    if s.reads {
                        rows = query.fetch_all(&mut **tx).await?;
                    } else {
                        query.execute(&mut **tx).await?;
                    }
                }
                Ok(Rows::Postgres(rows))
            }
            _ => Ok(Rows::Sqlite(Vec::new())),
        }
    }

    pub fn backend(&self) -> Backend {
        match self.inner {
            Inner::Sqlite(_) => Backend::Sqlite,
            Inner::Postgres(_) => Backend::Postgres,
        }
    }

    /// Rings `channel` once this transaction commits: in this process always, and on every node
    /// listening to the same PostgreSQL. Repeated calls for one channel ring once.
    pub fn notify(&mut self, channel: &str) {
        if !self.notify.contains(channel) {
            self.notify.insert(channel.to_string());
        }
    }

    /// Says this transaction changes rows that [`crate::ReadCache`]s of `topic` keep: their
    /// values go out of date now (a read racing the commit is not kept) and again when it commits.
    pub fn changed(&mut self, topic: &str) {
        let count = self.wakeups.changes(topic);
        count.fetch_add(1, Ordering::SeqCst);
        self.after_commit(move || {
            count.fetch_add(1, Ordering::SeqCst);
        });
    }

    /// This process's one `T` for the database (see [`Wakeups::local`]).
    pub fn local<T: std::any::Any + Send + Sync + Default>(&self) -> Arc<T> {
        self.wakeups.local::<T>()
    }

    /// Runs `f` after a successful commit (metrics, in-process signals). Never runs on rollback.
    pub fn after_commit(&mut self, f: impl FnOnce() + Send + 'static) {
        self.after_commit.push(Box::new(f));
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        self.commit_rows().await.map(drop)
    }

    /// Commits; answers the rows of a statement queued by [`Tx::defer_read`].
    async fn commit_rows(mut self) -> Result<Rows, StoreError> {
        let pg_rows = match self.backend() {
            Backend::Postgres => Some(self.flush().await?), // SQLite's writer sends them with its COMMIT
            Backend::Sqlite => None,
        };
        let Tx { inner, pending, notify, after_commit, wakeups } = self;
        let rows = match inner {
            Inner::Sqlite(SqliteTx::Writer(w)) => Rows::Sqlite(w.end(pending, true).await?),
            Inner::Sqlite(SqliteTx::Read(tx)) => {
                tx.commit().await?;
                Rows::Sqlite(Vec::new())
            }
            Inner::Postgres(mut tx) => {
                // NOTIFY inside the transaction is delivered at commit, and not at all on rollback.
                for channel in &notify {
                    sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(channel)
                        .bind(wakeups.node())
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                pg_rows.unwrap_or(Rows::Postgres(Vec::new()))
            }
        };
        for channel in &notify {
            wakeups.ring(channel);
        }
        for f in after_commit {
            f();
        }
        Ok(rows)
    }

    pub async fn rollback(self) -> Result<(), StoreError> {
        match self.inner {
            Inner::Sqlite(SqliteTx::Writer(w)) => {
                w.end(Pending::new(Backend::Sqlite), false).await?;
            }
            Inner::Sqlite(SqliteTx::Read(tx)) => tx.rollback().await?,
            Inner::Postgres(tx) => tx.rollback().await?,
        }
        Ok(())
    }
}

/// A read-only transaction: every read through it sees the database as of one moment, so rows
/// read by separate statements agree with each other. On SQLite it is a deferred transaction on
/// a read connection (WAL keeps its snapshot from the first read to the end); on PostgreSQL it is
/// `REPEATABLE READ READ ONLY`. Dropping it ends it.
pub struct Snapshot {
    inner: Inner,
}

impl Snapshot {
    pub(crate) async fn begin(pools: &Pools) -> Result<Snapshot, StoreError> {
        let inner = match pools {
            Pools::Sqlite { read, .. } => Inner::Sqlite(SqliteTx::Read(read.begin().await?)),
            Pools::Postgres(pool) => {
                Inner::Postgres(pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?)
            }
        };
        Ok(Snapshot { inner })
    }

    /// The connection (async and fallible like [`Tx::conn`], so the same macros serve both).
    pub async fn conn(&mut self) -> Result<TxConn<'_>, sqlx::Error> {
        Ok(self.inner.conn())
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::each_backend;
    use crate::{Backend, exec, on_read, on_tx};
    use std::time::Duration;

    #[tokio::test]
    async fn a_snapshot_does_not_see_what_commits_after_its_first_read() {
        each_backend(|db| async move {
            let mut tx = db.begin().await.unwrap();
            exec!(tx, "CREATE TABLE seen (n BIGINT NOT NULL)").unwrap();
            exec!(tx, "INSERT INTO seen (n) VALUES (1)").unwrap();
            tx.commit().await.unwrap();

            let count = "SELECT COUNT(*) FROM seen";
            let mut snap = db.snapshot().await.unwrap();
            let before: i64 = on_tx!(snap, c => sqlx::query_scalar(count).fetch_one(&mut *c).await).unwrap();
            let mut tx = db.begin().await.unwrap();
            exec!(tx, "INSERT INTO seen (n) VALUES (2)").unwrap();
            tx.commit().await.unwrap();
            let after: i64 = on_tx!(snap, c => sqlx::query_scalar(count).fetch_one(&mut *c).await).unwrap();
            let outside: i64 = on_read!(db, c => sqlx::query_scalar(count).fetch_one(c).await).unwrap();
            assert_eq!((before, after, outside), (1, 1, 2), "the snapshot keeps its moment; others see the new row");
            drop(snap);
        })
        .await;
    }

    #[tokio::test]
    async fn a_transaction_dropped_or_failed_leaves_nothing_and_the_next_one_starts_clean() {
        each_backend(|db| async move {
            let mut tx = db.begin().await.unwrap();
            exec!(tx, "CREATE TABLE kept (n BIGINT PRIMARY KEY)").unwrap();
            tx.commit().await.unwrap();
            let count = || async {
                on_read!(db, c => sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM kept").fetch_one(c).await).unwrap()
            };

            // Dropped without a commit, then at once a new transaction (which waits for the rollback).
            let mut tx = db.begin().await.unwrap();
            exec!(tx, "INSERT INTO kept (n) VALUES (1)").unwrap();
            drop(tx);
            let mut tx = db.begin().await.unwrap();
            exec!(tx, "INSERT INTO kept (n) VALUES (2)").unwrap();
            tx.commit().await.unwrap();
            assert_eq!(count().await, 1, "the dropped insert is gone, the committed one stays");

            // A statement fails half-way: the caller gives up, and nothing of it stays.
            let mut tx = db.begin().await.unwrap();
            exec!(tx, "INSERT INTO kept (n) VALUES (3)").unwrap();
            assert!(exec!(tx, "INSERT INTO kept (n) VALUES (2)").is_err(), "a duplicate key fails");
            drop(tx);
            let mut tx = db.begin().await.unwrap();
            exec!(tx, "INSERT INTO kept (n) VALUES (4)").unwrap();
            tx.rollback().await.unwrap();
            assert_eq!(count().await, 1, "neither the failed transaction nor the rolled-back one left a row");

            let mut tx = db.begin().await.unwrap();
            exec!(tx, "INSERT INTO kept (n) VALUES (5)").unwrap();
            tx.commit().await.unwrap();
            assert_eq!(count().await, 2);
        })
        .await;
    }

    #[tokio::test]
    async fn deferred_statements_go_with_the_next_read_or_the_commit_and_a_failed_one_fails_the_commit() {
        each_backend(|db| async move {
            let mut tx = db.begin().await.unwrap();
            exec!(tx, "CREATE TABLE queued (n BIGINT PRIMARY KEY, label TEXT NOT NULL)").unwrap();
            tx.commit().await.unwrap();
            let rows = || async {
                on_read!(db, c => sqlx::query_as::<_, (i64, String)>("SELECT n, label FROM queued ORDER BY n").fetch_all(c).await)
                    .unwrap()
            };

            // Deferred, then read in the same transaction: the read sees them.
            let mut tx = db.begin().await.unwrap();
            tx.defer("INSERT INTO queued (n, label) VALUES ($1, $2)").bind(1_i64).bind("one");
            tx.defer("INSERT INTO queued (n, label) VALUES ($1, $2), ($3, $4)").bind(2_i64).bind("two").bind(3_i64).bind("three");
            let seen: i64 = on_tx!(tx, c => sqlx::query_scalar("SELECT COUNT(*) FROM queued").fetch_one(&mut *c).await).unwrap();
            assert_eq!(seen, 3, "a read sends what was deferred first");
            tx.defer("UPDATE queued SET label = $1 WHERE n = $2").bind("TWO").bind(2_i64);
            assert!(rows().await.is_empty(), "nothing is visible outside before the commit");
            tx.commit().await.unwrap();
            assert_eq!(rows().await, [(1, "one".to_string()), (2, "TWO".to_string()), (3, "three".to_string())]);

            // Only deferred statements, one of them failing: the commit fails and nothing stays.
            let mut tx = db.begin().await.unwrap();
            tx.defer("INSERT INTO queued (n, label) VALUES ($1, $2)").bind(4_i64).bind("four");
            tx.defer("INSERT INTO queued (n, label) VALUES ($1, $2)").bind(1_i64).bind("one again");
            assert!(tx.commit().await.is_err(), "the duplicate key fails the commit");
            // A rolled-back transaction drops what it deferred.
            let mut tx = db.begin().await.unwrap();
            tx.defer("INSERT INTO queued (n, label) VALUES ($1, $2)").bind(5_i64).bind("five");
            tx.rollback().await.unwrap();
            // The writer is clean for the next one, and a transaction that did nothing commits.
            db.begin().await.unwrap().commit().await.unwrap();
            let mut tx = db.begin().await.unwrap();
            tx.defer("INSERT INTO queued (n, label) VALUES ($1, $2)").bind(6_i64).bind("six");
            tx.commit().await.unwrap();
            assert_eq!(rows().await.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3, 6]);
        })
        .await;
    }

    /// A read queued behind deferred statements sees them and answers only its own rows, in one
    /// trip on SQLite; with the commit, its rows come back only if the commit succeeds.
    #[tokio::test]
    async fn a_deferred_read_goes_with_what_was_deferred_and_with_the_commit() {
        each_backend(|db| async move {
            let mut tx = db.begin().await.unwrap();
            exec!(tx, "CREATE TABLE marks (n BIGINT PRIMARY KEY, state TEXT NOT NULL)").unwrap();
            tx.commit().await.unwrap();
            let sqlite = db.backend() == Backend::Sqlite;
            let trips = || db.writer_use().map(|u| u.trips).unwrap_or(0);

            let before = trips();
            let mut tx = db.begin().await.unwrap();
            tx.defer("INSERT INTO marks (n, state) VALUES ($1, $2), ($3, $4)")
                .bind(1_i64)
                .bind("new")
                .bind(2_i64)
                .bind("new");
            tx.defer_read("SELECT n FROM marks WHERE state = $1 ORDER BY n").bind("new");
            let seen: Vec<(i64,)> = tx.fetch_read().await.unwrap();
            assert_eq!(seen, [(1,), (2,)], "the read sees what was deferred before it, and only its rows come back");
            tx.defer("INSERT INTO marks (n, state) VALUES ($1, $2)").bind(3_i64).bind("new");
            tx.defer_read("UPDATE marks SET state = $1 WHERE n >= $2 RETURNING n").bind("marked").bind(2_i64);
            let mut marked: Vec<(i64,)> = tx.commit_read().await.unwrap();
            marked.sort_unstable();
            assert_eq!(marked, [(2,), (3,)]);
            if sqlite {
                assert_eq!(trips() - before, 2, "BEGIN, the inserts and the read; then the rest with the COMMIT");
            }
            let states = on_read!(db, c => sqlx::query_as::<_, (i64, String)>("SELECT n, state FROM marks ORDER BY n")
                .fetch_all(c).await)
            .unwrap();
            assert_eq!(states, [(1, "new".into()), (2, "marked".into()), (3, "marked".into())]);

            // A deferred statement fails: commit_read answers the error, and nothing stays.
            let mut tx = db.begin().await.unwrap();
            tx.defer("INSERT INTO marks (n, state) VALUES ($1, $2)").bind(1_i64).bind("again");
            tx.defer_read("UPDATE marks SET state = $1 RETURNING n").bind("lost");
            assert!(tx.commit_read::<(i64,)>().await.is_err(), "the duplicate key fails it");
            let lost: i64 = on_read!(db, c => sqlx::query_scalar("SELECT COUNT(*) FROM marks WHERE state = 'lost'")
                .fetch_one(c).await)
            .unwrap();
            assert_eq!(lost, 0);
            // The writer is clean for the next transaction.
            let mut tx = db.begin().await.unwrap();
            tx.defer_read("UPDATE marks SET state = $1 WHERE n = $2 RETURNING n").bind("done").bind(1_i64);
            assert_eq!(tx.commit_read::<(i64,)>().await.unwrap(), [(1,)]);
        })
        .await;
    }

    /// On PostgreSQL, plain inserts deferred one after another go as one statement; anything
    /// else goes as written.
    #[test]
    fn deferred_plain_inserts_fold_into_one_postgresql_statement() {
        let mut d = super::PgDeferred::new("INSERT INTO parent (id, label) VALUES ($1, $2)", false);
        assert!(d.fold("INSERT INTO child (id, parent) VALUES ($1, $2), ($3, '$9 stays')", false));
        assert_eq!(
            d.sql(),
            "WITH deferred_0 AS (INSERT INTO parent (id, label) VALUES ($1, $2)) \
             INSERT INTO child (id, parent) VALUES ($3, $4), ($5, '$9 stays')"
        );
        for other in [
            "UPDATE parent SET label = $1 WHERE id = $2",
            "INSERT INTO child (id, parent) SELECT $1, id FROM parent",
            "INSERT INTO parent (id, label) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
            "INSERT INTO parent (id, label) VALUES ($1, $2) RETURNING id",
            "INSERT INTO parent (id, label) VALUES ($2, $1)",
            "INSERT INTO child (id, parent) SELECT * FROM UNNEST($1::uuid[], $2::uuid[]) AS c(id, parent) \
             WHERE parent IN (SELECT id FROM parent)",
            "INSERT INTO child (id, parent) SELECT * FROM UNNEST($1::uuid[]) AS c(id) JOIN parent ON true",
        ] {
            assert!(!d.fold(other, false), "{other}");
        }
        // Rows as arrays: the text is the same whatever their number.
        assert!(d.fold("INSERT INTO child (id, parent) SELECT * FROM UNNEST($1::uuid[], $2::uuid[])", false));
        assert!(d.sql().ends_with(
            "deferred_1 AS (INSERT INTO child (id, parent) VALUES ($3, $4), ($5, '$9 stays')) \
             INSERT INTO child (id, parent) SELECT * FROM UNNEST($6::uuid[], $7::uuid[])"
        ));
        assert!(
            !super::PgDeferred::new("UPDATE parent SET label = $1", false).fold("INSERT INTO t (a) VALUES ($1)", false)
        );
        // A part the caller vouches for (an upsert) folds, and plain inserts fold after it.
        let mut vouched = super::PgDeferred::new("INSERT INTO t (a) VALUES ($1) ON CONFLICT (a) DO NOTHING", true);
        assert!(vouched.fold("INSERT INTO u (b) VALUES ($1)", false));
        assert!(vouched.fold("UPDATE v SET c = $1", true));
        assert!(!vouched.fold("UPDATE v SET c = $1", false));
        // A statement whose parameters are not in order takes no parts after it.
        assert!(
            !super::PgDeferred::new("INSERT INTO t (a, b) VALUES ($1, $1)", false)
                .fold("INSERT INTO t (a) VALUES ($1)", false)
        );
        let mut full =
            super::PgDeferred::new(&format!("INSERT INTO t (a) VALUES {}", crate::value_rows(1, 65_000, 1)), false);
        assert!(
            !full.fold(&format!("INSERT INTO t (a) VALUES {}", crate::value_rows(1, 536, 1)), false),
            "over 65,535"
        );
        assert!(full.fold(&format!("INSERT INTO t (a) VALUES {}", crate::value_rows(1, 535, 1)), false));
    }

    /// Carried, the deferred inserts go first in the statement's `WITH`, and its parameters
    /// after theirs.
    #[test]
    fn carried_inserts_go_first_in_the_statements_with() {
        let mut d = super::PgDeferred::new("INSERT INTO parent (id, label) VALUES ($1, $2)", false);
        assert!(d.fold("INSERT INTO child (id, parent) VALUES ($1, $2)", false));
        let parts = "WITH deferred_0 AS (INSERT INTO parent (id, label) VALUES ($1, $2)), \
                     deferred_1 AS (INSERT INTO child (id, parent) VALUES ($3, $4))";
        assert_eq!(
            d.carried_by("SELECT n FROM other WHERE a = $1 OR b = $1").unwrap(),
            format!("{parts} SELECT n FROM other WHERE a = $5 OR b = $5")
        );
        assert_eq!(
            d.carried_by(" with x AS (SELECT $1 AS v) SELECT v FROM x").unwrap(),
            format!("{parts}, x AS (SELECT $5 AS v) SELECT v FROM x")
        );
        assert_eq!(d.carried_by("WITH RECURSIVE r AS (SELECT 1) SELECT * FROM r"), None);
    }

    /// On PostgreSQL a statement carries the deferred plain inserts (and commits them with the
    /// transaction); anything else deferred, and SQLite, carry nothing.
    #[tokio::test]
    async fn deferred_array_inserts_fold_with_the_others_and_run_on_postgresql() {
        let Some(t) = crate::testing::TestDb::postgres().await else { return };
        let db = t.db.clone();
        let mut tx = db.begin().await.unwrap();
        exec!(tx, "CREATE TABLE parent (id BIGINT PRIMARY KEY, label TEXT NOT NULL)").unwrap();
        exec!(
            tx,
            "CREATE TABLE child (id BIGINT PRIMARY KEY, parent BIGINT NOT NULL REFERENCES parent (id), note TEXT)"
        )
        .unwrap();
        tx.commit().await.unwrap();

        for (ids, parents) in [(vec![1_i64, 2], vec![10_i64, 10]), (vec![3, 4, 5], vec![11, 11, 11])] {
            let mut tx = db.begin().await.unwrap();
            let parent = parents[0];
            tx.defer("INSERT INTO parent (id, label) VALUES ($1, $2)").bind(parent).bind("p");
            let notes: Vec<Option<String>> = ids.iter().map(|i| (i % 2 == 0).then(|| format!("n{i}"))).collect();
            tx.defer("INSERT INTO child (id, parent, note) SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::text[])")
                .bind_pg(ids.clone())
                .bind_pg(parents.clone())
                .bind_pg(notes);
            match &tx.pending {
                super::Pending::Postgres { statements, .. } => assert_eq!(statements.len(), 1, "folded into one"),
                super::Pending::Sqlite { .. } => unreachable!("a PostgreSQL transaction"),
            }
            tx.commit().await.unwrap();
        }
        let rows: Vec<(i64, i64, Option<String>)> = on_read!(db, c => sqlx::query_as(
            "SELECT id, parent, note FROM child ORDER BY id").fetch_all(c).await)
        .unwrap();
        assert_eq!(
            rows,
            [(1, 10, None), (2, 10, Some("n2".into())), (3, 11, None), (4, 11, Some("n4".into())), (5, 11, None)]
        );

        // A child naming a parent that is not there fails the commit, and nothing stays.
        let mut tx = db.begin().await.unwrap();
        tx.defer("INSERT INTO parent (id, label) VALUES ($1, $2)").bind(12_i64).bind("p");
        tx.defer("INSERT INTO child (id, parent, note) SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::text[])")
            .bind_pg(vec![6_i64])
            .bind_pg(vec![99_i64])
            .bind_pg(vec![None::<String>]);
        assert!(tx.commit().await.is_err(), "the foreign key is checked");
        let parents: i64 =
            on_read!(db, c => sqlx::query_scalar("SELECT COUNT(*) FROM parent").fetch_one(c).await).unwrap();
        assert_eq!(parents, 2);
    }

    #[tokio::test]
    async fn a_statement_carries_deferred_inserts_on_postgresql() {
        each_backend(|db| async move {
            let mut tx = db.begin().await.unwrap();
            exec!(tx, "CREATE TABLE carried (n BIGINT PRIMARY KEY, label TEXT NOT NULL)").unwrap();
            exec!(tx, "CREATE TABLE other (n BIGINT PRIMARY KEY)").unwrap();
            tx.commit().await.unwrap();

            let mut tx = db.begin().await.unwrap();
            tx.defer("INSERT INTO carried (n, label) VALUES ($1, $2)").bind(1_i64).bind("one");
            tx.defer("INSERT INTO carried (n, label) VALUES ($1, $2)").bind(2_i64).bind("two");
            let main = "INSERT INTO other (n) VALUES ($1), ($2) RETURNING n";
            let carried = tx.carry(main);
            assert_eq!(carried.is_some(), db.backend() == Backend::Postgres);
            let back: Vec<i64> = match (carried, tx.conn().await.unwrap()) {
                (Some((sql, args)), crate::TxConn::Postgres(c)) => {
                    assert!(sql.starts_with("WITH deferred_0 AS (INSERT INTO carried"), "{sql}");
                    sqlx::query_scalar_with(sqlx::AssertSqlSafe(sql), args)
                        .bind(10_i64)
                        .bind(11_i64)
                        .fetch_all(&mut *c)
                        .await
                }
                (None, crate::TxConn::Sqlite(c)) => {
                    sqlx::query_scalar(main).bind(10_i64).bind(11_i64).fetch_all(&mut *c).await
                }
                _ => unreachable!("carried only on PostgreSQL"),
            }
            .unwrap();
            assert_eq!(back, [10, 11]);
            tx.commit().await.unwrap();
            let rows: Vec<(i64, String)> =
                on_read!(db, c => sqlx::query_as("SELECT n, label FROM carried ORDER BY n").fetch_all(c).await)
                    .unwrap();
            assert_eq!(rows, [(1, "one".to_string()), (2, "two".to_string())]);

            // An update deferred is not carried: it would run with the statement's snapshot.
            let mut tx = db.begin().await.unwrap();
            tx.defer("UPDATE carried SET label = $1 WHERE n = $2").bind("ONE").bind(1_i64);
            assert!(tx.carry("SELECT 1").is_none());
            tx.commit().await.unwrap();
            let label: String =
                on_read!(db, c => sqlx::query_scalar("SELECT label FROM carried WHERE n = 1").fetch_one(c).await)
                    .unwrap();
            assert_eq!(label, "ONE");
        })
        .await;
    }

    /// Folded inserts are still checked as they were one by one: a child's foreign key sees its
    /// parent inserted in an earlier part, a missing parent or a duplicate key fails the commit.
    #[tokio::test]
    async fn folded_inserts_check_foreign_keys_and_unique_keys() {
        each_backend(|db| async move {
            let mut tx = db.begin().await.unwrap();
            exec!(tx, "CREATE TABLE parent (id BIGINT PRIMARY KEY, label TEXT NOT NULL)").unwrap();
            exec!(tx, "CREATE TABLE child (id BIGINT PRIMARY KEY, parent BIGINT NOT NULL REFERENCES parent (id))")
                .unwrap();
            tx.commit().await.unwrap();
            let count = |table: &'static str| {
                let db = db.clone();
                async move {
                    let sql = format!("SELECT COUNT(*) FROM {table}");
                    on_read!(db, c => sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql)).fetch_one(c).await)
                        .unwrap()
                }
            };

            let mut tx = db.begin().await.unwrap();
            tx.defer("INSERT INTO parent (id, label) VALUES ($1, $2)").bind(1_i64).bind("one");
            tx.defer("INSERT INTO child (id, parent) VALUES ($1, $2), ($3, $4)")
                .bind(10_i64)
                .bind(1_i64)
                .bind(11_i64)
                .bind(1_i64);
            tx.commit().await.unwrap();
            assert_eq!((count("parent").await, count("child").await), (1, 2));

            let mut tx = db.begin().await.unwrap();
            tx.defer("INSERT INTO parent (id, label) VALUES ($1, $2)").bind(2_i64).bind("two");
            tx.defer("INSERT INTO child (id, parent) VALUES ($1, $2)").bind(20_i64).bind(3_i64);
            assert!(tx.commit().await.is_err(), "a child of a parent nobody made fails");
            let mut tx = db.begin().await.unwrap();
            tx.defer("INSERT INTO child (id, parent) VALUES ($1, $2)").bind(30_i64).bind(1_i64);
            tx.defer("INSERT INTO parent (id, label) VALUES ($1, $2)").bind(1_i64).bind("one again");
            assert!(tx.commit().await.is_err(), "a duplicate key in a later part fails");
            assert_eq!((count("parent").await, count("child").await), (1, 2), "neither failed commit left a row");
        })
        .await;
    }

    #[tokio::test]
    async fn the_first_statement_carries_the_begin_and_counts_only_its_own_rows() {
        each_backend(|db| async move {
            let mut tx = db.begin().await.unwrap();
            exec!(tx, "CREATE TABLE led (n BIGINT PRIMARY KEY)").unwrap();
            exec!(tx, "INSERT INTO led (n) VALUES (1), (2), (3)").unwrap();
            tx.commit().await.unwrap();

            let before = db.writer_use();
            let mut tx = db.begin().await.unwrap();
            // SQLite reports the last change count for a BEGIN; the caller's count is its own.
            let insert = "INSERT INTO led (n) VALUES (4) ON CONFLICT DO NOTHING";
            assert_eq!(exec!(tx, insert).unwrap(), 1, "the first statement inserted one row");
            assert_eq!(exec!(tx, insert).unwrap(), 0, "the same again inserts none");
            let outside: i64 =
                on_read!(db, c => sqlx::query_scalar("SELECT COUNT(*) FROM led").fetch_one(c).await).unwrap();
            assert_eq!(
                outside, 3,
                "the transaction had begun with its first statement: nothing shows before the commit"
            );
            let max: Option<i64> =
                on_tx!(tx, c => sqlx::query_scalar("SELECT MAX(n) FROM led").fetch_optional(&mut *c).await).unwrap();
            assert_eq!(max, Some(4));
            tx.commit().await.unwrap();
            if let (Some(before), Some(after)) = (before, db.writer_use()) {
                let used = after.since(&before);
                assert_eq!(used.transactions, 1);
                assert_eq!(used.trips, 4, "BEGIN with the first insert, the second, the read, the COMMIT");
            }

            // A read as the first statement begins the transaction too, and a failed one leaves nothing.
            let mut tx = db.begin().await.unwrap();
            let n: i64 =
                on_tx!(tx, c => sqlx::query_scalar("SELECT COUNT(*) FROM led").fetch_one(&mut *c).await).unwrap();
            assert_eq!(n, 4);
            exec!(tx, "INSERT INTO led (n) VALUES (5)").unwrap();
            assert!(exec!(tx, "INSERT INTO led (n) VALUES (5)").is_err());
            drop(tx);
            let mut tx = db.begin().await.unwrap();
            assert!(exec!(tx, "INSERT INTO led (n) VALUES (1)").is_err(), "a first statement that fails");
            drop(tx);
            let mut tx = db.begin().await.unwrap();
            exec!(tx, "INSERT INTO led (n) VALUES (6)").unwrap();
            tx.commit().await.unwrap();
            let all: Vec<i64> =
                on_read!(db, c => sqlx::query_scalar("SELECT n FROM led ORDER BY n").fetch_all(c).await).unwrap();
            assert_eq!(all, vec![1, 2, 3, 4, 6]);
        })
        .await;
    }

    #[tokio::test]
    async fn work_holding_the_writer_runs_on_a_thread_of_its_own_on_sqlite() {
        each_backend(|db| async move {
            let thread = db.writing(async { std::thread::current().name().map(str::to_string) }).await;
            match db.backend() {
                Backend::Sqlite => assert_eq!(thread.as_deref(), Some("herald-writer")),
                Backend::Postgres => assert_ne!(thread.as_deref(), Some("herald-writer")),
            }
        })
        .await;
    }

    #[tokio::test]
    async fn the_writer_counts_the_hold_before_its_first_trip_and_in_deferred_trips() {
        let test = crate::testing::TestDb::sqlite().await;
        let db = test.db.clone();
        let before = db.writer_use().expect("SQLite has a writer");
        let mut tx = db.begin().await.unwrap();
        // Work done holding the writer before SQLite has anything to do.
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.defer("CREATE TABLE t (n INTEGER)");
        tx.defer("INSERT INTO t (n) VALUES ($1)").bind(1i64);
        tx.commit().await.unwrap();
        let used = db.writer_use().unwrap().since(&before);
        assert_eq!((used.transactions, used.trips), (1, 1), "BEGIN, the deferred statements and COMMIT in one trip");
        assert!(used.before_first >= Duration::from_millis(50), "{used:?}");
        assert!(used.sent > Duration::ZERO && used.before_first + used.sent <= used.held, "{used:?}");
        test.destroy().await;
    }

    #[tokio::test]
    async fn an_urgent_transaction_goes_ahead_of_the_queue_and_the_writer_counts_its_use() {
        let test = crate::testing::TestDb::sqlite().await;
        let db = test.db.clone();
        let before = db.writer_use().expect("SQLite has a writer");
        let mut tx = db.begin().await.unwrap();
        exec!(tx, "CREATE TABLE turns (n INTEGER PRIMARY KEY AUTOINCREMENT, who TEXT NOT NULL)").unwrap();
        tx.commit().await.unwrap();

        // Hold the writer while four ordinary transactions queue for it, then one urgent one.
        let held = db.begin().await.unwrap();
        let mut waiting = Vec::new();
        for who in ["a", "b", "c", "d"] {
            let db = db.clone();
            waiting.push(tokio::spawn(async move {
                let mut tx = db.begin().await.unwrap();
                exec!(tx, "INSERT INTO turns (who) VALUES ($1)", who).unwrap();
                tx.commit().await.unwrap();
            }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let urgent = {
            let db = db.clone();
            tokio::spawn(async move {
                let mut tx = db.begin_urgent().await.unwrap();
                exec!(tx, "INSERT INTO turns (who) VALUES ($1)", "urgent").unwrap();
                tx.commit().await.unwrap();
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        held.rollback().await.unwrap();
        urgent.await.unwrap();
        for w in waiting {
            w.await.unwrap();
        }
        let order: Vec<String> =
            on_read!(db, c => sqlx::query_scalar("SELECT who FROM turns ORDER BY n").fetch_all(c).await).unwrap();
        // Only the one next in line when it came may go first; the rest keep their order.
        assert_eq!(order, ["a", "urgent", "b", "c", "d"]);

        let used = db.writer_use().unwrap().since(&before);
        assert_eq!(used.transactions, 7, "the table, the held one, four ordinary ones and the urgent one");
        assert!(used.held > Duration::from_millis(60), "the held transaction alone took 100 ms: {used:?}");
        assert!(used.waited >= used.held / 2, "five transactions waited behind it: {used:?}");
        test.destroy().await;
    }
}
