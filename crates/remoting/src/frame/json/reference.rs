//! Test-only reference: the serde_json-based JSON header decoder and encoder that `json.rs` replaced, kept
//! verbatim (apart from paths) so the differential property tests can hold the new codec to its behaviour.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::codes::LanguageCode;
use crate::error::{RemotingError, Result};
use crate::frame::{ExtFields, RemotingCommand, SerializeType, EXT_FIELDS_MAX};

/// The previous `RemotingCommand::encode_json_header`.
pub(super) fn encode_json_header(cmd: &RemotingCommand) -> Result<Vec<u8>> {
    #[derive(Serialize)]
    struct Out<'a> {
        code: i32,
        language: &'a str,
        version: i32,
        opaque: i32,
        flag: i32,
        #[serde(skip_serializing_if = "Option::is_none")]
        remark: Option<&'a str>,
        #[serde(rename = "extFields", skip_serializing_if = "BTreeMap::is_empty")]
        ext_fields: &'a ExtFields,
        // Always present: the mxsm Rust client requires it when it decodes a header.
        #[serde(rename = "serializeTypeCurrentRPC")]
        serialize_type: &'static str,
    }
    let out = Out {
        code: cmd.code,
        language: cmd.language.name(),
        version: cmd.version,
        opaque: cmd.opaque,
        flag: cmd.flag,
        remark: cmd.remark.as_deref(),
        ext_fields: &cmd.ext_fields,
        serialize_type: "JSON",
    };
    serde_json::to_vec(&out).map_err(|e| RemotingError::Unencodable { field: "header", reason: e.to_string() })
}

/// An integer that may arrive as a JSON number or a numeric string. Values in `i32::MAX+1 ..= u32::MAX`
/// wrap, because some clients treat `opaque` as unsigned.
struct LenientI32(i32);

impl<'de> Deserialize<'de> for LenientI32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = LenientI32;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a 32-bit integer or a numeric string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<LenientI32, E> {
                wrap_i32(v).ok_or_else(|| E::custom(format!("integer {v} out of 32-bit range")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<LenientI32, E> {
                i64::try_from(v).ok().and_then(wrap_i32).ok_or_else(|| E::custom(format!("integer {v} out of 32-bit range")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<LenientI32, E> {
                if v.fract() == 0.0 && v >= i64::MIN as f64 && v <= i64::MAX as f64 {
                    self.visit_i64(v as i64)
                } else {
                    Err(E::custom(format!("number {v} is not an integer")))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<LenientI32, E> {
                v.trim().parse::<i64>().ok().and_then(wrap_i32).ok_or_else(|| E::custom("string is not a 32-bit integer"))
            }
        }
        d.deserialize_any(V)
    }
}

fn wrap_i32(v: i64) -> Option<LenientI32> {
    if let Ok(x) = i32::try_from(v) {
        Some(LenientI32(x))
    } else if let Ok(x) = u32::try_from(v) {
        Some(LenientI32(x as i32))
    } else {
        None
    }
}

/// Normalises a raw JSON value to header text: strings unescaped, numbers as written, booleans as
/// `"true"`/`"false"`, nested arrays/objects as their JSON text. `null` becomes `None` (treated as absent,
/// like Java's null map value). Works on the raw slice, so no value allocates more than its own text.
fn normalise_raw(raw: &RawValue) -> std::result::Result<Option<String>, serde_json::Error> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(text).map(Some),
        Some(b'n') => Ok(None),
        Some(b't') => Ok(Some("true".to_owned())),
        Some(b'f') => Ok(Some("false".to_owned())),
        _ => Ok(Some(text.to_owned())),
    }
}

/// A header value normalised to text ([`normalise_raw`]).
struct LenientText(Option<String>);

impl<'de> Deserialize<'de> for LenientText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let raw = <&RawValue>::deserialize(d)?;
        normalise_raw(raw).map(LenientText).map_err(de::Error::custom)
    }
}

/// `extFields` as an object of lenient values, or `null`. On a repeated key the last value wins.
struct LenientExtFields(ExtFields);

impl<'de> Deserialize<'de> for LenientExtFields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LenientExtFields;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object or null")
            }
            fn visit_unit<E: de::Error>(self) -> std::result::Result<LenientExtFields, E> {
                Ok(LenientExtFields(ExtFields::new()))
            }
            fn visit_none<E: de::Error>(self) -> std::result::Result<LenientExtFields, E> {
                Ok(LenientExtFields(ExtFields::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<LenientExtFields, A::Error> {
                let mut out = ExtFields::new();
                let mut entries = 0usize;
                while let Some((k, v)) = map.next_entry::<String, LenientText>()? {
                    entries += 1;
                    if entries > EXT_FIELDS_MAX {
                        return Err(de::Error::custom(format!("more than {EXT_FIELDS_MAX} extFields entries")));
                    }
                    match v.0 {
                        Some(v) => {
                            out.insert(k, v);
                        }
                        None => {
                            out.remove(&k);
                        }
                    }
                }
                Ok(LenientExtFields(out))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct JsonHeaderIn {
    code: Option<LenientI32>,
    language: Option<LenientText>,
    version: Option<LenientI32>,
    opaque: Option<LenientI32>,
    flag: Option<LenientI32>,
    remark: Option<LenientText>,
    #[serde(rename = "extFields")]
    ext_fields: Option<LenientExtFields>,
}

pub(super) fn decode_json_header(header: &[u8]) -> Result<RemotingCommand> {
    let h: JsonHeaderIn = serde_json::from_slice(header).map_err(|source| RemotingError::HeaderJson { source })?;
    let code = h.code.ok_or(RemotingError::MissingField { key: "code", name: "code" })?.0;
    Ok(RemotingCommand {
        code,
        language: h.language.and_then(|l| l.0).map(|l| LanguageCode::from_name(&l)).unwrap_or(LanguageCode::Other(String::new())),
        version: h.version.map_or(0, |v| v.0),
        opaque: h.opaque.map_or(0, |v| v.0),
        flag: h.flag.map_or(0, |v| v.0),
        remark: h.remark.and_then(|r| r.0),
        ext_fields: h.ext_fields.map(|e| e.0).unwrap_or_default(),
        body: Bytes::new(),
        serialize_type: SerializeType::Json,
    })
}
