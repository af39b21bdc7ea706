//! From raw bytes to UTF-8 text, before any parser runs.
//!
//! XML says its own encoding (a BOM, the UTF-16 byte pattern, or `encoding="…"` in the
//! declaration); JSON is UTF-8 or UTF-16. Decoding is lossy: invalid bytes become U+FFFD rather
//! than failing the feed, because a single bad byte in one description is common and harmless.
//! The XML declaration is then removed, so feed-rs (which switches its decoder when it reads a
//! declaration, and panics if that happens late) only ever sees UTF-8 without one.

use encoding_rs::{Encoding, UTF_8, UTF_16BE, UTF_16LE};

use super::{FeedError, MAX_BODY_BYTES};

/// A body decoded to UTF-8 and classified by its first significant character.
pub(super) enum Document {
    /// Starts with `<`; the XML declaration, if any, is removed.
    Xml(String),
    /// Starts with `{`.
    Json(String),
}

pub(super) fn decode(body: &[u8]) -> Result<Document, FeedError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(FeedError::TooLarge { size: body.len(), limit: MAX_BODY_BYTES });
    }
    let (encoding, bom_len) = sniff(body)?;
    let rest = body.get(bom_len..).unwrap_or_default();
    let (text, _had_errors) = encoding.decode_without_bom_handling(rest);
    let text = text.trim_start_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
    match text.chars().next() {
        None => Err(FeedError::Empty),
        Some('{') => Ok(Document::Json(text.to_owned())),
        // NUL is not allowed in XML, and at the start it would make feed-rs's reader guess UTF-16.
        Some('<') => Ok(Document::Xml(strip_declaration(text).replace('\0', "\u{fffd}"))),
        Some(_) => Err(FeedError::NotAFeed("it starts with neither '<' (XML) nor '{' (JSON)".into())),
    }
}

/// The encoding and the length of the BOM to skip.
fn sniff(body: &[u8]) -> Result<(&'static Encoding, usize), FeedError> {
    match body {
        [0xEF, 0xBB, 0xBF, ..] => return Ok((UTF_8, 3)),
        [0xFF, 0xFE, ..] => return Ok((UTF_16LE, 2)),
        [0xFE, 0xFF, ..] => return Ok((UTF_16BE, 2)),
        // No BOM, but ASCII in 16-bit units: "<\0?\0" or "\0<\0?".
        [a, 0, b, 0, ..] if *a != 0 && *b != 0 => return Ok((UTF_16LE, 0)),
        [0, a, 0, b, ..] if *a != 0 && *b != 0 => return Ok((UTF_16BE, 0)),
        _ => {}
    }
    let Some(label) = declared_encoding(body) else { return Ok((UTF_8, 0)) };
    match Encoding::for_label_no_replacement(label.as_bytes()) {
        // A UTF-16 label on bytes that are plainly 8-bit is a mislabel; read them as UTF-8.
        Some(enc) if enc == UTF_16LE || enc == UTF_16BE => Ok((UTF_8, 0)),
        Some(enc) => Ok((enc, 0)),
        None => Err(FeedError::Encoding(format!(
            "the XML declaration names encoding \"{}\", which Herald cannot decode; the publisher should serve UTF-8",
            label.chars().take(40).collect::<String>()
        ))),
    }
}

/// The `encoding` pseudo-attribute of a leading `<?xml …?>`, read from ASCII-compatible bytes.
fn declared_encoding(body: &[u8]) -> Option<String> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    let head = body.get(start..)?;
    let head = head.get(..head.len().min(1024))?;
    let decl = head.strip_prefix(b"<?xml")?;
    let end = decl.windows(2).position(|w| w == b"?>")?;
    let decl = String::from_utf8_lossy(decl.get(..end)?);
    let after = &decl[decl.find("encoding")? + "encoding".len()..];
    let after = after.trim_start().strip_prefix('=')?.trim_start();
    let quote = after.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let value = &after[1..];
    let value = &value[..value.find(quote)?];
    Some(value.trim().to_owned())
}

/// Removes a leading XML declaration (`<?xml version="1.0" …?>`, not `<?xml-stylesheet …?>`).
fn strip_declaration(text: &str) -> &str {
    let Some(rest) = text.strip_prefix("<?xml") else { return text };
    if !rest.starts_with(|c: char| c.is_whitespace() || c == '?') {
        return text;
    }
    match rest.find("?>") {
        Some(end) => &rest[end + 2..],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xml(body: &[u8]) -> String {
        match decode(body) {
            Ok(Document::Xml(text)) => text,
            Ok(Document::Json(_)) => panic!("read as JSON"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn the_declaration_names_the_encoding_and_is_removed() {
        let body = b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>\n<rss>caf\xe9</rss>";
        assert_eq!(xml(body), "\n<rss>caf\u{e9}</rss>");
        let body = b"<?xml version='1.0' encoding='windows-1252'?><a>\x93q\x94</a>";
        assert_eq!(xml(body), "<a>\u{201c}q\u{201d}</a>");
    }

    #[test]
    fn stylesheets_are_not_declarations() {
        assert_eq!(xml(b"<?xml-stylesheet href='a.xsl'?><rss/>"), "<?xml-stylesheet href='a.xsl'?><rss/>");
    }

    #[test]
    fn utf16_with_and_without_a_bom() {
        let utf16le: Vec<u8> = "<?xml version=\"1.0\" encoding=\"UTF-16\"?><a>\u{e9}</a>"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert_eq!(xml(&utf16le), "<a>\u{e9}</a>");
        let mut with_bom = vec![0xFE, 0xFF];
        with_bom.extend("<a>\u{e9}</a>".encode_utf16().flat_map(u16::to_be_bytes));
        assert_eq!(xml(&with_bom), "<a>\u{e9}</a>");
    }

    #[test]
    fn a_utf16_label_on_8_bit_bytes_is_read_as_utf8() {
        assert_eq!(xml("<?xml version=\"1.0\" encoding=\"UTF-16\"?><a>é</a>".as_bytes()), "<a>é</a>");
    }

    #[test]
    fn unknown_encodings_are_an_encoding_error() {
        let err = decode(b"<?xml version=\"1.0\" encoding=\"x-klingon\"?><a/>").err().map(|e| e.code());
        assert_eq!(err, Some("feed_encoding"));
    }

    #[test]
    fn nul_is_replaced() {
        assert_eq!(xml(b"<a>\0</a>"), "<a>\u{fffd}</a>");
    }
}
