//! Writing a query once for both backends. SQL that both SQLite and PostgreSQL accept (numbered
//! `$1` parameters, `RETURNING`, `ON CONFLICT`, no backend functions such as `now()`) runs through
//! [`on_tx!`](crate::on_tx), [`exec!`](crate::exec) or [`on_read!`](crate::on_read), which expand once per
//! backend.
//! Times bind and decode as [`Ts`]: microseconds in SQLite, `timestamptz` in PostgreSQL.

use chrono::{DateTime, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};
use sqlx::sqlite::{SqliteArgumentsBuffer, SqliteTypeInfo, SqliteValueRef};
use sqlx::{Decode, Encode, Postgres, Sqlite, Type};

/// A UTC instant as both backends store it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ts(pub DateTime<Utc>);

impl Ts {
    /// Now, to the microsecond both backends keep, so a value read back equals the one written.
    pub fn now() -> Ts {
        Ts(crate::from_micros(crate::to_micros(Utc::now())))
    }
}

impl From<DateTime<Utc>> for Ts {
    fn from(t: DateTime<Utc>) -> Ts {
        Ts(t)
    }
}

impl From<Ts> for DateTime<Utc> {
    fn from(t: Ts) -> DateTime<Utc> {
        t.0
    }
}

impl Type<Sqlite> for Ts {
    fn type_info() -> SqliteTypeInfo {
        <i64 as Type<Sqlite>>::type_info()
    }
    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <i64 as Type<Sqlite>>::compatible(ty)
    }
}

impl Encode<'_, Sqlite> for Ts {
    fn encode_by_ref(&self, buf: &mut SqliteArgumentsBuffer) -> Result<IsNull, BoxDynError> {
        <i64 as Encode<'_, Sqlite>>::encode(crate::to_micros(self.0), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for Ts {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Ts(crate::from_micros(<i64 as Decode<'r, Sqlite>>::decode(value)?)))
    }
}

impl Type<Postgres> for Ts {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
    fn compatible(ty: &PgTypeInfo) -> bool {
        <DateTime<Utc> as Type<Postgres>>::compatible(ty)
    }
}

impl Encode<'_, Postgres> for Ts {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <DateTime<Utc> as Encode<'_, Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for Ts {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Ts(<DateTime<Utc> as Decode<'r, Postgres>>::decode(value)?))
    }
}

/// Runs `$body` with `$c` bound to the connection of a transaction ([`Tx`](crate::Tx) or
/// [`Snapshot`](crate::Snapshot)), once per backend:
/// `on_tx!(tx, c => sqlx::query(SQL).bind(x).execute(&mut *c).await)`.
#[macro_export]
macro_rules! on_tx {
    ($tx:expr, $c:ident => $body:expr) => {
        match $tx.conn().await {
            Ok($crate::TxConn::Sqlite($c)) => $body,
            Ok($crate::TxConn::Postgres($c)) => $body,
            Err(e) => Err(e.into()),
        }
    };
}

/// Runs `$body` with `$c` bound to the read pool (SQLite) or the pool (PostgreSQL).
#[macro_export]
macro_rules! on_read {
    ($db:expr, $c:ident => $body:expr) => {
        match $db.pools() {
            $crate::Pools::Sqlite { read: $c, .. } => $body,
            $crate::Pools::Postgres($c) => $body,
        }
    };
}

/// Executes one portable statement in the transaction and gives the rows it affected:
/// `exec!(tx, "UPDATE users SET disabled = $2 WHERE id = $1", user, true)`.
#[macro_export]
macro_rules! exec {
    ($tx:expr, $sql:expr $(, $arg:expr)* $(,)?) => {
        match $tx.conn().await {
            Ok($crate::TxConn::Sqlite(c)) => ::sqlx::query($sql)$(.bind($arg))*.execute(&mut *c).await.map(|r| r.rows_affected()),
            Ok($crate::TxConn::Postgres(c)) => ::sqlx::query($sql)$(.bind($arg))*.execute(&mut *c).await.map(|r| r.rows_affected()),
            Err(e) => Err(e),
        }
    };
}

/// Ids bound as one parameter, for `id {in_ids}` (see [`Backend::in_ids`]): on SQLite a JSONB
/// array of hex strings ([`crate::jsonb::ids`]), on PostgreSQL a `uuid[]`. The statement's text is
/// then the same however many ids there are, so each connection compiles it once and keeps it,
/// where an `IN ($1, $2, …)` list was compiled again for every length (on SQLite, on the single
/// writer's thread).
///
/// [`Backend::in_ids`]: crate::Backend::in_ids
#[derive(Debug, Clone, Copy)]
pub struct Ids<'a>(pub &'a [uuid::Uuid]);

impl Type<Sqlite> for Ids<'_> {
    fn type_info() -> SqliteTypeInfo {
        <Vec<u8> as Type<Sqlite>>::type_info()
    }
}

impl Encode<'_, Sqlite> for Ids<'_> {
    fn encode_by_ref(&self, buf: &mut SqliteArgumentsBuffer) -> Result<IsNull, BoxDynError> {
        <Vec<u8> as Encode<'_, Sqlite>>::encode(crate::jsonb::ids(self.0), buf)
    }
}

impl Type<Postgres> for Ids<'_> {
    fn type_info() -> PgTypeInfo {
        <Vec<uuid::Uuid> as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for Ids<'_> {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <&[uuid::Uuid] as Encode<'_, Postgres>>::encode_by_ref(&self.0, buf)
    }
}
