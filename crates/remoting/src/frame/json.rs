//! The JSON header codec (reference §1.1): a single-pass decoder over the header bytes and a writer that puts
//! the header straight into the output buffer. This is the hottest code on a produce path (one header per
//! message), so neither side goes through a generic serialiser or an intermediate map.
//!
//! The decoder accepts exactly what the serde_json-based decoder it replaced accepted (the differential
//! property tests in `tests.rs` hold it to that reference):
//!
//! - `code`, `version`, `opaque`, `flag`: a JSON integer, an integral float, or a string holding an integer
//!   (trimmed); values in `i32::MAX+1 ..= u32::MAX` wrap, because some clients treat `opaque` as unsigned.
//! - `language`, `remark`, and every `extFields` value: strings unescaped, booleans and numbers as written,
//!   nested arrays and objects as their JSON text; `null` means absent (and removes an earlier `extFields`
//!   entry with the same key; otherwise the last repeated key wins).
//! - Unknown top-level keys are skipped after a syntax check; a repeated known key is an error; at most
//!   [`EXT_FIELDS_MAX`] `extFields` entries. serde's derive also took the header as a 7-element array in field
//!   order, so that form is still accepted.
//! - Strings that are kept must be valid UTF-8 with paired `\u` surrogates; skipped strings are only checked
//!   for syntax, as serde_json did.
//!
//! Allocation: none for the scan; each kept `extFields` key and value is allocated once at its final size
//! (escaped strings are unescaped straight into their `String`); a known `language` name allocates nothing;
//! skipping a nested value allocates only past 64 levels of nesting, one bit per level.

use std::borrow::Cow;
use std::fmt;

use bytes::{Bytes, BytesMut};

use super::{ExtFields, RemotingCommand, SerializeType, EXT_FIELDS_MAX};
use crate::codes::LanguageCode;
use crate::error::{RemotingError, Result};

#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;

// ---------------------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------------------

/// Decodes a JSON header into a command with an empty body.
///
/// # Errors
/// [`RemotingError::HeaderJson`] saying what was wrong and at which byte; [`RemotingError::MissingField`]
/// when `code` is absent or `null`.
pub(super) fn decode(header: &[u8]) -> Result<RemotingCommand> {
    // One validation pass for the common all-UTF-8 header, so kept strings are sliced without re-checking;
    // otherwise (invalid bytes are allowed in skipped values) each kept string is checked on its own.
    let mut parser = Parser { buf: header, utf8: std::str::from_utf8(header).ok(), pos: 0 };
    let h = parser.header().map_err(Fault::into_error)?;
    let code = h.code.flatten().ok_or(RemotingError::MissingField { key: "code", name: "code" })?;
    Ok(RemotingCommand {
        code,
        language: match h.language.flatten() {
            Some(name) => LanguageCode::from_name(&name),
            None => LanguageCode::Other(String::new()),
        },
        version: h.version.flatten().unwrap_or(0),
        opaque: h.opaque.flatten().unwrap_or(0),
        flag: h.flag.flatten().unwrap_or(0),
        remark: h.remark.flatten().map(Cow::into_owned),
        ext_fields: h.ext_fields.flatten().unwrap_or_default(),
        body: Bytes::new(),
        serialize_type: SerializeType::Json,
    })
}

/// Where and how a header failed to parse. Kept small and allocation-free; the message is built only when
/// it becomes a [`RemotingError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fault {
    /// Byte offset in the header.
    at: usize,
    kind: FaultKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FaultKind {
    /// Something else was found (or the input ended) where this was required.
    Expected(&'static str),
    UnterminatedString,
    ControlCharacter,
    InvalidEscape,
    LoneSurrogate,
    InvalidUtf8,
    InvalidNumber,
    DuplicateField(&'static str),
    NotI32(&'static str),
    ExtFieldsNotObject,
    TooManyExtFields,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            FaultKind::Expected(what) => write!(f, "expected {what}")?,
            FaultKind::UnterminatedString => f.write_str("unterminated string")?,
            FaultKind::ControlCharacter => f.write_str("unescaped control character in a string")?,
            FaultKind::InvalidEscape => f.write_str("invalid escape sequence in a string")?,
            FaultKind::LoneSurrogate => f.write_str("unpaired UTF-16 surrogate in a \\u escape")?,
            FaultKind::InvalidUtf8 => f.write_str("invalid UTF-8")?,
            FaultKind::InvalidNumber => f.write_str("invalid number")?,
            FaultKind::DuplicateField(field) => write!(f, "duplicate field `{field}`")?,
            FaultKind::NotI32(field) => write!(f, "`{field}` is not a 32-bit integer or a string holding one")?,
            FaultKind::ExtFieldsNotObject => f.write_str("`extFields` is neither an object nor null")?,
            FaultKind::TooManyExtFields => write!(f, "more than {EXT_FIELDS_MAX} extFields entries")?,
        }
        write!(f, " at byte {}", self.at)
    }
}

impl Fault {
    fn into_error(self) -> RemotingError {
        // `HeaderJson` carries a serde_json error (public API); `custom` is serde's way to make one from text.
        RemotingError::HeaderJson { source: <serde_json::Error as serde::de::Error>::custom(self) }
    }
}

/// The header's fields as parsed. The outer `Option` records that the key was seen (a repeat is an error),
/// the inner one that its value was not `null`.
#[derive(Default)]
struct HeaderIn<'a> {
    code: Option<Option<i32>>,
    language: Option<Option<Cow<'a, str>>>,
    version: Option<Option<i32>>,
    opaque: Option<Option<i32>>,
    flag: Option<Option<i32>>,
    remark: Option<Option<Cow<'a, str>>>,
    ext_fields: Option<Option<ExtFields>>,
}

/// Stores a field's value, refusing a second occurrence.
fn once<T>(slot: &mut Option<T>, value: T, field: &'static str, at: usize) -> std::result::Result<(), Fault> {
    if slot.is_some() {
        return Err(Fault { at, kind: FaultKind::DuplicateField(field) });
    }
    *slot = Some(value);
    Ok(())
}

/// A string's content as it appears between its quotes.
#[derive(Clone, Copy)]
struct RawStr {
    start: usize,
    end: usize,
    /// Contains a backslash escape, so the content must be unescaped rather than borrowed.
    escaped: bool,
}

type Parsed<T> = std::result::Result<T, Fault>;

/// A cursor over the header bytes. Invariant: `pos <= buf.len()`.
struct Parser<'a> {
    buf: &'a [u8],
    /// `buf` as text, when all of it is valid UTF-8.
    utf8: Option<&'a str>,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn fault(&self, kind: FaultKind) -> Fault {
        Fault { at: self.pos, kind }
    }

    /// Skips JSON whitespace and returns the next byte without consuming it.
    #[inline]
    fn skip_ws(&mut self) -> Option<u8> {
        while let Some(&b) = self.buf.get(self.pos) {
            match b {
                b' ' | b'\n' | b'\t' | b'\r' => self.pos += 1,
                _ => return Some(b),
            }
        }
        None
    }

    /// Consumes `byte` after optional whitespace.
    #[inline]
    fn eat(&mut self, byte: u8, what: &'static str) -> Parsed<()> {
        if self.skip_ws() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.fault(FaultKind::Expected(what)))
        }
    }

    /// Consumes `word` (`null`, `true`, `false`) at the cursor.
    fn literal(&mut self, word: &'static str) -> Parsed<()> {
        let end = self.pos + word.len();
        if self.buf.get(self.pos..end) == Some(word.as_bytes()) {
            self.pos = end;
            Ok(())
        } else {
            Err(self.fault(FaultKind::Expected(word)))
        }
    }

    /// The whole header: an object, or the 7-element array form, then only whitespace.
    fn header(&mut self) -> Parsed<HeaderIn<'a>> {
        let h = match self.skip_ws() {
            Some(b'{') => self.header_object()?,
            Some(b'[') => self.header_array()?,
            _ => return Err(self.fault(FaultKind::Expected("a JSON object"))),
        };
        match self.skip_ws() {
            None => Ok(h),
            Some(_) => Err(self.fault(FaultKind::Expected("the end of the header"))),
        }
    }

    fn header_object(&mut self) -> Parsed<HeaderIn<'a>> {
        self.pos += 1;
        let mut h = HeaderIn::default();
        if self.skip_ws() == Some(b'}') {
            self.pos += 1;
            return Ok(h);
        }
        loop {
            self.skip_ws();
            let at = self.pos;
            let key = self.key()?;
            self.eat(b':', "`:` after a header key")?;
            match &*key {
                "code" => once(&mut h.code, self.lenient_i32("code")?, "code", at)?,
                "language" => once(&mut h.language, self.lenient_text()?, "language", at)?,
                "version" => once(&mut h.version, self.lenient_i32("version")?, "version", at)?,
                "opaque" => once(&mut h.opaque, self.lenient_i32("opaque")?, "opaque", at)?,
                "flag" => once(&mut h.flag, self.lenient_i32("flag")?, "flag", at)?,
                "remark" => once(&mut h.remark, self.lenient_text()?, "remark", at)?,
                "extFields" => once(&mut h.ext_fields, self.ext_fields()?, "extFields", at)?,
                _ => self.skip_value()?,
            }
            match self.skip_ws() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(h);
                }
                _ => return Err(self.fault(FaultKind::Expected("`,` or `}` after a header field"))),
            }
        }
    }

    /// `[code, language, version, opaque, flag, remark, extFields]`: exactly seven elements.
    fn header_array(&mut self) -> Parsed<HeaderIn<'a>> {
        const SEPARATOR: &str = "`,` and the next of the 7 header fields";
        self.pos += 1;
        let code = self.lenient_i32("code")?;
        self.eat(b',', SEPARATOR)?;
        let language = self.lenient_text()?;
        self.eat(b',', SEPARATOR)?;
        let version = self.lenient_i32("version")?;
        self.eat(b',', SEPARATOR)?;
        let opaque = self.lenient_i32("opaque")?;
        self.eat(b',', SEPARATOR)?;
        let flag = self.lenient_i32("flag")?;
        self.eat(b',', SEPARATOR)?;
        let remark = self.lenient_text()?;
        self.eat(b',', SEPARATOR)?;
        let ext_fields = self.ext_fields()?;
        self.eat(b']', "`]` after the 7 header fields")?;
        Ok(HeaderIn {
            code: Some(code),
            language: Some(language),
            version: Some(version),
            opaque: Some(opaque),
            flag: Some(flag),
            remark: Some(remark),
            ext_fields: Some(ext_fields),
        })
    }

    /// An object key, decoded.
    fn key(&mut self) -> Parsed<Cow<'a, str>> {
        if self.skip_ws() != Some(b'"') {
            return Err(self.fault(FaultKind::Expected("a string key")));
        }
        self.pos += 1;
        self.string_value()
    }

    /// `extFields`: `null` (absent) or an object of lenient values.
    fn ext_fields(&mut self) -> Parsed<Option<ExtFields>> {
        match self.skip_ws() {
            Some(b'n') => {
                self.literal("null")?;
                return Ok(None);
            }
            Some(b'{') => self.pos += 1,
            _ => return Err(self.fault(FaultKind::ExtFieldsNotObject)),
        }
        let mut map = ExtFields::new();
        if self.skip_ws() == Some(b'}') {
            self.pos += 1;
            return Ok(Some(map));
        }
        let mut entries = 0usize;
        loop {
            let key = self.key()?;
            self.eat(b':', "`:` after an extFields key")?;
            let value = self.lenient_text()?;
            // Counted as read (nulls and repeats too), so the cap bounds the work per header.
            entries += 1;
            if entries > EXT_FIELDS_MAX {
                return Err(self.fault(FaultKind::TooManyExtFields));
            }
            match value {
                Some(value) => {
                    map.insert(key.into_owned(), value.into_owned());
                }
                None => {
                    map.remove(&*key);
                }
            }
            match self.skip_ws() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Some(map));
                }
                _ => return Err(self.fault(FaultKind::Expected("`,` or `}` in extFields"))),
            }
        }
    }

    /// A 32-bit integer given as a number or a string; `None` for `null`.
    fn lenient_i32(&mut self, field: &'static str) -> Parsed<Option<i32>> {
        let next = self.skip_ws();
        let at = self.pos;
        let value = match next {
            Some(b'n') => {
                self.literal("null")?;
                return Ok(None);
            }
            Some(b'"') => {
                self.pos += 1;
                self.string_value()?.trim().parse::<i64>().ok().and_then(wrap_i32)
            }
            Some(b'-' | b'0'..=b'9') => {
                let start = self.pos;
                let integer = self.number()?;
                let token = self.buf.get(start..self.pos).unwrap_or_default();
                if integer {
                    integer_i32(token)
                } else {
                    float_i32(token)
                }
            }
            _ => None,
        };
        value.map(Some).ok_or(Fault { at, kind: FaultKind::NotI32(field) })
    }

    /// A value normalised to text (strings unescaped, other values as written); `None` for `null`.
    fn lenient_text(&mut self) -> Parsed<Option<Cow<'a, str>>> {
        let next = self.skip_ws();
        let start = self.pos;
        match next {
            Some(b'n') => {
                self.literal("null")?;
                return Ok(None);
            }
            Some(b't') => {
                self.literal("true")?;
                return Ok(Some(Cow::Borrowed("true")));
            }
            Some(b'f') => {
                self.literal("false")?;
                return Ok(Some(Cow::Borrowed("false")));
            }
            Some(b'"') => {
                self.pos += 1;
                return self.string_value().map(Some);
            }
            Some(b'-' | b'0'..=b'9') => {
                self.number()?;
            }
            Some(b'[' | b'{') => self.skip_value()?,
            _ => return Err(self.fault(FaultKind::Expected("a JSON value"))),
        }
        // A number or a nested value: its JSON text exactly as written.
        self.slice_str(start, self.pos).map(|text| Some(Cow::Borrowed(text)))
    }

    /// `buf[start..end]` as text. The bounds sit on ASCII delimiters, so they are character boundaries
    /// whenever the slice is valid UTF-8.
    #[inline]
    fn slice_str(&self, start: usize, end: usize) -> Parsed<&'a str> {
        if let Some(text) = self.utf8.and_then(|all| all.get(start..end)) {
            return Ok(text);
        }
        let bytes = self.buf.get(start..end).unwrap_or_default();
        std::str::from_utf8(bytes).map_err(|e| Fault { at: start + e.valid_up_to(), kind: FaultKind::InvalidUtf8 })
    }

    /// A kept string whose opening quote was consumed: borrowed from the header when it has no escapes (the
    /// common case, decided in one scan), else unescaped.
    #[inline]
    fn string_value(&mut self) -> Parsed<Cow<'a, str>> {
        let start = self.pos;
        self.skip_plain_string_bytes();
        if self.buf.get(self.pos) == Some(&b'"') {
            let end = self.pos;
            self.pos += 1;
            return self.slice_str(start, end).map(Cow::Borrowed);
        }
        let raw = self.string_from(start)?;
        self.text(raw)
    }

    /// Scans a string whose opening quote was consumed, checking only its syntax (escapes well formed, no raw
    /// control characters); leaves the cursor after the closing quote.
    fn string(&mut self) -> Parsed<RawStr> {
        self.string_from(self.pos)
    }

    /// [`Parser::string`] for a string whose content starts at `start`, with the cursor somewhere inside it
    /// (on plain content scanned so far).
    fn string_from(&mut self, start: usize) -> Parsed<RawStr> {
        let mut escaped = false;
        loop {
            self.skip_plain_string_bytes();
            match self.buf.get(self.pos) {
                Some(b'"') => {
                    let end = self.pos;
                    self.pos += 1;
                    return Ok(RawStr { start, end, escaped });
                }
                Some(b'\\') => {
                    escaped = true;
                    match self.buf.get(self.pos + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.pos += 2,
                        Some(b'u') if hex4(self.buf, self.pos + 2).is_some() => self.pos += 6,
                        Some(_) => return Err(self.fault(FaultKind::InvalidEscape)),
                        None => return Err(self.fault(FaultKind::UnterminatedString)),
                    }
                }
                Some(_) => return Err(self.fault(FaultKind::ControlCharacter)),
                None => return Err(self.fault(FaultKind::UnterminatedString)),
            }
        }
    }

    /// Advances to the next `"`, `\` or control byte, or to the end.
    #[inline]
    fn skip_plain_string_bytes(&mut self) {
        self.pos += plain_len(self.buf.get(self.pos..).unwrap_or_default());
    }

    /// A scanned string's value: borrowed when it has no escapes, else unescaped into one `String` of at most
    /// the raw length (every escape is longer than what it stands for).
    fn text(&self, raw: RawStr) -> Parsed<Cow<'a, str>> {
        // Escapes are ASCII, so the raw content is valid UTF-8 exactly when the unescaped value is.
        let text = self.slice_str(raw.start, raw.end)?;
        if raw.escaped {
            unescape(text, raw.start).map(Cow::Owned)
        } else {
            Ok(Cow::Borrowed(text))
        }
    }

    /// Scans a number (JSON grammar: no leading zeros, digits after `.` and the exponent). True when it is a
    /// plain integer (no fraction or exponent).
    fn number(&mut self) -> Parsed<bool> {
        if self.buf.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        match self.buf.get(self.pos) {
            Some(b'0') => {
                self.pos += 1;
                if matches!(self.buf.get(self.pos), Some(b'0'..=b'9')) {
                    return Err(self.fault(FaultKind::InvalidNumber));
                }
            }
            Some(b'1'..=b'9') => {
                self.pos += 1;
                self.digits();
            }
            _ => return Err(self.fault(FaultKind::InvalidNumber)),
        }
        let mut integer = true;
        if self.buf.get(self.pos) == Some(&b'.') {
            integer = false;
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.fault(FaultKind::InvalidNumber));
            }
        }
        if matches!(self.buf.get(self.pos), Some(b'e' | b'E')) {
            integer = false;
            self.pos += 1;
            if matches!(self.buf.get(self.pos), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.fault(FaultKind::InvalidNumber));
            }
        }
        Ok(integer)
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.buf.get(self.pos), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// Skips one value of any shape after checking its syntax. Iterative, so nesting costs one bit per level
    /// (heap only beyond 64 levels) rather than stack.
    fn skip_value(&mut self) -> Parsed<()> {
        let mut open = Nesting::default();
        loop {
            match self.skip_ws() {
                Some(b'n') => self.literal("null")?,
                Some(b't') => self.literal("true")?,
                Some(b'f') => self.literal("false")?,
                Some(b'-' | b'0'..=b'9') => {
                    self.number()?;
                }
                Some(b'"') => {
                    self.pos += 1;
                    self.string()?;
                }
                Some(opening @ (b'[' | b'{')) => {
                    self.pos += 1;
                    let object = opening == b'{';
                    if self.skip_ws() == Some(if object { b'}' } else { b']' }) {
                        self.pos += 1;
                    } else {
                        open.push(object);
                        if object {
                            self.skipped_key()?;
                        }
                        continue;
                    }
                }
                _ => return Err(self.fault(FaultKind::Expected("a JSON value"))),
            }
            // A value ended: close containers until one continues after a comma.
            loop {
                let Some(object) = open.innermost() else { return Ok(()) };
                match self.skip_ws() {
                    Some(b',') => {
                        self.pos += 1;
                        if object {
                            self.skipped_key()?;
                        }
                        break;
                    }
                    Some(b']') if !object => {
                        self.pos += 1;
                        open.pop();
                    }
                    Some(b'}') if object => {
                        self.pos += 1;
                        open.pop();
                    }
                    _ => return Err(self.fault(FaultKind::Expected(if object { "`,` or `}`" } else { "`,` or `]`" }))),
                }
            }
        }
    }

    /// A key inside a skipped object, and its colon.
    fn skipped_key(&mut self) -> Parsed<()> {
        if self.skip_ws() != Some(b'"') {
            return Err(self.fault(FaultKind::Expected("a string key")));
        }
        self.pos += 1;
        self.string()?;
        self.eat(b':', "`:` after an object key")
    }
}

/// The containers a skipped value has open, innermost last, one bit each (set for an object): the first 64
/// levels inline, deeper ones in `spill`, so depth is paid for at 1/8 byte per level of input.
#[derive(Default)]
struct Nesting {
    depth: usize,
    inline: u64,
    spill: Vec<u64>,
}

impl Nesting {
    fn push(&mut self, object: bool) {
        let (word, bit) = (self.depth / 64, self.depth % 64);
        let slot = if word == 0 {
            &mut self.inline
        } else {
            if self.spill.len() < word {
                self.spill.push(0);
            }
            match self.spill.get_mut(word - 1) {
                Some(slot) => slot,
                None => return,
            }
        };
        *slot = (*slot & !(1 << bit)) | (u64::from(object) << bit);
        self.depth += 1;
    }

    fn pop(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    /// Whether the innermost open container is an object; `None` when none is open.
    fn innermost(&self) -> Option<bool> {
        let top = self.depth.checked_sub(1)?;
        let (word, bit) = (top / 64, top % 64);
        let bits = if word == 0 { self.inline } else { *self.spill.get(word - 1)? };
        Some(bits >> bit & 1 == 1)
    }
}

/// The four hex digits at `at`, if there are four.
fn hex4(buf: &[u8], at: usize) -> Option<u32> {
    let digits = buf.get(at..at + 4)?;
    digits.iter().try_fold(0u32, |n, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return None,
        };
        Some(n << 4 | u32::from(v))
    })
}

/// Unescapes a string's raw content (already checked for syntax and UTF-8). `base` is its offset in the
/// header, for errors.
fn unescape(raw: &str, base: usize) -> Parsed<String> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    let invalid = |at: usize| Fault { at: base + at, kind: FaultKind::InvalidEscape };
    loop {
        let rest = bytes.get(i..).unwrap_or_default();
        let Some(run) = find_backslash(rest) else {
            out.push_str(raw.get(i..).ok_or(invalid(i))?);
            return Ok(out);
        };
        // Runs end at a backslash (ASCII), so both ends are character boundaries.
        out.push_str(raw.get(i..i + run).ok_or(invalid(i))?);
        let at = i + run;
        let Some(&escape) = bytes.get(at + 1) else { return Err(invalid(at)) };
        i = at + 2;
        let c = match escape {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let lone = Fault { at: base + at, kind: FaultKind::LoneSurrogate };
                let unit = hex4(bytes, i).ok_or(invalid(at))?;
                i += 4;
                let code_point = match unit {
                    0xD800..=0xDBFF => {
                        // A leading surrogate must be followed by an escaped trailing one.
                        if bytes.get(i..i + 2) != Some(b"\\u") {
                            return Err(lone);
                        }
                        let low = hex4(bytes, i + 2).ok_or(invalid(i))?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return Err(lone);
                        }
                        i += 6;
                        0x1_0000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                    }
                    0xDC00..=0xDFFF => return Err(lone),
                    _ => unit,
                };
                char::from_u32(code_point).ok_or(lone)?
            }
            _ => return Err(invalid(at)),
        };
        out.push(c);
    }
}

/// Length of the run at the start of `bytes` that needs no escape in a JSON string: up to the first `"`,
/// `\` or control byte (below 0x20). The decoder's scan and the encoder's escaping share it. Eight bytes per
/// step while eight remain.
#[inline]
fn plain_len(bytes: &[u8]) -> usize {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES << 7;
    let mut chunks = bytes.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let Ok(word) = <[u8; 8]>::try_from(chunk) else { break };
        let w = u64::from_le_bytes(word);
        // High bit set in each byte that is < 0x20, '"' or '\\'. A borrow can only flag bytes above a real
        // match, and the lowest flagged byte is the one taken.
        let control = w.wrapping_sub(ONES * 0x20) & !w;
        let q = w ^ (ONES * u64::from(b'"'));
        let quote = q.wrapping_sub(ONES) & !q;
        let b = w ^ (ONES * u64::from(b'\\'));
        let backslash = b.wrapping_sub(ONES) & !b;
        let hits = (control | quote | backslash) & HIGH;
        if hits != 0 {
            return at + hits.trailing_zeros() as usize / 8;
        }
        at += 8;
    }
    let tail = chunks.remainder();
    at + tail.iter().position(|&b| b < 0x20 || b == b'"' || b == b'\\').unwrap_or(tail.len())
}

/// The first `\` in `bytes`, eight bytes per step (runs between escapes are often dozens of bytes long).
fn find_backslash(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::MAX / 255;
    let mut chunks = bytes.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let Ok(word) = <[u8; 8]>::try_from(chunk) else { break };
        let x = u64::from_le_bytes(word) ^ (ONES * u64::from(b'\\'));
        let hits = x.wrapping_sub(ONES) & !x & (ONES << 7);
        if hits != 0 {
            return Some(at + hits.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    chunks.remainder().iter().position(|&b| b == b'\\').map(|i| at + i)
}

/// Values in `i32::MAX+1 ..= u32::MAX` wrap (unsigned `opaque`); anything else outside `i32` is refused.
fn wrap_i32(v: i64) -> Option<i32> {
    match i32::try_from(v) {
        Ok(x) => Some(x),
        Err(_) => u32::try_from(v).ok().map(|x| x as i32),
    }
}

/// A scanned integer token (`-`? digits) as a lenient 32-bit value.
fn integer_i32(token: &[u8]) -> Option<i32> {
    let (negative, digits) = match token.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, token),
    };
    let mut magnitude: u64 = 0;
    for &d in digits {
        magnitude = magnitude.checked_mul(10)?.checked_add(u64::from(d.wrapping_sub(b'0')))?;
    }
    let magnitude = i64::try_from(magnitude).ok()?;
    wrap_i32(if negative { -magnitude } else { magnitude })
}

/// A scanned number with a fraction or exponent: accepted when integral, like `1e3` or `7.0`. Rare, so it
/// reuses serde_json's float parsing, which keeps rounding identical to the decoder this one replaced.
fn float_i32(token: &[u8]) -> Option<i32> {
    let number: serde_json::Number = std::str::from_utf8(token).ok()?.parse().ok()?;
    if let Some(v) = number.as_i64() {
        return wrap_i32(v);
    }
    let v = number.as_f64()?;
    if v.fract() == 0.0 && v >= i64::MIN as f64 && v <= i64::MAX as f64 {
        wrap_i32(v as i64)
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------------------

/// Where an encoded header goes: a frame buffer or a standalone `Vec`.
pub(super) trait Sink {
    /// Appends `bytes`.
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Sink for BytesMut {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// A size to reserve for `cmd`'s header: exact unless strings need escapes.
pub(super) fn size_hint(cmd: &RemotingCommand) -> usize {
    // Keys, quotes, punctuation and five numbers of up to 11 characters.
    const FIXED: usize = 160;
    let ext: usize = cmd.ext_fields.iter().map(|(k, v)| k.len() + v.len() + 6).sum();
    FIXED + cmd.language.name().len() + cmd.remark.as_ref().map_or(0, String::len) + ext
}

/// Writes `cmd`'s header as JSON: the field order and shape serde_json produced (no whitespace, `remark` and
/// `extFields` omitted when absent or empty, every `extFields` value a string, `serializeTypeCurrentRPC`
/// always present because the mxsm Rust client requires it), with serde_json's escaping.
pub(super) fn write_header<S: Sink>(cmd: &RemotingCommand, out: &mut S) {
    out.put(b"{\"code\":");
    write_i32(out, cmd.code);
    out.put(b",\"language\":");
    write_str(out, cmd.language.name());
    out.put(b",\"version\":");
    write_i32(out, cmd.version);
    out.put(b",\"opaque\":");
    write_i32(out, cmd.opaque);
    out.put(b",\"flag\":");
    write_i32(out, cmd.flag);
    if let Some(remark) = &cmd.remark {
        out.put(b",\"remark\":");
        write_str(out, remark);
    }
    if !cmd.ext_fields.is_empty() {
        out.put(b",\"extFields\":{");
        for (i, (k, v)) in cmd.ext_fields.iter().enumerate() {
            if i > 0 {
                out.put(b",");
            }
            write_str(out, k);
            out.put(b":");
            write_str(out, v);
        }
        out.put(b"}");
    }
    out.put(b",\"serializeTypeCurrentRPC\":");
    write_str(out, SerializeType::Json.json_name());
    out.put(b"}");
}

fn write_i32<S: Sink>(out: &mut S, v: i32) {
    let mut buf = [0u8; 11];
    let mut at = buf.len();
    let mut n = v.unsigned_abs();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    out.put(&buf[at..]);
}

/// The letter after the backslash for each byte [`plain_len`] stops at (`u` for `\u00XX`): serde_json's
/// escapes, so output is byte-identical.
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = b'u';
        b += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0A] = b'n';
    t[0x0C] = b'f';
    t[0x0D] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

fn write_str<S: Sink>(out: &mut S, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.put(b"\"");
    let mut rest = s.as_bytes();
    loop {
        let run = plain_len(rest);
        let (plain, tail) = rest.split_at(run);
        out.put(plain);
        let Some((&b, tail)) = tail.split_first() else { break };
        match ESCAPE[usize::from(b)] {
            b'u' => out.put(&[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xF)]]),
            escape => out.put(&[b'\\', escape]),
        }
        rest = tail;
    }
    out.put(b"\"");
}
