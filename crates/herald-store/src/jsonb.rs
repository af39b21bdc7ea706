//! Batch rows for SQLite's `jsonb_each`, written in SQLite's own binary JSON format (JSONB,
//! <https://sqlite.org/jsonb.html>, stable since 3.45).
//!
//! The hot batch statements take their rows as one parameter, so their text (and SQLite's compiled
//! statement) is the same whatever the number of rows. Sent as JSON text, every statement parsed
//! that text into JSONB again, and every string was escaped here and unescaped there (about a
//! sixth of the writer thread's samples in `herald bench deliveries`). Sent as JSONB, `jsonb_each`
//! reads the rows in place and `->>` hands each string back as it was written.
//!
//! Each row is an array, read by position: `value ->> 0`, `value ->> 1`, … (an array element is
//! found by counting, an object's by comparing every key before it).

/// JSONB element types (the low four bits of an element's first byte).
const NULL: u8 = 0x0;
const INT: u8 = 0x3;
/// Text with no escapes to undo: any UTF-8 as it is.
const TEXT_RAW: u8 = 0xA;
const ARRAY: u8 = 0xB;

/// An array of arrays, built row by row: `Rows::default()`, the row's values in their order,
/// [`Rows::end_row`], and at the end [`Rows::finish`] for the bytes to bind as a BLOB.
#[derive(Default)]
pub struct Rows {
    rows: Vec<u8>,
    row: Vec<u8>,
}

impl Rows {
    pub fn text(&mut self, s: &str) -> &mut Self {
        element(&mut self.row, TEXT_RAW, s.as_bytes());
        self
    }

    pub fn opt_text(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => self.text(s),
            None => self.null(),
        }
    }

    pub fn int(&mut self, n: i64) -> &mut Self {
        element(&mut self.row, INT, itoa::Buffer::new().format(n).as_bytes());
        self
    }

    pub fn opt_int(&mut self, n: Option<i64>) -> &mut Self {
        match n {
            Some(n) => self.int(n),
            None => self.null(),
        }
    }

    /// A UUID as 32 hex digits, for `unhex(value ->> N)`.
    pub fn id(&mut self, id: uuid::Uuid) -> &mut Self {
        hex_id(&mut self.row, id);
        self
    }

    pub fn opt_id(&mut self, id: Option<uuid::Uuid>) -> &mut Self {
        match id {
            Some(id) => self.id(id),
            None => self.null(),
        }
    }

    pub fn null(&mut self) -> &mut Self {
        self.row.push(NULL);
        self
    }

    /// Closes the row begun by the values since the last one.
    pub fn end_row(&mut self) {
        element(&mut self.rows, ARRAY, &self.row);
        self.row.clear();
    }

    /// The array of the rows, as JSONB.
    pub fn finish(self) -> Vec<u8> {
        debug_assert!(self.row.is_empty(), "a row was begun and not ended");
        array(&self.rows)
    }
}

/// An array of ids as hex text, for `SELECT unhex(value) FROM jsonb_each(…)`.
pub fn ids(ids: &[uuid::Uuid]) -> Vec<u8> {
    let mut items = Vec::with_capacity(ids.len() * 34);
    for id in ids {
        hex_id(&mut items, *id);
    }
    array(&items)
}

/// An id as 32 hex digits of raw text.
fn hex_id(out: &mut Vec<u8>, id: uuid::Uuid) {
    element(out, TEXT_RAW, id.simple().encode_lower(&mut uuid::Uuid::encode_buffer()).as_bytes());
}

/// The array of the elements already written in `items`.
fn array(items: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(items.len() + 5);
    element(&mut out, ARRAY, items);
    out
}

/// Writes one element: its header (type, and the payload's size in the fewest bytes the format
/// allows), then the payload.
fn element(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let n = payload.len();
    match n {
        0..=11 => out.push(kind | ((n as u8) << 4)),
        12..=0xFF => out.extend_from_slice(&[kind | 0xC0, n as u8]),
        0x100..=0xFFFF => {
            out.push(kind | 0xD0);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.push(kind | 0xE0);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite reads what this writes: each row's values by position, with their types, through
    /// `jsonb_each`, and `json()` turns it back into the JSON it stands for.
    #[tokio::test]
    async fn sqlite_reads_the_rows_as_written() {
        use sqlx::{Connection, Row};
        let mut c = sqlx::SqliteConnection::connect("sqlite::memory:").await.unwrap();
        let long = "x".repeat(300);
        let longer = "y".repeat(70_000);
        let id = uuid::Uuid::now_v7();
        let mut rows = Rows::default();
        rows.text("").int(0).int(-42).int(i64::MAX).int(i64::MIN).null().end_row();
        rows.text("a \"quoted\" \\ line\nbreak, ünïcode ✓").opt_text(None).opt_int(Some(7)).id(id).end_row();
        rows.text(&long).text(&longer).text("twelve bytes").end_row();
        let bytes = rows.finish();

        let got: Vec<(i64, String, String)> = sqlx::query(
            "SELECT key, value ->> 0, typeof(value ->> 1) || '/' || typeof(value ->> 2) FROM jsonb_each(?1)",
        )
        .bind(&bytes)
        .fetch_all(&mut c)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
        assert_eq!(
            got,
            [
                (0, String::new(), "integer/integer".to_string()),
                (1, "a \"quoted\" \\ line\nbreak, ünïcode ✓".to_string(), "null/integer".to_string()),
                (2, long.clone(), "text/text".to_string()),
            ]
        );
        let json: String = sqlx::query_scalar("SELECT json(?1)").bind(&bytes).fetch_one(&mut c).await.unwrap();
        let expected = serde_json::json!([
            ["", 0, -42, i64::MAX, i64::MIN, null],
            ["a \"quoted\" \\ line\nbreak, ünïcode ✓", null, 7, id.simple().to_string()],
            [long, longer, "twelve bytes"]
        ]);
        assert_eq!(serde_json::from_str::<serde_json::Value>(&json).unwrap(), expected);
        let (min, hex): (i64, Vec<u8>) = sqlx::query_as(
            "SELECT value ->> 4, unhex((SELECT value ->> 3 FROM jsonb_each(?1) WHERE key = 1)) FROM jsonb_each(?1) WHERE key = 0",
        )
        .bind(&bytes)
        .fetch_one(&mut c)
        .await
        .unwrap();
        assert_eq!((min, hex), (i64::MIN, id.as_bytes().to_vec()));
        let valid: i64 = sqlx::query_scalar("SELECT json_valid(?1, 8)").bind(&bytes).fetch_one(&mut c).await.unwrap();
        assert_eq!(valid, 1, "strictly valid JSONB");

        let some: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::now_v7()).collect();
        for list in [&some[..], &[]] {
            let back: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT unhex(value) FROM jsonb_each(?1) ORDER BY key")
                .bind(ids(list))
                .fetch_all(&mut c)
                .await
                .unwrap();
            assert_eq!(back, list);
        }
    }
}
