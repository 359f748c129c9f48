//! Differential tests of the JSON header codec against the serde_json-based reference it replaced
//! (`reference.rs`): generated headers — well formed, lenient, escaped, nested, duplicated, mutated and
//! garbage — must decode to the same command or fail in both, with the same error variant; and encoded
//! headers must be byte-identical.

use proptest::collection::vec;
use proptest::prelude::*;

use super::reference;
use crate::codes::LanguageCode;
use crate::error::RemotingError;
use crate::frame::{ExtFields, RemotingCommand, EXT_FIELDS_MAX};

/// Decodes `input` with both decoders and requires the same outcome.
fn same(input: &[u8]) -> Result<(), TestCaseError> {
    let new = super::decode(input);
    let old = reference::decode_json_header(input);
    let shown = String::from_utf8_lossy(input);
    match (&new, &old) {
        (Ok(a), Ok(b)) => prop_assert_eq!(a, b, "input {}", shown),
        (Err(a), Err(b)) => {
            prop_assert_eq!(std::mem::discriminant(a), std::mem::discriminant(b), "input {}: {} vs reference {}", shown, a, b);
        }
        _ => prop_assert!(false, "input {}: new {:?} vs reference {:?}", shown, new, old),
    }
    Ok(())
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Optional JSON whitespace, mostly none.
fn ws() -> BoxedStrategy<&'static [u8]> {
    prop_oneof![8 => Just(&b""[..]), 1 => Just(&b" "[..]), 1 => Just(&b"\n\t\r "[..])].boxed()
}

/// Numbers a header field could carry: in and around the 32-bit range, integral floats, exponents.
fn number(clean: bool) -> BoxedStrategy<Vec<u8>> {
    let plain = prop_oneof![
        4 => any::<i32>().prop_map(|v| v.to_string()),
        2 => any::<u32>().prop_map(|v| v.to_string()),
        1 => (any::<i32>(), 1usize..4).prop_map(|(v, zeros)| format!("{v}.{}", "0".repeat(zeros))),
        1 => (any::<i16>(), 0i32..6).prop_map(|(m, e)| format!("{m}e{e}")),
    ];
    if clean {
        return plain.prop_map(String::into_bytes).boxed();
    }
    prop_oneof![
        2 => plain,
        1 => any::<i64>().prop_map(|v| v.to_string()),
        1 => any::<u64>().prop_map(|v| v.to_string()),
        1 => any::<f64>().prop_filter("finite", |v| v.is_finite()).prop_map(|v| v.to_string()),
        1 => (any::<i16>(), -4i32..24).prop_map(|(m, e)| format!("{m}e{e}")),
        1 => (any::<i16>(), 0i32..24).prop_map(|(m, e)| format!("{m}.25E+{e}")),
        2 => prop::sample::select(vec![
            "-0", "0", "-0.0", "0e0", "1e400", "-1e400", "4294967295", "4294967296", "-2147483648", "-2147483649",
            "2147483647", "2147483648", "9223372036854775807", "9223372036854775808", "-9223372036854775808",
            "-9223372036854775809", "18446744073709551615", "18446744073709551616", "99999999999999999999999", "01",
            "-", "1.", ".5", "1e", "1e+", "+1", "1.0e0", "4294967295.0", "4294967295.5", "1E2", "0.1e1", "00", "-01",
            "1.5e300", "123456789012345678901234567890e-20", "2147483648.0e0", "-2147483648.0", "1e-400",
        ])
        .prop_map(String::from),
    ]
    .prop_map(String::into_bytes)
    .boxed()
}

/// One piece of string content, as it appears between the quotes. Clean pieces are valid JSON string
/// content (escapes, surrogate pairs, non-ASCII); the others add lone surrogates, bad escapes, raw control
/// characters and invalid UTF-8.
fn string_piece(clean: bool) -> BoxedStrategy<Vec<u8>> {
    let valid = prop_oneof![
        6 => "[a-zA-Z0-9 _%-]{0,8}".prop_map(String::into_bytes),
        2 => prop::sample::select(vec![
            "\\n", "\\\"", "\\\\", "\\/", "\\b\\f\\r\\t", "\\u0001", "\\u0041", "\\u00e9", "\\uFFFF", "\\ud83d\\ude00",
            "\u{7f}", "é", "日本", "\u{2003}", "𝄞", " 42 ", "+7", "-0", "4294967295", "\u{2003}5\u{2003}", "1.0", "0x10",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => (0xD800u16..0xDC00, 0xDC00u16..0xE000).prop_map(|(h, l)| format!("\\u{h:04X}\\u{l:04x}").into_bytes()),
        1 => "\\PC{1,3}".prop_map(String::into_bytes),
    ];
    if clean {
        return valid.boxed();
    }
    prop_oneof![
        4 => valid,
        1 => any::<u16>().prop_map(|u| format!("\\u{u:04x}").into_bytes()),
        1 => prop::sample::select(vec![
            "\\ud800", "\\udc00", "\\ud800\\u0041", "\\ud800x", "\\ud800\\n", "\\ud800\\ud800", "\\x", "\\u12", "\\u12G4", "\\",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::sample::select(vec![&[0x01u8][..], &[0x1F], &[0xFF], &[0xC3], &[0xE6, 0x97], &[0xED, 0xA0, 0x80], &[0x0A]])
            .prop_map(<[u8]>::to_vec),
    ]
    .boxed()
}

fn string(clean: bool) -> BoxedStrategy<Vec<u8>> {
    vec(string_piece(clean), 0..4).prop_map(|pieces| cat(&[b"\"", &pieces.concat(), b"\""])).boxed()
}

/// Object keys: the header's own names (also escaped), likely extFields keys, and arbitrary strings.
fn key(clean: bool) -> BoxedStrategy<Vec<u8>> {
    let names = prop::sample::select(vec![
        "\"code\"",
        "\"language\"",
        "\"version\"",
        "\"opaque\"",
        "\"flag\"",
        "\"remark\"",
        "\"extFields\"",
        "\"serializeTypeCurrentRPC\"",
        "\"c\\u006fde\"",
        "\"ext\\u0046ields\"",
        "\"a\"",
        "\"b\"",
        "\"topic\"",
        "\"\"",
        "\"Code\"",
        "\"code \"",
    ])
    .prop_map(|s| s.as_bytes().to_vec());
    if clean {
        return prop_oneof![3 => names, 1 => string(true)].boxed();
    }
    prop_oneof![
        6 => names,
        3 => string(false),
        1 => prop::sample::select(vec!["code", "'code'", "1", "null", ""]).prop_map(|s| s.as_bytes().to_vec()),
    ]
    .boxed()
}

/// Tokens that break or bend the grammar.
fn garbage() -> BoxedStrategy<Vec<u8>> {
    prop::sample::select(vec![
        &b"nul"[..],
        b"tru",
        b"nulll",
        b"True",
        b"}",
        b"]",
        b",",
        b":",
        b"[",
        b"{",
        b"NaN",
        b"undefined",
        b"'x'",
        b"\xFF",
        b"",
        b"\"unterminated",
        b"[1,]",
        b"{\"a\":1,}",
        b"{\"a\" 1}",
        b"{1:2}",
        b"[1 2]",
        b"\"\x00\"",
    ])
    .prop_map(<[u8]>::to_vec)
    .boxed()
}

/// Any value, nested up to a few levels, with whitespace between tokens.
fn value(clean: bool) -> BoxedStrategy<Vec<u8>> {
    let leaf = prop_oneof![
        2 => Just(b"null".to_vec()),
        1 => Just(b"true".to_vec()),
        1 => Just(b"false".to_vec()),
        3 => number(clean),
        6 => string(clean),
        if clean { 0 } else { 1 } => garbage(),
    ];
    leaf.prop_recursive(3, 24, 4, move |inner| {
        prop_oneof![
            vec((ws(), inner.clone(), ws()), 0..4).prop_map(|items| {
                let items: Vec<Vec<u8>> = items.into_iter().map(|(a, v, b)| cat(&[a, &v, b])).collect();
                cat(&[b"[", &items.join(&b","[..]), b"]"])
            }),
            vec((key(clean), ws(), inner), 0..4).prop_map(|entries| {
                let entries: Vec<Vec<u8>> = entries.into_iter().map(|(k, w, v)| cat(&[&k, w, b":", w, &v])).collect();
                cat(&[b"{", &entries.join(&b", "[..]), b"}"])
            }),
        ]
    })
    .boxed()
}

/// A value for `code`, `version`, `opaque` or `flag`: mostly numbers and numeric strings.
fn int_value(clean: bool) -> BoxedStrategy<Vec<u8>> {
    let ints = prop_oneof![
        6 => number(clean),
        2 => any::<i32>().prop_map(|v| format!("\"{v}\"").into_bytes()),
        1 => prop::sample::select(vec!["\" 7 \"", "\"+7\"", "\"4294967295\"", "\"\\u0037\"", "\"\u{2003}9\"", "\"-0\""])
            .prop_map(|s| s.as_bytes().to_vec()),
        1 => Just(b"null".to_vec()),
    ];
    if clean {
        return ints.boxed();
    }
    prop_oneof![
        3 => ints,
        1 => any::<i64>().prop_map(|v| format!("\"{v}\"").into_bytes()),
        1 => prop::sample::select(vec!["\"x\"", "\"\"", "\"1.0\"", "true", "[]", "{}"]).prop_map(|s| s.as_bytes().to_vec()),
        1 => value(false),
    ]
    .boxed()
}

fn object(entries: Vec<(Vec<u8>, &'static [u8], Vec<u8>)>) -> Vec<u8> {
    let entries: Vec<Vec<u8>> = entries.into_iter().map(|(k, w, v)| cat(&[w, &k, w, b":", w, &v, w])).collect();
    cat(&[b"{", &entries.join(&b","[..]), b"}"])
}

fn ext_fields(clean: bool) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        8 => vec((key(clean), ws(), value(clean)), 0..12).prop_map(object),
        1 => Just(b"null".to_vec()),
        if clean { 0 } else { 1 } => value(false),
    ]
    .boxed()
}

/// One top-level entry: a known field with a fitting value, or any key and value.
fn entry(clean: bool) -> BoxedStrategy<(Vec<u8>, &'static [u8], Vec<u8>)> {
    let named = move |name: &'static str, v: BoxedStrategy<Vec<u8>>| (Just(name.as_bytes().to_vec()), ws(), v);
    prop_oneof![
        named("\"language\"", prop_oneof![3 => Just(b"\"JAVA\"".to_vec()), 1 => Just(b"\"CPP\"".to_vec()), 2 => value(clean)].boxed()),
        named("\"version\"", int_value(clean)),
        named("\"opaque\"", int_value(clean)),
        named("\"flag\"", int_value(clean)),
        named("\"remark\"", value(clean)),
        named("\"extFields\"", ext_fields(clean)),
        named("\"serializeTypeCurrentRPC\"", value(clean)),
        (top_level_key(clean), ws(), value(clean)),
    ]
    .boxed()
}

/// Keys for arbitrary top-level entries; clean ones avoid the header's own names (a repeat is an error).
fn top_level_key(clean: bool) -> BoxedStrategy<Vec<u8>> {
    if !clean {
        return key(false);
    }
    prop_oneof![
        1 => prop::sample::select(vec!["\"x\"", "\"Code\"", "\"code \"", "\"\"", "\"ext\\u0046ield\""]).prop_map(|s| s.as_bytes().to_vec()),
        1 => "\"[a-z]{3,8}\"".prop_map(String::into_bytes),
    ]
    .boxed()
}

/// A header object, usually starting with a code so that most cases get past the missing-code check, and
/// with its other fields in any order (known fields may repeat: an error).
fn header_object(clean: bool) -> BoxedStrategy<Vec<u8>> {
    (prop::option::weighted(0.95, int_value(clean)), vec(entry(clean), 0..7), ws(), ws(), prop::bool::weighted(0.1))
        .prop_map(move |(code, mut entries, lead, trail, repeats)| {
            if clean && !repeats {
                let mut seen = std::collections::HashSet::new();
                entries.retain(|(k, _, _)| seen.insert(k.clone()));
            }
            if let Some(code) = code {
                entries.insert(0, (b"\"code\"".to_vec(), &b""[..], code));
            }
            cat(&[lead, &object(entries), trail])
        })
        .boxed()
}

fn header() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        8 => header_object(true),
        6 => header_object(false),
        // The array form serde's derive accepted, sometimes with the wrong number of elements.
        1 => (
            int_value(true),
            value(true),
            int_value(true),
            int_value(false),
            int_value(true),
            value(false),
            ext_fields(true),
            vec(value(true), 0..2),
            prop::bool::weighted(0.2),
        )
            .prop_map(|(code, language, version, opaque, flag, remark, ext, extra, short)| {
                let mut items = vec![code, language, version, opaque, flag, remark, ext];
                items.extend(extra);
                if short {
                    items.pop();
                }
                cat(&[b"[", &items.join(&b", "[..]), b"]"])
            }),
        1 => value(false),
    ]
    .boxed()
}

/// Headers, some of them mutated or cut, and raw noise.
fn input() -> BoxedStrategy<Vec<u8>> {
    const STRUCTURAL: &[u8] = b"{}[]\":,\\ 0n-\xFFu";
    prop_oneof![
        12 => header(),
        3 => (header(), vec((any::<prop::sample::Index>(), prop::sample::select(STRUCTURAL), any::<u8>(), any::<bool>()), 1..4))
            .prop_map(|(mut h, flips)| {
                for (at, structural, random, use_structural) in flips {
                    if h.is_empty() {
                        break;
                    }
                    let i = at.index(h.len());
                    h[i] = if use_structural { structural } else { random };
                }
                h
            }),
        2 => (header(), any::<prop::sample::Index>()).prop_map(|(h, cut)| {
            let end = cut.index(h.len() + 1);
            h[..end].to_vec()
        }),
        1 => vec(any::<u8>(), 0..64),
    ]
    .boxed()
}

fn language() -> impl Strategy<Value = LanguageCode> {
    prop_oneof![
        Just(LanguageCode::Java),
        Just(LanguageCode::Cpp),
        Just(LanguageCode::Go),
        Just(LanguageCode::Rust),
        any::<String>().prop_map(LanguageCode::Other),
    ]
}

prop_compose! {
    fn command()(
        code in any::<i32>(),
        language in language(),
        version in any::<i32>(),
        opaque in any::<i32>(),
        flag in any::<i32>(),
        remark in prop::option::of(any::<String>()),
        ext_fields in prop::collection::btree_map(any::<String>(), any::<String>(), 0..8),
    ) -> RemotingCommand {
        let mut cmd = RemotingCommand::request(crate::RequestCode(code), opaque);
        cmd.language = language;
        cmd.version = version;
        cmd.flag = flag;
        cmd.remark = remark;
        cmd.ext_fields = ext_fields;
        cmd
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn decoder_matches_the_serde_json_reference(input in input()) {
        same(&input)?;
    }

    #[test]
    fn encoder_matches_the_serde_json_reference(cmd in command()) {
        let mut new = Vec::new();
        super::write_header(&cmd, &mut new);
        let old = reference::encode_json_header(&cmd).unwrap();
        prop_assert_eq!(String::from_utf8_lossy(&new), String::from_utf8_lossy(&old));
        prop_assert_eq!(&new, &old);
        // And it decodes back (the language name is all a JSON header keeps of the language).
        let back = super::decode(&new).unwrap();
        let mut expected = cmd.clone();
        expected.language = LanguageCode::from_name(cmd.language.name());
        prop_assert_eq!(back, expected);
        same(&new)?;
    }
}

#[test]
fn hand_picked_headers_match_the_reference() {
    let cases: &[&[u8]] = &[
        b"",
        b" ",
        b"{}",
        b"[]",
        b"null",
        b"\"x\"",
        br#"{"code":10}"#,
        b"{\"code\":10}\n",
        b"{\"code\":10}\n{",
        br#"{"code":10,}"#,
        br#"{"code":10 "flag":1}"#,
        br#"{"code":null}"#,
        br#"{"code":"10","code":11}"#,
        br#"{"code":null,"code":11}"#,
        br#"{"c\u006fde":"7"}"#,
        br#"{"code":7,"extFields":{"k":"v","k":null,"j":1,"j":"2"}}"#,
        br#"{"code":7,"extFields":{"k":{"a":"\ud800"}}}"#,
        br#"{"code":7,"extFields":{"k":"\ud800"}}"#,
        br#"{"code":7,"x":"\ud800","y":{"\udc00":[1,2,{}]}}"#,
        b"{\"code\":7,\"x\":\"\xFF\"}",
        b"{\"code\":7,\"remark\":\"\xFF\"}",
        b"{\"code\":7,\"remark\":[\"\xFF\"]}",
        b"{\"code\":7,\"\xFF\":1}",
        br#"{"code":7,"remark":{"a" : [ 1 , 2 ]  }}"#,
        br#"{"code":7,"language":5}"#,
        br#"{"code":7,"language":true,"remark":false}"#,
        br#"{"code":1e1,"opaque":4294967295.0,"flag":"-0","version":-0.0}"#,
        br#"{"code":1.5}"#,
        br#"{"code":" 12 "}"#,
        br#"{"code":"1e1"}"#,
        br#"{"code":true}"#,
        br#"{"code":[1]}"#,
        br#"{"code":1,"extFields":[]}"#,
        br#"{"code":1,"extFields":"x"}"#,
        br#"{"code":1,"extFields":{"a":}}"#,
        br#"[1,"JAVA",2,3,0,null,{"a":"b"}]"#,
        br#"[1,"JAVA",2,3,0,null,{"a":"b"},]"#,
        br#"[1,"JAVA",2,3,0,null]"#,
        br#"[null,"JAVA",2,3,0,null,null]"#,
    ];
    for case in cases {
        same(case).unwrap();
    }
}

#[test]
fn ext_fields_cap_counts_every_entry_like_the_reference() {
    for n in [EXT_FIELDS_MAX - 1, EXT_FIELDS_MAX, EXT_FIELDS_MAX + 1] {
        for value in ["1", "null", "\"v\""] {
            // Same key over and over: the map stays small, the count does not.
            let repeated: Vec<String> = (0..n).map(|_| format!("\"k\":{value}")).collect();
            let distinct: Vec<String> = (0..n).map(|i| format!("\"{i}\":{value}")).collect();
            for entries in [repeated, distinct] {
                let header = format!(r#"{{"code":10,"extFields":{{{}}}}}"#, entries.join(","));
                same(header.as_bytes()).unwrap();
                let decoded = super::decode(header.as_bytes());
                assert_eq!(decoded.is_ok(), n <= EXT_FIELDS_MAX, "{n} entries of {value}");
            }
        }
    }
}

#[test]
fn deep_nesting_is_skipped_and_kept_without_recursion() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let header = format!(r#"{{"code":1,"extFields":{{"x":{deep}}},"y":{deep}}}"#);
    same(header.as_bytes()).unwrap();
    let cmd = super::decode(header.as_bytes()).unwrap();
    assert_eq!(cmd.ext_fields["x"], deep);
    let unbalanced = format!(r#"{{"code":1,"y":{}}}"#, "[".repeat(100_000));
    same(unbalanced.as_bytes()).unwrap();
    // Objects and arrays alternating across the 64-level inline bit stack, closed correctly and not.
    for levels in [63, 64, 65, 130, 200] {
        let open = r#"[{"k":"#.repeat(levels);
        let close = "}]".repeat(levels);
        let good = format!(r#"{{"code":1,"extFields":{{"x":{open}1{close}}},"y":{open}[]{close}}}"#);
        same(good.as_bytes()).unwrap();
        assert!(super::decode(good.as_bytes()).is_ok(), "{levels} levels");
        let swapped = format!(r#"{{"code":1,"y":{open}1]{close}}}"#);
        same(swapped.as_bytes()).unwrap();
        let comma = format!(r#"{{"code":1,"y":{open}1,2{close}}}"#);
        same(comma.as_bytes()).unwrap();
    }
}

#[test]
fn errors_say_what_and_where() {
    let err = super::decode(br#"{"code":1,"extFields":{"a" 1}}"#).unwrap_err();
    assert_eq!(err.to_string(), "malformed JSON header: expected `:` after an extFields key at byte 27");
    let err = super::decode(b"{\"code\":1,\"remark\":\"ab\xFF\"}").unwrap_err();
    assert_eq!(err.to_string(), "malformed JSON header: invalid UTF-8 at byte 22");
    let err = super::decode(br#"{"code":1,"opaque":"12x"}"#).unwrap_err();
    assert_eq!(err.to_string(), "malformed JSON header: `opaque` is not a 32-bit integer or a string holding one at byte 19");
    let err = super::decode(br#"{"code":1,"code":2}"#).unwrap_err();
    assert_eq!(err.to_string(), "malformed JSON header: duplicate field `code` at byte 10");
    let err = super::decode(br#"{"code":1,"extFields":{"a":"\udc00"}}"#).unwrap_err();
    assert_eq!(err.to_string(), "malformed JSON header: unpaired UTF-16 surrogate in a \\u escape at byte 28");
    assert!(matches!(super::decode(br#"{"flag":1}"#), Err(RemotingError::MissingField { key: "code", .. })));
}

#[test]
fn escaped_values_are_unescaped_into_one_exact_string() {
    let cmd = super::decode(br#"{"code":1,"extFields":{"i":"WAIT\u0001true\u0002K\u0001\ud83d\ude00\n\"\\\/"}}"#).unwrap();
    assert_eq!(cmd.ext_fields["i"], "WAIT\u{1}true\u{2}K\u{1}😀\n\"\\/");
    let mut expected = ExtFields::new();
    expected.insert("i".into(), "WAIT\u{1}true\u{2}K\u{1}😀\n\"\\/".into());
    assert_eq!(cmd.ext_fields, expected);
}
