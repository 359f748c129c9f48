//! Unit tests: RocketMQ's documented grammar and semantics, expression by expression.

use std::collections::HashMap;

use super::*;

fn props(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The selector's value over `pairs`; `Err(())` when evaluation failed.
fn eval(expr: &str, pairs: &[(&str, &str)]) -> Result<Option<bool>, ()> {
    let s = Selector::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
    let p = props(pairs);
    let get = |k: &str| p.get(k).map(String::as_str);
    s.evaluate(&get).map_err(|_| ())
}

fn is(expr: &str, pairs: &[(&str, &str)]) -> bool {
    let s = Selector::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
    let p = props(pairs);
    let get = |k: &str| p.get(k).map(String::as_str);
    s.matches(&get)
}

fn refused(expr: &str) -> ParseError {
    Selector::parse(expr).err().unwrap_or_else(|| panic!("{expr} was accepted"))
}

#[test]
fn numeric_comparisons_convert_property_strings() {
    let a = [("a", "7")];
    for (e, want) in [
        ("a > 5", true),
        ("a >= 7", true),
        ("a < 7", false),
        ("a <= 7", true),
        ("a = 7", true),
        ("a <> 7", false),
        ("a > 6.5", true),
        ("a < 1E1", true),
        ("a = 7L", true),
        ("a > -8", true),
        ("-a < 0", false), // -'7' is NULL: a string is not negated
    ] {
        assert_eq!(is(e, &a), want, "{e}");
    }
    assert_eq!(eval("-a < 0", &a), Ok(None));
    // A long constant reads the property as a long; an int constant as an int (RocketMQ's Integer.valueOf).
    assert!(is("a = 3000000000", &[("a", "3000000000")]));
    assert_eq!(eval("a > 1", &[("a", "3000000000")]), Err(()), "Integer.valueOf fails on a long");
    assert_eq!(eval("a > 5", &[("a", "7.5")]), Err(()), "7.5 is not an int");
    assert!(is("a > 5.0E0", &[("a", " 7.5d ")]), "Double.valueOf trims and takes a suffix");
    assert_eq!(eval("a > 5", &[("a", "x")]), Err(()));
    // Two properties are compared as doubles.
    assert!(is("a < b", &[("a", "2"), ("b", "10")]), "numerically, not as text");
    assert_eq!(eval("a < b", &[("a", "x"), ("b", "10")]), Err(()));
}

#[test]
fn strings_compare_only_for_equality() {
    let p = [("s", "abc"), ("q", "it's")];
    assert!(is("s = 'abc'", &p));
    assert!(!is("s = 'ABC'", &p));
    assert!(is("s <> 'x'", &p));
    assert!(is("q = 'it''s'", &p));
    assert!(is("'abc' = s", &p));
    for e in ["s > 'a'", "'a' < s", "s BETWEEN 'a' AND 'b'", "TRUE < 1", "(s = 'a') > 1", "NULL > 1"] {
        let err = refused(e);
        assert!(err.message.contains("compared"), "{e}: {err}");
    }
}

#[test]
fn missing_properties_are_null_with_three_valued_logic() {
    let none: [(&str, &str); 0] = [];
    assert_eq!(eval("a > 5", &none), Ok(None));
    assert_eq!(eval("a = 'x'", &none), Ok(None));
    assert_eq!(eval("a <> 'x'", &none), Ok(None));
    assert_eq!(eval("NOT (a = 'x')", &none), Ok(None));
    assert_eq!(eval("a IN ('x')", &none), Ok(None));
    assert_eq!(eval("a NOT IN ('x')", &none), Ok(None));
    assert_eq!(eval("a BETWEEN 1 AND 2", &none), Ok(None));
    assert_eq!(eval("a IS NULL", &none), Ok(Some(true)));
    assert_eq!(eval("a IS NOT NULL", &none), Ok(Some(false)));
    assert_eq!(eval("a > 5 AND FALSE", &none), Ok(Some(false)));
    assert_eq!(eval("a > 5 AND TRUE", &none), Ok(None));
    assert_eq!(eval("a > 5 OR TRUE", &none), Ok(Some(true)));
    assert_eq!(eval("a > 5 OR FALSE", &none), Ok(None));
    assert_eq!(eval("a CONTAINS 'x'", &none), Ok(Some(false)), "CONTAINS of NULL is false, not NULL");
    assert_eq!(eval("a NOT CONTAINS 'x'", &none), Ok(Some(false)));
    assert_eq!(eval("NULL", &none), Ok(None));
    assert_eq!(eval("NULL IS NULL", &none), Ok(Some(true)));
    assert!(!is("a > 5", &none));
    assert!(is("a IS NULL", &none));
}

#[test]
fn short_circuit_skips_failing_conversions() {
    let p = [("a", "x"), ("b", "1")];
    assert_eq!(eval("b = 2 AND a > 5", &p), Ok(Some(false)));
    assert_eq!(eval("b = 1 OR a > 5", &p), Ok(Some(true)));
    assert_eq!(eval("a > 5 OR b = 1", &p), Err(()), "the left side is evaluated first and fails the whole");
}

#[test]
fn between_in_and_text_operators() {
    let p = [("n", "5"), ("TAGS", "TagA"), ("s", "hello world")];
    assert!(is("n BETWEEN 1 AND 5", &p));
    assert!(!is("n BETWEEN 6 AND 9", &p));
    assert!(is("n NOT BETWEEN 6 AND 9", &p));
    assert!(!is("n NOT BETWEEN 5 AND 9", &p));
    assert!(is("n BETWEEN -1 AND 5.5", &p));
    assert!(is("TAGS IN ('TagB', 'TagA')", &p));
    assert!(!is("TAGS IN ('taga')", &p));
    assert!(is("TAGS NOT IN ('TagB')", &p));
    assert!(is("s CONTAINS 'o w'", &p));
    assert!(is("s STARTSWITH 'hell'", &p));
    assert!(is("s ENDSWITH 'world'", &p));
    assert!(is("s NOT ENDSWITH 'hello'", &p));
    assert!(!is("s CONTAINS ''", &p), "an empty search never matches (RocketMQ)");
    assert!(!is("s NOT CONTAINS ''", &p));
    assert!(is("n > 1 AND TAGS IN ('TagA') AND (s CONTAINS 'x' OR NOT (n = 4))", &p));
    assert!(refused("n BETWEEN 5 AND 1").message.contains("lower bound"));
    assert!(refused("n BETWEEN NULL AND 1").message.contains("NULL"));
    assert!(refused("'a' IN ('a')").message.contains("property"));
    assert!(refused("n IN (1, 2)").message.contains("string literal"));
}

#[test]
fn booleans_and_casts() {
    let p = [("b", "true"), ("n", "1")];
    assert!(is("TRUE", &p));
    assert!(!is("FALSE", &p));
    assert!(is("b = TRUE", &p), "a string next to a boolean is read with Boolean.valueOf");
    assert_eq!(eval("TRUE = b", &p), Err(()), "RocketMQ throws on a boolean left of a string");
    assert!(!is("b", &p), "a property used as a boolean is FALSE unless missing");
    assert_eq!(eval("x", &p), Ok(None));
    assert!(is("NOT b", &p));
    assert!(!is("(n = 1) = 5", &p), "a boolean and a number are never equal");
    assert!(is("(n = 1) <> 5", &p));
    assert!(refused("TRUE = 1").message.contains("boolean constant"));
    assert!(refused("n = NULL").message.contains("IS [NOT] NULL"));
    assert!(refused("5").message.contains("boolean"));
    assert!(refused("'x'").message.contains("boolean"));
    assert!(refused("n = 1 AND 5").message.contains("boolean"));
}

#[test]
fn not_binds_tighter_than_comparisons_as_in_rocketmq() {
    // `NOT a > 5` is `(NOT a) > 5`: a boolean cannot be ordered, so RocketMQ refuses it.
    let e = refused("NOT a > 5");
    assert_eq!(e.position, 0, "{e}");
    assert!(is("NOT (a > 5)", &[("a", "1")]));
    assert_eq!(eval("NOT a IS NULL", &[("a", "1")]), Ok(Some(false)), "(NOT a) IS NULL: NOT of a present string is TRUE, not NULL");
    assert_eq!(eval("NOT a IS NULL", &[]), Ok(Some(true)), "(NOT a) IS NULL: NOT of a missing property is NULL");
}

#[test]
fn literals_as_rocketmq_reads_them() {
    assert!(refused("a > 0.0").message.contains("less than"), "Double.MIN_VALUE check");
    assert!(refused("a > 1E400").message.contains("greater than"));
    assert!(refused("a > 9223372036854775808").message.contains("64-bit"));
    assert!(is("a = 9223372036854775807", &[("a", "9223372036854775807")]));
    assert!(is("a > .5 AND a < 5. AND a = 1", &[("a", "1")]));
    assert!(is("a = -2147483648", &[("a", "-2147483648")]));
    // Keywords are case-insensitive; property names are not.
    assert!(is("a between 1 and 2 or A is not null", &[("a", "1")]));
    assert!(!is("A = 1", &[("a", "1")]));
}

#[test]
fn errors_carry_the_byte_position() {
    for (e, pos) in [
        ("a >", 3),
        ("a > 5 AND", 9),
        ("a = 'x", 4),
        ("a > 5)", 5),
        ("(a > 5", 6),
        ("a IN ()", 6),
        ("a IN ('x' 'y')", 10),
        ("a !> 5", 2),
        ("", 0),
        ("   ", 3),
        ("a > 5 -- no line end", 6),
        ("a é 1", 2),
        ("a IS 5", 5),
    ] {
        let err = refused(e);
        assert_eq!(err.position, pos, "{e:?}: {err}");
    }
    assert_eq!(refused("a >").to_string(), "at byte 3: unexpected end of expression, expected a literal, a property or '('");
    assert!(Selector::parse("a > 5 -- comment\n AND b = 1 /* c */").is_ok());
}

#[test]
fn limits_are_enforced_at_the_limit() {
    // Length: exactly SQL_EXPRESSION_BYTES_MAX is accepted, one byte more is not.
    let base = "a = '";
    let at_max = format!("{base}{}'", "x".repeat(SQL_EXPRESSION_BYTES_MAX - base.len() - 1));
    assert_eq!(at_max.len(), SQL_EXPRESSION_BYTES_MAX);
    assert!(Selector::parse(&at_max).is_ok());
    let over = format!("{at_max} ");
    let e = refused(&over);
    assert_eq!(e.position, SQL_EXPRESSION_BYTES_MAX);
    assert!(e.message.contains("at most 4096"), "{e}");

    // Depth: SQL_EXPRESSION_DEPTH_MAX nested parentheses are accepted, one more is not.
    let nest = |n: usize| format!("{}a = 1{}", "(".repeat(n), ")".repeat(n));
    assert!(Selector::parse(&nest(SQL_EXPRESSION_DEPTH_MAX)).is_ok());
    let e = refused(&nest(SQL_EXPRESSION_DEPTH_MAX + 1));
    assert_eq!(e.position, SQL_EXPRESSION_DEPTH_MAX, "the parenthesis that goes too deep: {e}");
    assert!(e.message.contains("deeper than 64"));
    let nots = |n: usize| format!("{}(a = 1)", "NOT ".repeat(n));
    assert!(Selector::parse(&nots(SQL_EXPRESSION_DEPTH_MAX - 1)).is_ok());
    assert!(refused(&nots(SQL_EXPRESSION_DEPTH_MAX + 1)).message.contains("deeper"));
    // Thousands of parentheses within the byte limit are refused without deep recursion.
    assert!(refused(&"(".repeat(SQL_EXPRESSION_BYTES_MAX)).message.contains("deeper"));

    // Nodes: `a IN ('x', …)` has the property, the IN and one node per item.
    let in_list = |n: usize| format!("a IN ({})", vec!["''"; n].join(","));
    assert!(Selector::parse(&in_list(SQL_EXPRESSION_NODES_MAX - 2)).is_ok());
    let e = refused(&in_list(SQL_EXPRESSION_NODES_MAX - 1));
    assert!(e.message.contains("more than 1024 nodes"), "{e}");
}

#[test]
fn long_chains_within_the_node_limit_evaluate() {
    // A left-deep OR chain as long as the node limit allows: evaluation recursion stays shallow enough.
    let n = SQL_EXPRESSION_NODES_MAX / 4;
    let chain: Vec<String> = (0..n).map(|i| format!("a={i}")).collect();
    let src = chain.join(" OR ");
    assert!(src.len() <= SQL_EXPRESSION_BYTES_MAX);
    assert!(is(&src, &[("a", &(n - 1).to_string())]));
    assert!(!is(&src, &[("a", "-1")]));
}
