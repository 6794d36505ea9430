//! Parser for KYT (know-your-transaction) denylists of EVM addresses, as loaded by
//! `walletctl kyt import FILE`.
//!
//! Pure: it reads only the `&str` it is given and prints nothing. Three formats are understood
//! (see [`Format`]): one address per line, CSV with a header naming the address column, and
//! JSON (an array of strings such as the OFAC-derived `sanctioned_addresses_ETH.json`, an array
//! of objects with an address field, or an object holding either under `addresses`).
//!
//! CSV is read line by line by a small splitter of our own (see [`CsvFields`] for why not the
//! `csv` crate), JSON with `serde_json` (plus a small scanner that finds where each value sits,
//! for line numbers). Addresses are `0x` + 40 hex digits in any case
//! (checksums are not enforced, published lists mix cases), decoded by alloy's `Address` to 20
//! bytes and deduplicated on those bytes. Entries that are not
//! addresses are reported with their 1-based line, not fatal; only whole-file problems are
//! [`ImportError`]s.

use std::{borrow::Cow, collections::HashSet, fmt};

use alloy_primitives::Address;
use serde_json::{Map, Value};

/// Largest input accepted, in bytes.
pub const MAX_INPUT_BYTES: usize = 256 * 1024 * 1024;

/// Header names (CSV) or field names (JSON objects) taken as the address column, compared
/// case-insensitively, when no column is named explicitly.
const ADDRESS_COLUMNS: &[&str] =
    &["address", "addresses", "wallet", "wallet_address", "digital_currency_address", "addr"];

/// Longest `text` kept in a [`BadEntry`], in characters.
const CLIP_CHARS: usize = 80;

/// Input format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Detect from the content: JSON if it starts with `[` or `{`, CSV if the first line is a
    /// header naming an address column, else plain.
    Auto,
    /// One address per line; `#` comments and blank lines are skipped.
    Plain,
    /// CSV (`,`, `;` or tab separated) with a header naming the address column.
    Csv,
    /// JSON: an array of addresses, an array of objects with an address field, or an object
    /// with an `addresses` key holding either.
    Json,
}

/// One line or entry that was not a valid EVM address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadEntry {
    /// 1-based line in the file.
    pub line: usize,
    /// Why it was rejected.
    pub reason: String,
    /// The offending text, clipped to 80 characters.
    pub text: String,
}

/// What a file held.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// Valid, deduplicated addresses (20 bytes each), in order of first appearance.
    pub addresses: Vec<[u8; 20]>,
    /// Entries seen (valid + duplicate + bad), not counting blank lines, comments or a CSV header.
    pub entries: usize,
    /// Valid entries that repeated an earlier one (case-insensitively).
    pub duplicates: usize,
    /// Entries that are not EVM addresses.
    pub bad: Vec<BadEntry>,
    /// The format actually used (never [`Format::Auto`]).
    pub format: Format,
}

impl Default for Parsed {
    /// Nothing parsed; `format` is [`Format::Plain`] (a `Parsed` is never [`Format::Auto`]).
    fn default() -> Self {
        Self {
            addresses: Vec::new(),
            entries: 0,
            duplicates: 0,
            bad: Vec::new(),
            format: Format::Plain,
        }
    }
}

/// Why a whole file could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The input is bigger than [`MAX_INPUT_BYTES`].
    #[error("the file is {size} bytes, more than the limit of {max} bytes")]
    TooLarge {
        /// Size of the input, in bytes.
        size: usize,
        /// The limit, [`MAX_INPUT_BYTES`].
        max: usize,
    },
    /// The input holds nothing but whitespace (and maybe a byte-order mark).
    #[error("the file is empty")]
    Empty,
    /// The input is not valid JSON.
    #[error("invalid JSON at line {line}, column {column}: {message}")]
    InvalidJson {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A CSV header without the address column.
    #[error(
        "the CSV header has no address column (looked for {wanted}); columns found: {}",
        NameList(found)
    )]
    NoAddressColumn {
        /// The column name(s) looked for.
        wanted: String,
        /// The header names found (each clipped to 80 characters).
        found: Vec<String>,
    },
    /// A JSON array of objects whose first object has no address field.
    #[error("the JSON objects have no address field (looked for {wanted}); keys of the first object: {}", NameList(found))]
    NoAddressField {
        /// The field name(s) looked for.
        wanted: String,
        /// The keys of the first object (each clipped to 80 characters).
        found: Vec<String>,
    },
    /// JSON of a shape other than the three understood.
    #[error(
        "unrecognised JSON: {0}; expected an array of addresses, an array of objects with an \
         address field, or an object with an \"addresses\" array"
    )]
    UnrecognisedShape(String),
}

/// Displays names as `"a", "b"`, or `(none)`.
struct NameList<'a>(&'a [String]);

impl fmt::Display for NameList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(none)");
        }
        for (i, name) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name:?}")?;
        }
        Ok(())
    }
}

/// Parses a denylist.
///
/// `column` names the CSV column or JSON field (and the JSON top-level key) holding the
/// addresses, matched case-insensitively; without it the usual names (`address`, `wallet`, …)
/// are looked for. A leading UTF-8 byte-order mark is ignored, as are `\r` of CRLF line endings.
///
/// # Errors
/// Whole-file failures only: see [`ImportError`]. Entries that are not addresses are reported in
/// [`Parsed::bad`].
pub fn parse(input: &str, format: Format, column: Option<&str>) -> Result<Parsed, ImportError> {
    if input.len() > MAX_INPUT_BYTES {
        return Err(ImportError::TooLarge { size: input.len(), max: MAX_INPUT_BYTES });
    }
    let text = input.strip_prefix('\u{feff}').unwrap_or(input);
    if text.trim().is_empty() {
        return Err(ImportError::Empty);
    }
    let column = column.map(str::trim).filter(|c| !c.is_empty());
    let format = match format {
        Format::Auto => detect(text, column),
        other => other,
    };
    let mut builder = Builder::new(format, text.len());
    match format {
        Format::Plain | Format::Auto => parse_plain(text, &mut builder),
        Format::Csv => parse_csv(text, column, &mut builder)?,
        Format::Json => parse_json(text, column, &mut builder)?,
    }
    Ok(builder.parsed)
}

/// Accumulates entries, deduplicating valid addresses.
struct Builder {
    parsed: Parsed,
    seen: HashSet<[u8; 20]>,
}

impl Builder {
    fn new(format: Format, input_len: usize) -> Self {
        // A plain line is ~43 bytes; other formats hold fewer entries per byte. Growth past the
        // estimate is amortised anyway; the cap keeps a huge JSON file from over-reserving.
        let estimate = (input_len / 43).min(1 << 20);
        Self {
            parsed: Parsed { addresses: Vec::with_capacity(estimate), format, ..Parsed::default() },
            seen: HashSet::with_capacity(estimate),
        }
    }

    /// One entry whose text is `s` (already trimmed); `line` is only called if it is bad.
    fn add(&mut self, s: &str, line: impl FnOnce() -> usize) {
        self.parsed.entries += 1;
        match check_address(s) {
            Ok(address) => {
                if self.seen.insert(address) {
                    self.parsed.addresses.push(address);
                } else {
                    self.parsed.duplicates += 1;
                }
            }
            Err(reason) => self.parsed.bad.push(BadEntry { line: line(), reason, text: clip(s) }),
        }
    }

    /// One entry that is bad for a reason other than its text.
    fn bad(&mut self, line: usize, reason: impl Into<String>, text: &str) {
        self.parsed.entries += 1;
        self.parsed.bad.push(BadEntry { line, reason: reason.into(), text: clip(text.trim()) });
    }
}

/// The first [`CLIP_CHARS`] characters of `s`.
fn clip(s: &str) -> String {
    match s.char_indices().nth(CLIP_CHARS) {
        Some((end, _)) => s[..end].to_owned(),
        None => s.to_owned(),
    }
}

const NOT_EVM: &str = "not an EVM address (0x + 40 hex digits)";

/// An EVM address (`0x`/`0X` + 40 hex digits, any case, not zero), or why `s` is not one.
fn check_address(s: &str) -> Result<[u8; 20], String> {
    let bytes = s.as_bytes();
    if bytes.len() == 42 && bytes[0] == b'0' && (bytes[1] | 0x20) == b'x' {
        // Any letter case: published lists mix them, so checksums are not enforced.
        if let Ok(address) = s[2..].parse::<Address>() {
            return if address.is_zero() {
                Err("the zero address".to_owned())
            } else {
                Ok(address.into_array())
            };
        }
    }
    Err(why_not_address(s))
}

/// The reason `s` is not a valid address (the slow path, for bad entries only).
fn why_not_address(s: &str) -> String {
    if s.is_empty() {
        return "empty".to_owned();
    }
    if s.contains(char::is_whitespace) {
        return format!("{NOT_EVM}: contains whitespace");
    }
    if let Some(digits) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        if let Some(c) = digits.chars().find(|c| !c.is_ascii_hexdigit()) {
            return format!("{NOT_EVM}: non-hex character {c:?}");
        }
        return format!("{NOT_EVM}: {} hex digits", digits.len());
    }
    if s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return format!("{NOT_EVM}: missing the 0x prefix");
    }
    if let Some(chain) = looks_like_other_chain(s) {
        return format!("not an EVM address (looks like a {chain} address)");
    }
    NOT_EVM.to_owned()
}

/// A rough guess at the chain of a non-EVM address, for a friendlier reason.
fn looks_like_other_chain(s: &str) -> Option<&'static str> {
    let base58 = |s: &str| {
        s.bytes().all(|b| b.is_ascii_alphanumeric() && !matches!(b, b'0' | b'O' | b'I' | b'l'))
    };
    let lower = s.to_ascii_lowercase();
    if (lower.starts_with("bc1") || lower.starts_with("tb1"))
        && (14..=90).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Some("Bitcoin");
    }
    if (s.starts_with('1') || s.starts_with('3')) && (25..=35).contains(&s.len()) && base58(s) {
        return Some("Bitcoin");
    }
    if s.starts_with('T') && s.len() == 34 && base58(s) {
        return Some("Tron");
    }
    None
}

/// Whether `name` is the address column: `column` if given, else one of [`ADDRESS_COLUMNS`].
fn is_address_column(name: &str, column: Option<&str>) -> bool {
    match column {
        Some(column) => same_name(name, column),
        None => ADDRESS_COLUMNS.iter().any(|c| name.eq_ignore_ascii_case(c)),
    }
}

/// Case-insensitive name comparison.
fn same_name(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b) || (!a.is_ascii() && a.to_lowercase() == b.to_lowercase())
}

/// What was looked for, for error messages.
fn wanted(column: Option<&str>) -> String {
    match column {
        Some(column) => format!("{column:?}"),
        None => ADDRESS_COLUMNS.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(", "),
    }
}

/// The format of `text` (BOM already stripped, not blank).
fn detect(text: &str, column: Option<&str>) -> Format {
    let start = text.trim_start();
    if start.starts_with('[') || start.starts_with('{') {
        return Format::Json;
    }
    let Some(first) =
        text.split('\n').map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#'))
    else {
        return Format::Plain;
    };
    // A single-column header (`address` alone) is CSV too: it can never be an address.
    let header = CsvFields::new(first, csv_separator(first))
        .any(|f| is_address_column(f.trim(), column) || is_address_column(f.trim(), None));
    if header {
        Format::Csv
    } else {
        Format::Plain
    }
}

/// Each non-blank line: an address, maybe followed by whitespace and a `#` comment.
fn parse_plain(text: &str, builder: &mut Builder) {
    for (i, raw) in text.split('\n').enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        builder.add(strip_trailing_comment(line), || i + 1);
    }
}

/// `line` without a trailing `  # comment`; `line` itself if anything else follows the first word.
fn strip_trailing_comment(line: &str) -> &str {
    match line.bytes().position(|b| b.is_ascii_whitespace()) {
        Some(end) if line[end..].trim_start().starts_with('#') => &line[..end],
        _ => line,
    }
}

/// The separator of a CSV file, judged from its header: `,`, else `;` or tab if present.
fn csv_separator(header: &str) -> u8 {
    if header.contains(',') {
        b','
    } else if header.contains(';') {
        b';'
    } else if header.contains('\t') {
        b'\t'
    } else {
        b','
    }
}

fn parse_csv(text: &str, column: Option<&str>, builder: &mut Builder) -> Result<(), ImportError> {
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).enumerate();
    let header = loop {
        match lines.next() {
            None => {
                return Err(ImportError::NoAddressColumn {
                    wanted: wanted(column),
                    found: Vec::new(),
                })
            }
            Some((_, line)) => {
                let trimmed = line.trim();
                if !trimmed.is_empty() && !trimmed.starts_with('#') {
                    break line;
                }
            }
        }
    };
    let separator = csv_separator(header);
    let names: Vec<Cow<'_, str>> = CsvFields::new(header, separator).collect();
    let Some(index) = names.iter().position(|name| is_address_column(name.trim(), column)) else {
        return Err(ImportError::NoAddressColumn {
            wanted: wanted(column),
            found: names.iter().map(|n| clip(n.trim())).collect(),
        });
    };
    for (i, row) in lines {
        if row.trim().is_empty() {
            continue;
        }
        let mut fields = CsvFields::new(row, separator);
        let mut count = 0;
        let field = loop {
            match fields.next() {
                Some(field) if count == index => break Some(field),
                Some(_) => count += 1,
                None => break None,
            }
        };
        match field {
            Some(field) => builder.add(field.trim(), || i + 1),
            None => builder.bad(
                i + 1,
                format!("row has {count} column(s); the address column is column {}", index + 1),
                row,
            ),
        }
    }
    Ok(())
}

/// The fields of one CSV line: RFC 4180 quoting (`"a, b"`, `""` for a quote) within the line.
/// Lenient: text after a closing quote is kept, an unclosed quote runs to the end of the line,
/// blanks before an opening quote are allowed.
///
/// Why not the `csv` crate: for a denylist, losing an address silently is the failure that
/// matters, and the crate's RFC 4180 reading does exactly that on the malformed files people
/// export: a quoted field runs across lines until the next quote (an unclosed quote swallows the
/// rest of the file), a bare CR ends a record, and a quote after a blank is literal text (so
/// `  "Doe, John",0x...` splits inside the name and shifts the address column). Reading line by
/// line contains every such fault to its own line, which is then reported with its number (the
/// regression tests below are those files).
#[derive(Debug)]
struct CsvFields<'a> {
    line: &'a str,
    pos: usize,
    separator: u8,
    done: bool,
}

impl<'a> CsvFields<'a> {
    fn new(line: &'a str, separator: u8) -> Self {
        Self { line, pos: 0, separator, done: false }
    }

    /// Index of the next separator at or after `from`, or the line's length.
    fn separator_from(&self, from: usize) -> usize {
        self.line.as_bytes()[from..]
            .iter()
            .position(|&b| b == self.separator)
            .map_or(self.line.len(), |p| from + p)
    }

    /// Ends the current field at `end` (a separator or the end of the line).
    fn finish_at(&mut self, end: usize) {
        if end >= self.line.len() {
            self.done = true;
        } else {
            self.pos = end + 1;
        }
    }
}

impl<'a> Iterator for CsvFields<'a> {
    type Item = Cow<'a, str>;

    fn next(&mut self) -> Option<Cow<'a, str>> {
        if self.done {
            return None;
        }
        let bytes = self.line.as_bytes();
        let start = self.pos;
        let mut i = start;
        while i < bytes.len() && bytes[i] != self.separator && matches!(bytes[i], b' ' | b'\t') {
            i += 1;
        }
        if bytes.get(i) != Some(&b'"') {
            let end = self.separator_from(start);
            self.finish_at(end);
            return Some(Cow::Borrowed(&self.line[start..end]));
        }
        // Quoted field.
        let mut owned: Option<String> = None;
        let mut segment = i + 1;
        loop {
            let Some(quote) = bytes[segment..].iter().position(|&b| b == b'"').map(|p| segment + p)
            else {
                // Unclosed: the rest of the line.
                self.done = true;
                let rest = &self.line[segment..];
                return Some(match owned {
                    Some(mut s) => {
                        s.push_str(rest);
                        Cow::Owned(s)
                    }
                    None => Cow::Borrowed(rest),
                });
            };
            if bytes.get(quote + 1) == Some(&b'"') {
                // `""`: a literal quote.
                owned.get_or_insert_with(String::new).push_str(&self.line[segment..=quote]);
                segment = quote + 2;
                continue;
            }
            let piece = &self.line[segment..quote];
            let end = self.separator_from(quote + 1);
            let tail = self.line[quote + 1..end].trim();
            self.finish_at(end);
            return Some(match owned {
                None if tail.is_empty() => Cow::Borrowed(piece),
                owned => {
                    let mut s = owned.unwrap_or_default();
                    s.push_str(piece);
                    s.push_str(tail);
                    Cow::Owned(s)
                }
            });
        }
    }
}

fn json_error(e: &serde_json::Error) -> ImportError {
    let (line, column) = (e.line(), e.column());
    let full = e.to_string();
    let suffix = format!(" at line {line} column {column}");
    let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
    ImportError::InvalidJson { line, column, message }
}

/// A JSON value's kind, for messages.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The first key of `map` equal to `name`, case-insensitively.
fn find_key<'m>(map: &'m Map<String, Value>, name: &str) -> Option<&'m String> {
    map.keys().find(|k| same_name(k, name))
}

fn parse_json(text: &str, column: Option<&str>, builder: &mut Builder) -> Result<(), ImportError> {
    let value: Value = serde_json::from_str(text).map_err(|e| json_error(&e))?;
    let bytes = text.as_bytes();
    let root = skip_ws(bytes, 0);
    let (array, array_start) = match &value {
        Value::Array(array) => (array, Some(root)),
        Value::Object(map) => {
            let key = column
                .and_then(|c| find_key(map, c).filter(|k| map[k.as_str()].is_array()))
                .or_else(|| find_key(map, "addresses"));
            let Some(key) = key else {
                let keys: Vec<String> = map.keys().map(|k| clip(k)).collect();
                let looked_for = match column {
                    Some(c) => format!("{c:?} or \"addresses\""),
                    None => "\"addresses\"".to_owned(),
                };
                return Err(ImportError::UnrecognisedShape(format!(
                    "an object without a key {looked_for} (keys: {})",
                    NameList(&keys)
                )));
            };
            match &map[key.as_str()] {
                Value::Array(array) => (array, find_member(text, root, key).map(|(s, _)| s)),
                other => {
                    return Err(ImportError::UnrecognisedShape(format!(
                        "{:?} holds a {}, not an array",
                        clip(key),
                        json_kind(other)
                    )))
                }
            }
        }
        other => {
            return Err(ImportError::UnrecognisedShape(format!(
                "a {} at the top level",
                json_kind(other)
            )))
        }
    };

    let mut elements = ArrayElements::new(bytes, array_start);
    let mut lines = LineCounter::new(bytes);
    let raw = |span: Option<(usize, usize)>| span.and_then(|(s, e)| text.get(s..e)).unwrap_or("");

    let Some(Value::Object(first)) = array.first() else {
        // An array of strings.
        for value in array {
            let span = elements.next();
            let mut line_of = || lines.line_of(span);
            match value {
                Value::String(s) => builder.add(s.trim(), line_of),
                other => {
                    let line = line_of();
                    builder.bad(
                        line,
                        format!("not a string but a {}", json_kind(other)),
                        raw(span),
                    );
                }
            }
        }
        return Ok(());
    };

    // An array of objects.
    let field_of = |object: &'_ Map<String, Value>| -> Option<String> {
        match column {
            Some(column) => find_key(object, column).cloned(),
            None => object.keys().find(|k| is_address_column(k, None)).cloned(),
        }
    };
    if field_of(first).is_none() {
        return Err(ImportError::NoAddressField {
            wanted: wanted(column),
            found: first.keys().map(|k| clip(k)).collect(),
        });
    }
    for value in array {
        let span = elements.next();
        let Value::Object(object) = value else {
            let line = lines.line_of(span);
            builder.bad(line, format!("not an object but a {}", json_kind(value)), raw(span));
            continue;
        };
        let Some(field) = field_of(object) else {
            let line = lines.line_of(span);
            builder.bad(line, "no address field", raw(span));
            continue;
        };
        // Where the field's value is (or failing that the object), for bad entries.
        let field_span = span.map(|(s, e)| find_member(text, s, &field).unwrap_or((s, e)));
        let mut line_of = || lines.line_of(field_span);
        match &object[field.as_str()] {
            Value::String(s) => builder.add(s.trim(), line_of),
            other => {
                let line = line_of();
                builder.bad(
                    line,
                    format!("address field is a {}, not a string", json_kind(other)),
                    raw(field_span),
                );
            }
        }
    }
    Ok(())
}

// A minimal structural scanner over JSON text already validated by serde_json, to find where
// values sit (for line numbers) without a position-tracking parser. Every function tolerates
// malformed input (it cannot panic), it just gives meaningless positions.

/// First index at or after `i` that is not JSON whitespace.
fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && matches!(bytes[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// With `bytes[i] == b'"'`: the index just past the closing quote.
fn string_end(bytes: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    while j < bytes.len() {
        match bytes[j] {
            b'\\' => j += 2,
            b'"' => return j + 1,
            _ => j += 1,
        }
    }
    bytes.len()
}

/// The index just past the value starting at `i`.
fn value_end(bytes: &[u8], i: usize) -> usize {
    match bytes.get(i) {
        Some(b'"') => string_end(bytes, i),
        Some(b'[' | b'{') => {
            let mut depth = 0_usize;
            let mut j = i;
            while j < bytes.len() {
                match bytes[j] {
                    b'"' => {
                        j = string_end(bytes, j);
                        continue;
                    }
                    b'[' | b'{' => depth += 1,
                    b']' | b'}' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            return j + 1;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            bytes.len()
        }
        _ => {
            let mut j = i;
            while j < bytes.len()
                && !matches!(bytes[j], b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            j
        }
    }
}

/// Span of the value of the last member named exactly `key` in the object starting at `start`
/// (the last, as serde_json keeps the last of duplicate keys).
fn find_member(text: &str, start: usize, key: &str) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    if bytes.get(start) != Some(&b'{') {
        return None;
    }
    let mut found = None;
    let mut i = skip_ws(bytes, start + 1);
    while bytes.get(i) == Some(&b'"') {
        let key_end = string_end(bytes, i);
        let raw_key = text.get(i..key_end).unwrap_or("");
        i = skip_ws(bytes, key_end);
        if bytes.get(i) != Some(&b':') {
            break;
        }
        i = skip_ws(bytes, i + 1);
        let end = value_end(bytes, i);
        if json_key_is(raw_key, key) {
            found = Some((i, end));
        }
        i = skip_ws(bytes, end);
        if bytes.get(i) != Some(&b',') {
            break;
        }
        i = skip_ws(bytes, i + 1);
    }
    found
}

/// Whether the quoted JSON string `raw` decodes to `key`.
fn json_key_is(raw: &str, key: &str) -> bool {
    match raw.get(1..raw.len().saturating_sub(1)) {
        Some(inner) if !inner.contains('\\') => inner == key,
        _ => serde_json::from_str::<String>(raw).is_ok_and(|k| k == key),
    }
}

/// Spans of the elements of the array starting at a given index, in order.
#[derive(Debug)]
struct ArrayElements<'a> {
    bytes: &'a [u8],
    pos: usize,
    done: bool,
}

impl<'a> ArrayElements<'a> {
    fn new(bytes: &'a [u8], start: Option<usize>) -> Self {
        match start {
            Some(start) if bytes.get(start) == Some(&b'[') => {
                let pos = skip_ws(bytes, start + 1);
                Self { bytes, pos, done: bytes.get(pos).is_none_or(|&b| b == b']') }
            }
            _ => Self { bytes, pos: 0, done: true },
        }
    }
}

impl Iterator for ArrayElements<'_> {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        if self.done {
            return None;
        }
        let start = self.pos;
        let end = value_end(self.bytes, start);
        let after = skip_ws(self.bytes, end);
        if self.bytes.get(after) == Some(&b',') {
            self.pos = skip_ws(self.bytes, after + 1);
        } else {
            self.done = true;
        }
        Some((start, end))
    }
}

/// 1-based line numbers of byte offsets asked for in increasing order: O(n) over all calls.
#[derive(Debug)]
struct LineCounter<'a> {
    bytes: &'a [u8],
    pos: usize,
    line: usize,
}

impl<'a> LineCounter<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0, line: 1 }
    }

    /// The line of `offset`; an offset before the last one asked gives the last one's line.
    fn line_at(&mut self, offset: usize) -> usize {
        let offset = offset.min(self.bytes.len());
        if offset > self.pos {
            self.line += self.bytes[self.pos..offset].iter().filter(|&&b| b == b'\n').count();
            self.pos = offset;
        }
        self.line
    }

    /// The line where `span` starts; without a span, the line of the last offset asked.
    fn line_of(&mut self, span: Option<(usize, usize)>) -> usize {
        match span {
            Some((start, _)) => self.line_at(start),
            None => self.line,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0x8589427373D6D84E98730D7795D8f6f8731FDA16";
    const B: &str = "0xd90e2f925DA726b50C4Ed8D0Fb90Ad053324F31b";
    const C: &str = "0x722122dF12D4e14e13Ac3b6895a86e84145b6967";
    const ZERO: &str = "0x0000000000000000000000000000000000000000";

    fn bytes(address: &str) -> [u8; 20] {
        let mut out = [0; 20];
        hex::decode_to_slice(&address[2..], &mut out).unwrap();
        out
    }

    fn lines_of(bad: &[BadEntry]) -> Vec<usize> {
        bad.iter().map(|b| b.line).collect()
    }

    /// The n-th (from 1) generated address, lower case.
    fn generated(n: usize) -> String {
        format!("0x{n:040x}")
    }

    #[test]
    fn plain_with_comments_blank_lines_and_trailing_comments() {
        let input = format!(
            "# OFAC SDN, ETH\n\n{A}\n   {B}   # Tornado Cash\n\t\n# another comment\n{C}\t# tab comment\n"
        );
        let parsed = parse(&input, Format::Plain, None).unwrap();
        assert_eq!(parsed.format, Format::Plain);
        assert_eq!(parsed.addresses, vec![bytes(A), bytes(B), bytes(C)]);
        assert_eq!(parsed.entries, 3);
        assert_eq!(parsed.duplicates, 0);
        assert!(parsed.bad.is_empty(), "{:?}", parsed.bad);
    }

    #[test]
    fn plain_duplicates_in_other_case_are_counted_once() {
        let input = format!(
            "{A}\n{}\n{B}\n{}\n0X{}\n{A}\n",
            A.to_lowercase(),
            B.to_uppercase().replacen("0X", "0x", 1),
            &A[2..]
        );
        let parsed = parse(&input, Format::Plain, None).unwrap();
        assert_eq!(parsed.addresses, vec![bytes(A), bytes(B)]);
        assert_eq!(parsed.entries, 6);
        assert_eq!(parsed.duplicates, 4);
        assert!(parsed.bad.is_empty());
    }

    #[test]
    fn plain_bad_lines_have_line_numbers_and_reasons() {
        let input = format!(
            "{A}\n\
             # comment\n\
             0x1234\n\
             {ZERO}\n\
             \n\
             bc1qa5wkgaew2dkv56kfvj49j0av5nml45x9ek9hz6\n\
             TN3W4H6rK2ce4vX9YnFQHwKENnHjoxb3m9\n\
             {}\n\
             0x8589427373D6D84E98730D7795D8f6f8731FDA1G\n\
             {B} trailing words\n\
             {C}#no-space-comment\n\
             1FzWLkAahHooV3kzTgyx6qsswXJ6sCXkSR\n\
             hello\n",
            &A[2..]
        );
        let parsed = parse(&input, Format::Plain, None).unwrap();
        assert_eq!(parsed.addresses, vec![bytes(A)]);
        assert_eq!(parsed.entries, 11);
        assert_eq!(parsed.duplicates, 0);
        assert_eq!(lines_of(&parsed.bad), vec![3, 4, 6, 7, 8, 9, 10, 11, 12, 13]);
        let reasons: Vec<&str> = parsed.bad.iter().map(|b| b.reason.as_str()).collect();
        assert_eq!(
            reasons,
            vec![
                "not an EVM address (0x + 40 hex digits): 4 hex digits",
                "the zero address",
                "not an EVM address (looks like a Bitcoin address)",
                "not an EVM address (looks like a Tron address)",
                "not an EVM address (0x + 40 hex digits): missing the 0x prefix",
                "not an EVM address (0x + 40 hex digits): non-hex character 'G'",
                "not an EVM address (0x + 40 hex digits): contains whitespace",
                "not an EVM address (0x + 40 hex digits): non-hex character '#'",
                "not an EVM address (looks like a Bitcoin address)",
                "not an EVM address (0x + 40 hex digits)",
            ]
        );
        assert_eq!(parsed.bad[0].text, "0x1234");
        assert_eq!(parsed.bad[1].text, ZERO);
        assert_eq!(parsed.bad[6].text, format!("{B} trailing words"));
        assert!(parsed
            .bad
            .iter()
            .all(|b| b.reason.starts_with("not an EVM address") || b.reason == "the zero address"));
    }

    #[test]
    fn bad_text_is_clipped_to_80_chars() {
        let long = "é".repeat(200);
        let parsed = parse(&format!("{long}\n{A}\n"), Format::Plain, None).unwrap();
        assert_eq!(parsed.bad.len(), 1);
        assert_eq!(parsed.bad[0].text.chars().count(), 80);
        assert_eq!(parsed.bad[0].text, "é".repeat(80));
        assert_eq!(parsed.addresses, vec![bytes(A)]);
    }

    #[test]
    fn crlf_line_endings() {
        let plain = format!("# list\r\n{A}\r\n\r\n{B}  # note\r\nnope\r\n");
        let parsed = parse(&plain, Format::Auto, None).unwrap();
        assert_eq!(parsed.format, Format::Plain);
        assert_eq!(parsed.addresses, vec![bytes(A), bytes(B)]);
        assert_eq!(parsed.entries, 3);
        assert_eq!(lines_of(&parsed.bad), vec![5]);
        assert_eq!(parsed.bad[0].text, "nope");

        let csv = format!("name,address\r\nx,{A}\r\ny,{B}\r\nz,bad\r\n");
        let parsed = parse(&csv, Format::Auto, None).unwrap();
        assert_eq!(parsed.format, Format::Csv);
        assert_eq!(parsed.addresses, vec![bytes(A), bytes(B)]);
        assert_eq!(lines_of(&parsed.bad), vec![4]);
        assert_eq!(parsed.bad[0].text, "bad");

        let json = format!("[\r\n  \"{A}\",\r\n  \"oops\"\r\n]\r\n");
        let parsed = parse(&json, Format::Auto, None).unwrap();
        assert_eq!(parsed.format, Format::Json);
        assert_eq!(parsed.addresses, vec![bytes(A)]);
        assert_eq!(lines_of(&parsed.bad), vec![3]);
    }

    #[test]
    fn utf8_bom_is_stripped() {
        let parsed = parse(&format!("\u{feff}{A}\n{B}\n"), Format::Auto, None).unwrap();
        assert_eq!(parsed.format, Format::Plain);
        assert_eq!(parsed.addresses, vec![bytes(A), bytes(B)]);
        assert!(parsed.bad.is_empty());

        let parsed = parse(&format!("\u{feff}Address,Name\n{A},x\n"), Format::Auto, None).unwrap();
        assert_eq!(parsed.format, Format::Csv);
        assert_eq!(parsed.addresses, vec![bytes(A)]);

        let parsed = parse(&format!("\u{feff}[\"{A}\"]"), Format::Auto, None).unwrap();
        assert_eq!(parsed.format, Format::Json);
        assert_eq!(parsed.addresses, vec![bytes(A)]);
    }

    #[test]
    fn empty_input_is_an_error() {
        for input in ["", "   \n\t\r\n", "\u{feff}", "\u{feff}\n\n"] {
            for format in [Format::Auto, Format::Plain, Format::Csv, Format::Json] {
                assert!(
                    matches!(parse(input, format, None), Err(ImportError::Empty)),
                    "{input:?} {format:?}"
                );
            }
        }
        assert_eq!(ImportError::Empty.to_string(), "the file is empty");
    }

    #[test]
    fn comments_only_is_not_an_error() {
        let parsed = parse("# nothing yet\n\n# really\n", Format::Auto, None).unwrap();
        assert_eq!(parsed.format, Format::Plain);
        assert_eq!(parsed.entries, 0);
        assert!(parsed.addresses.is_empty());
        assert!(parsed.bad.is_empty());
    }

    #[test]
    fn csv_with_quoted_fields() {
        let input = format!(
            "id,\"Name, full\",Address,note\n\
             1,\"Lazarus, \"\"Group\"\"\",{A},x\n\
             2,plain,\"{B}\",\"a, b\"\n\
             \n\
             3,\"quoted \"\"\",\" {C} \",\n\
             4,\"a,b,c\",{ZERO},\n\
             5,x,\"0xnot, an address\",y\n"
        );
        let parsed = parse(&input, Format::Csv, None).unwrap();
        assert_eq!(parsed.format, Format::Csv);
        assert_eq!(parsed.addresses, vec![bytes(A), bytes(B), bytes(C)]);
        assert_eq!(parsed.entries, 5);
        assert_eq!(lines_of(&parsed.bad), vec![6, 7]);
        assert_eq!(parsed.bad[0].reason, "the zero address");
        assert_eq!(parsed.bad[1].text, "0xnot, an address");
    }

    /// Malformed CSV as people export it: every fault stays on its own line, reported there, and
    /// no address elsewhere in the file is lost (the reasons `CsvFields` is not the `csv` crate).
    #[test]
    fn malformed_csv_loses_no_address_silently() {
        // An unclosed quote: that line is bad, the following lines still count.
        let p = parse(
            &format!("name,address\n\"Lazarus,{A}\nFoo,{B}\n\"Bar\",{C}\n"),
            Format::Csv,
            None,
        )
        .unwrap();
        assert_eq!(p.addresses, vec![bytes(B), bytes(C)]);
        assert_eq!(lines_of(&p.bad), vec![2]);
        let p = parse(&format!("address\n\"{A}\n{B}\n"), Format::Csv, None).unwrap();
        assert_eq!(p.addresses, vec![bytes(A), bytes(B)]);
        // Bare CR line ends: never an empty, clean result (that would empty a --replace list).
        let p = parse(&format!("address\r{A}\r{B}\r"), Format::Auto, None).unwrap();
        assert!(p.addresses.len() == 2 || !p.bad.is_empty(), "{p:?}");
        // Blanks before an opening quote with a separator inside.
        let p = parse(&format!("name,address\n  \"Doe, John\",{A}\n"), Format::Csv, None).unwrap();
        assert_eq!(p.addresses, vec![bytes(A)]);
        assert!(p.bad.is_empty());
        // A whitespace-only line in a tab-separated file is blank, not a bad entry.
        let p = parse(&format!("name\taddress\n\t\nx\t{A}\n"), Format::Csv, None).unwrap();
        assert_eq!(p.addresses, vec![bytes(A)]);
        assert!(p.bad.is_empty(), "{:?}", p.bad);
    }

    #[test]
    fn csv_field_splitting() {
        let fields = |line: &str, sep: u8| -> Vec<String> {
            CsvFields::new(line, sep).map(Cow::into_owned).collect()
        };
        assert_eq!(fields("a,b,,c,", b','), vec!["a", "b", "", "c", ""]);
        assert_eq!(fields("\"a,b\",\"c\"\"d\",e", b','), vec!["a,b", "c\"d", "e"]);
        assert_eq!(fields(" \"x\" ,y", b','), vec!["x", "y"]);
        assert_eq!(fields("\"\"\"\"", b','), vec!["\""]);
        assert_eq!(fields("\"unclosed,still", b','), vec!["unclosed,still"]);
        assert_eq!(fields("a\tb\t\"c\td\"", b'\t'), vec!["a", "b", "c\td"]);
        assert_eq!(fields("", b','), vec![""]);
        assert_eq!(fields("\"ab\"cd,e", b','), vec!["abcd", "e"]);
    }

    #[test]
    fn csv_header_picks_first_known_column() {
        // `wallet` comes before `address` in the header, so it wins.
        let input = format!("Wallet;ADDRESS\n{A};{B}\n");
        let parsed = parse(&input, Format::Csv, None).unwrap();
        assert_eq!(parsed.addresses, vec![bytes(A)]);
        for name in ADDRESS_COLUMNS {
            let input = format!("x,{}\n1,{A}\n", name.to_uppercase());
            let parsed = parse(&input, Format::Csv, None).unwrap();
            assert_eq!(parsed.addresses, vec![bytes(A)], "{name}");
        }
    }

    #[test]
    fn csv_semicolon_and_tab_separators() {
        let input = format!("name;digital_currency_address;note\nx;{A};a,b\ny;{B};\n");
        let parsed = parse(&input, Format::Auto, None).unwrap();
        assert_eq!(parsed.format, Format::Csv);
        assert_eq!(parsed.addresses, vec![bytes(A), bytes(B)]);
        assert!(parsed.bad.is_empty());

        let input = format!("name\taddr\nx\t{A}\ny\t{B}\n\t{C}\n");
        let parsed = parse(&input, Format::Auto, None).unwrap();
        assert_eq!(parsed.format, Format::Csv);
        assert_eq!(parsed.addresses, vec![bytes(A), bytes(B), bytes(C)]);
    }

    #[test]
    fn csv_rows_with_too_few_columns_are_bad() {
        let input = format!("name,note,address\nx,y,{A}\nonly-two,{B}\nlonely\n,,{C}\nx,y,\n");
        let parsed = parse(&input, Format::Csv, None).unwrap();
        assert_eq!(parsed.addresses, vec![bytes(A), bytes(C)]);
        assert_eq!(parsed.entries, 5);
        assert_eq!(lines_of(&parsed.bad), vec![3, 4, 6]);
        assert_eq!(parsed.bad[0].reason, "row has 2 column(s); the address column is column 3");
        assert_eq!(parsed.bad[0].text, format!("only-two,{B}"));
        assert_eq!(parsed.bad[1].reason, "row has 1 column(s); the address column is column 3");
        assert_eq!(parsed.bad[2].reason, "empty");
    }

    #[test]
    fn csv_without_address_column_lists_headers() {
        let input = format!("id,\"Full name\",eth\n1,x,{A}\n");
        let err = parse(&input, Format::Csv, None).unwrap_err();
        match &err {
            ImportError::NoAddressColumn { wanted, found } => {
                assert_eq!(found, &vec!["id".to_owned(), "Full name".into(), "eth".into()]);
                assert!(wanted.contains("\"address\""), "{wanted}");
                assert!(wanted.contains("\"digital_currency_address\""), "{wanted}");
            }
            other => panic!("{other:?}"),
        }
        let message = err.to_string();
        assert!(message.contains("columns found: \"id\", \"Full name\", \"eth\""), "{message}");

        // Auto does not take it for CSV: it is plain, and every line is bad.
        let parsed = parse(&input, Format::Auto, None).unwrap();
        assert_eq!(parsed.format, Format::Plain);
        assert_eq!(parsed.entries, 2);
        assert_eq!(lines_of(&parsed.bad), vec![1, 2]);

        // A named column that is absent.
        let err = parse(&input, Format::Csv, Some("wallet")).unwrap_err();
        assert!(
            matches!(&err, ImportError::NoAddressColumn { wanted, found }
                if wanted == "\"wallet\"" && found.len() == 3),
            "{err:?}"
        );

        // Only comments and blank lines: no header at all.
        let err = parse("# x\n\n", Format::Csv, None).unwrap_err();
        assert!(
            matches!(&err, ImportError::NoAddressColumn { found, .. } if found.is_empty()),
            "{err:?}"
        );
        assert!(err.to_string().ends_with("columns found: (none)"), "{err}");
    }

    #[test]
    fn csv_column_override() {
        let input = format!("address,eth\nnot-this,{A}\nnor-this,{B}\n");
        let parsed = parse(&input, Format::Csv, Some("ETH")).unwrap();
        assert_eq!(parsed.addresses, vec![bytes(A), bytes(B)]);
        assert!(parsed.bad.is_empty());

        // Auto detects CSV through the named column too.
        let input = format!("id,Eth\n1,{A}\n");
        let parsed = parse(&input, Format::Auto, Some("eth")).unwrap();
        assert_eq!(parsed.format, Format::Csv);
        assert_eq!(parsed.addresses, vec![bytes(A)]);

        // Without it, the default column is used.
        let input = format!("address,eth\n{C},{A}\n");
        let parsed = parse(&input, Format::Csv, None).unwrap();
        assert_eq!(parsed.addresses, vec![bytes(C)]);
    }

    #[test]
    fn csv_comments_before_header_are_skipped() {
        let input = format!("# exported 2024-01-01\n\naddress\n{A}\n\n{B}\n");
        let parsed = parse(&input, Format::Auto, None).unwrap();
        assert_eq!(parsed.format, Format::Csv);
        assert_eq!(parsed.addresses, vec![bytes(A), bytes(B)]);
        assert_eq!(parsed.entries, 2);
        assert!(parsed.bad.is_empty());
    }

    #[test]
    fn json_array_of_strings_with_line_numbers() {
        // The shape of sanctioned_addresses_ETH.json.
        let input = format!(
            "[\n  \"{A}\",\n  \"{}\",\n  \"0xdeadbeef\",\n  \"{B}\",\n  \"{ZERO}\",\n  42,\n  null,\n  \"  {C}  \",\n  \"T{}\"\n]\n",
            A.to_uppercase().replacen("0X", "0x", 1),
            "9".repeat(33)
        );
        let parsed = parse(&input, Format::Json, None).unwrap();
        assert_eq!(parsed.format, Format::Json);
        assert_eq!(parsed.addresses, vec![bytes(A), bytes(B), bytes(C)]);
        assert_eq!(parsed.entries, 9);
        assert_eq!(parsed.duplicates, 1);
        assert_eq!(lines_of(&parsed.bad), vec![4, 6, 7, 8, 10]);
        assert_eq!(parsed.bad[0].text, "0xdeadbeef");
        assert_eq!(parsed.bad[1].reason, "the zero address");
        assert_eq!(parsed.bad[2].reason, "not a string but a number");
        assert_eq!(parsed.bad[2].text, "42");
        assert_eq!(parsed.bad[3].reason, "not a string but a null");
        assert_eq!(parsed.bad[3].text, "null");
    }

    #[test]
    fn json_line_numbers_survive_tricky_strings() {
        // Escapes, brackets and commas inside strings, several entries on one line.
        let input = format!(
            "[\"{A}\", \"x]\\\",{{\",\n\"\\u0030x12\", [\"{B}\", \"]\"],\n\n  \"\\u0030x{}\", {{\"a\": \"}}\"}},\n\"bad\"]",
            &C[2..]
        );
        let parsed = parse(&input, Format::Auto, None).unwrap();
        assert_eq!(parsed.format, Format::Json);
        assert_eq!(parsed.addresses, vec![bytes(A), bytes(C)]);
        assert_eq!(parsed.entries, 7);
        assert_eq!(lines_of(&parsed.bad), vec![1, 2, 2, 4, 5]);
        assert_eq!(parsed.bad[0].text, "x]\",{");
        assert_eq!(parsed.bad[1].text, "0x12");
        assert_eq!(parsed.bad[2].text, format!("[\"{B}\", \"]\"]"));
        assert_eq!(parsed.bad[3].text, "{\"a\": \"}\"}");
        assert_eq!(parsed.bad[4].text, "bad");
    }

    #[test]
    fn json_object_with_addresses() {
        let input = format!(
            "{{\n  \"source\": \"OFAC [SDN]\",\n  \"updated\": {{\"at\": \"2024\"}},\n  \"Addresses\": [\n    \"{A}\",\n    \"nope\"\n  ]\n}}"
        );
        let parsed = parse(&input, Format::Auto, None).unwrap();
        assert_eq!(parsed.format, Format::Json);
        assert_eq!(parsed.addresses, vec![bytes(A)]);
        assert_eq!(lines_of(&parsed.bad), vec![6]);

        // `column` names the key; `addresses` is the fallback.
        let input = format!("{{\"addresses\": [\"{A}\"], \"eth\": [\"{B}\", \"{C}\"]}}");
        let parsed = parse(&input, Format::Json, Some("ETH")).unwrap();
        assert_eq!(parsed.addresses, vec![bytes(B), bytes(C)]);
        let parsed = parse(&input, Format::Json, Some("btc")).unwrap();
        assert_eq!(parsed.addresses, vec![bytes(A)]);
        let parsed = parse(&input, Format::Json, None).unwrap();
        assert_eq!(parsed.addresses, vec![bytes(A)]);

        // Holding an array of objects.
        let input =
            format!("{{\"addresses\": [\n{{\"address\": \"{A}\"}},\n{{\"address\": \"0x0\"}}\n]}}");
        let parsed = parse(&input, Format::Json, None).unwrap();
        assert_eq!(parsed.addresses, vec![bytes(A)]);
        assert_eq!(lines_of(&parsed.bad), vec![3]);

        // Duplicate keys: serde_json keeps the last, and so do the line numbers.
        let input = format!("{{\"addresses\": [\"x\"],\n\"addresses\": [\n\"{A}\", \"y\"]}}");
        let parsed = parse(&input, Format::Json, None).unwrap();
        assert_eq!(parsed.addresses, vec![bytes(A)]);
        assert_eq!(lines_of(&parsed.bad), vec![3]);
        assert_eq!(parsed.bad[0].text, "y");
    }

    #[test]
    fn json_array_of_objects() {
        let input = format!(
            "[\n  {{\"name\": \"Tornado\", \"Wallet_Address\": \"{A}\"}},\n  {{\"name\": \"x\",\n   \"wallet_address\": \"0xnope\"}},\n  {{\"name\": \"no field\"}},\n  \"{B}\",\n  {{\"wallet_address\": 7}},\n  {{\"note\": \"{C}\", \"wallet_address\": \"{}\"}}\n]",
            C.to_lowercase()
        );
        let parsed = parse(&input, Format::Json, None).unwrap();
        assert_eq!(parsed.addresses, vec![bytes(A), bytes(C)]);
        assert_eq!(parsed.entries, 6);
        assert_eq!(lines_of(&parsed.bad), vec![4, 5, 6, 7]);
        let reasons: Vec<&str> = parsed.bad.iter().map(|b| b.reason.as_str()).collect();
        assert_eq!(
            reasons,
            vec![
                "not an EVM address (0x + 40 hex digits): non-hex character 'n'",
                "no address field",
                "not an object but a string",
                "address field is a number, not a string",
            ]
        );
        assert_eq!(parsed.bad[1].text, "{\"name\": \"no field\"}");
        assert_eq!(parsed.bad[2].text, format!("\"{B}\""));
        assert_eq!(parsed.bad[3].text, "7");

        // `column` picks the field.
        let input = format!("[{{\"address\": \"{A}\", \"ETH\": \"{B}\"}}]");
        let parsed = parse(&input, Format::Json, Some("eth")).unwrap();
        assert_eq!(parsed.addresses, vec![bytes(B)]);
    }

    #[test]
    fn json_objects_without_address_field() {
        let input = format!("[{{\"id\": 1, \"eth\": \"{A}\"}}]");
        let err = parse(&input, Format::Json, None).unwrap_err();
        assert!(
            matches!(&err, ImportError::NoAddressField { found, .. }
                if found == &vec!["id".to_owned(), "eth".to_owned()]),
            "{err:?}"
        );
        assert!(err.to_string().contains("\"id\", \"eth\""), "{err}");
        let parsed = parse(&input, Format::Json, Some("Eth")).unwrap();
        assert_eq!(parsed.addresses, vec![bytes(A)]);
    }

    #[test]
    fn invalid_json_reports_line_and_column() {
        let input = format!("[\n  \"{A}\",\n  \"{B}\"\n  \"{C}\"\n]");
        let err = parse(&input, Format::Auto, None).unwrap_err();
        match &err {
            ImportError::InvalidJson { line, column, message } => {
                assert_eq!((*line, *column), (4, 3));
                assert_eq!(message, "expected `,` or `]`");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(err.to_string(), "invalid JSON at line 4, column 3: expected `,` or `]`");

        let err = parse("[\"0x\"", Format::Json, None).unwrap_err();
        assert!(matches!(err, ImportError::InvalidJson { line: 1, .. }), "{err:?}");
        // Plain text forced to JSON.
        let err = parse(&format!("{A}\n"), Format::Json, None).unwrap_err();
        assert!(matches!(err, ImportError::InvalidJson { .. }), "{err:?}");
    }

    #[test]
    fn json_of_other_shapes_is_an_error() {
        for (input, expected) in [
            ("\"0xabc\"", "a string at the top level"),
            ("42", "a number at the top level"),
            ("{\"data\": []}", "an object without a key \"addresses\" (keys: \"data\")"),
            ("{\"addresses\": \"0xabc\"}", "\"addresses\" holds a string, not an array"),
        ] {
            match parse(input, Format::Json, None) {
                Err(ImportError::UnrecognisedShape(what)) => assert_eq!(what, expected),
                other => panic!("{input}: {other:?}"),
            }
        }
        let err = parse("{}", Format::Auto, Some("eth")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("unrecognised JSON: an object without a key \"eth\" or \"addresses\""),
            "{err}"
        );
        // An empty array is fine, just empty.
        let parsed = parse(" [ ] ", Format::Auto, None).unwrap();
        assert_eq!(parsed.format, Format::Json);
        assert_eq!(parsed.entries, 0);
    }

    #[test]
    fn auto_detection() {
        let detect_of = |input: &str| parse(input, Format::Auto, None).unwrap().format;
        assert_eq!(detect_of(&format!("  \n[\"{A}\"]")), Format::Json);
        assert_eq!(detect_of(&format!("{{\"addresses\": [\"{A}\"]}}")), Format::Json);
        assert_eq!(detect_of(&format!("{A}\n{B}\n")), Format::Plain);
        assert_eq!(detect_of(&format!("# c, with; commas\n{A}\n")), Format::Plain);
        assert_eq!(detect_of(&format!("id,address\n1,{A}\n")), Format::Csv);
        assert_eq!(detect_of(&format!("\"id\",\"ADDR\"\n1,{A}\n")), Format::Csv);
        assert_eq!(detect_of(&format!("id;wallet\n1;{A}\n")), Format::Csv);
        assert_eq!(detect_of(&format!("id\tWallet_Address\n1\t{A}\n")), Format::Csv);
        // A single-column header is CSV too.
        assert_eq!(detect_of(&format!("Address\n{A}\n")), Format::Csv);
        // Separators but no known column name: plain (every such line is then bad).
        assert_eq!(detect_of(&format!("{A},{B}\n")), Format::Plain);
        assert_eq!(detect_of("id,name\n1,x\n"), Format::Plain);

        let parsed = parse(&format!("Address\n{A}\n"), Format::Auto, None).unwrap();
        assert_eq!(parsed.addresses, vec![bytes(A)]);
        assert_eq!(parsed.entries, 1);
        assert!(parsed.bad.is_empty());
    }

    #[test]
    fn zero_address_in_every_format() {
        let cases = [
            (format!("{ZERO}\n{A}\n"), Format::Plain, 1),
            (format!("address\n{A}\n{ZERO}\n"), Format::Csv, 3),
            (format!("[\"{A}\",\n\"{}\"]", ZERO.to_uppercase()), Format::Json, 2),
        ];
        for (input, format, line) in cases {
            let parsed = parse(&input, Format::Auto, None).unwrap();
            assert_eq!(parsed.format, format);
            assert_eq!(parsed.addresses, vec![bytes(A)]);
            assert_eq!(parsed.bad.len(), 1);
            assert_eq!(parsed.bad[0].reason, "the zero address");
            assert_eq!(parsed.bad[0].line, line);
        }
    }

    #[test]
    fn address_checks() {
        assert_eq!(check_address(A), Ok(bytes(A)));
        assert_eq!(check_address(&A.to_lowercase()), Ok(bytes(A)));
        assert_eq!(check_address(&format!("0X{}", &A[2..])), Ok(bytes(A)));
        assert_eq!(
            check_address("0x0000000000000000000000000000000000000001"),
            Ok({
                let mut one = [0; 20];
                one[19] = 1;
                one
            })
        );
        assert_eq!(check_address(ZERO).unwrap_err(), "the zero address");
        assert_eq!(check_address("").unwrap_err(), "empty");
        assert_eq!(
            check_address(&format!("{A}0")).unwrap_err(),
            "not an EVM address (0x + 40 hex digits): 41 hex digits"
        );
        assert_eq!(
            check_address(&format!("1x{}", &A[2..])).unwrap_err(),
            "not an EVM address (0x + 40 hex digits)"
        );
        assert_eq!(
            check_address("0x").unwrap_err(),
            "not an EVM address (0x + 40 hex digits): 0 hex digits"
        );
    }

    #[test]
    fn hundred_thousand_generated_lines() {
        let mut input = String::from("# generated\n");
        for n in 1..=100_000 {
            input.push_str(&generated(n));
            input.push('\n');
            if n % 1000 == 0 {
                // A duplicate in upper case, a bad line and a blank line.
                input.push_str(&generated(n / 2).to_uppercase().replacen("0X", "0x", 1));
                input.push_str("\nnot-an-address\n\n");
            }
        }
        let parsed = parse(&input, Format::Auto, None).unwrap();
        assert_eq!(parsed.format, Format::Plain);
        assert_eq!(parsed.addresses.len(), 100_000);
        assert_eq!(parsed.duplicates, 100);
        assert_eq!(parsed.bad.len(), 100);
        assert_eq!(parsed.entries, 100_200);
        assert_eq!(parsed.addresses[0], bytes(&generated(1)));
        assert_eq!(parsed.addresses[99_999], bytes(&generated(100_000)));
        // Line 1 is the comment; entry n is on line n + 1 + 3 * (n / 1000) before its block.
        assert_eq!(parsed.bad[0].line, 1 + 1000 + 2);
        assert_eq!(parsed.bad[1].line, 1 + 2000 + 3 + 2);
        assert_eq!(parsed.bad[99].line, 1 + 100_000 + 3 * 99 + 2);

        // The same addresses as JSON.
        let json = format!(
            "[\n{}\n]",
            (1..=100_000)
                .map(|n| format!("  \"{}\"", generated(n)))
                .collect::<Vec<_>>()
                .join(",\n")
        );
        let parsed = parse(&json, Format::Auto, None).unwrap();
        assert_eq!(parsed.format, Format::Json);
        assert_eq!(parsed.addresses.len(), 100_000);
        assert_eq!(parsed.entries, 100_000);
        assert!(parsed.bad.is_empty());
    }
}
