//! Evaluation with RocketMQ's semantics: values are NULL, booleans, `int`, `long`, `double` or strings
//! (every property value is a string); mixed comparisons convert as `ComparisonExpression.__compare` does
//! with string conversion on; `AND`/`OR` are SQL's three-valued connectives evaluated left to right with
//! short-circuit, so a conversion failure on the right of a decided `AND`/`OR` is never reached.

use std::cmp::Ordering;

use crate::parse::{CmpOp, Expr, TextOp};

/// A constant.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Double(f64),
    Str(String),
}

/// A value during evaluation (strings borrowed from the expression or the message).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum V<'a> {
    Bool(bool),
    Int(i32),
    Long(i64),
    Double(f64),
    Str(&'a str),
}

impl Val {
    fn as_v(&self) -> Option<V<'_>> {
        match self {
            Val::Null => None,
            Val::Bool(b) => Some(V::Bool(*b)),
            Val::Int(i) => Some(V::Int(*i)),
            Val::Long(l) => Some(V::Long(*l)),
            Val::Double(d) => Some(V::Double(*d)),
            Val::Str(s) => Some(V::Str(s)),
        }
    }
}

/// Why an evaluation failed: a value that RocketMQ's conversions throw on. The message does not match.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(pub String);

type R<T> = Result<T, EvalError>;

/// Java's `Integer.valueOf(String)` / `Long.valueOf(String)` (ASCII digits, optional sign).
fn java_int<T: std::str::FromStr>(s: &str, what: &str) -> R<T> {
    s.parse().map_err(|_| EvalError(format!("{s:?} is not an {what}")))
}

/// Java's `Double.valueOf(String)` for decimal text: surrounding characters up to U+0020 trimmed, an
/// optional sign, `NaN`, `Infinity`, or digits with an optional point and exponent and an optional
/// `f`/`F`/`d`/`D` suffix. Hexadecimal floating-point text is not accepted.
pub(crate) fn java_double(s: &str) -> R<f64> {
    let bad = || EvalError(format!("{s:?} is not a number"));
    let t = s.trim_matches(|c: char| c <= ' ');
    let (negative, body) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let v = match body {
        "NaN" => f64::NAN,
        "Infinity" => f64::INFINITY,
        _ => {
            let body = body.strip_suffix(['f', 'F', 'd', 'D']).unwrap_or(body);
            let starts_well = body.as_bytes().first().is_some_and(|b| b.is_ascii_digit() || *b == b'.');
            if !starts_well || !body.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-')) {
                return Err(bad());
            }
            body.parse::<f64>().map_err(|_| bad())?
        }
    };
    Ok(if negative { -v } else { v })
}

fn java_bool(s: &str) -> bool {
    s.eq_ignore_ascii_case("true")
}

fn double_cmp(a: f64, b: f64) -> Ordering {
    // Java's Double.compareTo: -0.0 < 0.0, NaN above everything and equal to itself.
    a.total_cmp(&b)
}

/// RocketMQ's `ComparisonExpression.__compare` with string conversion on (the broker always parses
/// with it): same types compare directly, numbers widen (`int` → `long` → `double`), a string next to a
/// number or boolean is converted to that type (failing conversions are errors), and any other mix is
/// "less" (-1), as in RocketMQ.
pub(crate) fn java_compare(l: &Val, r: &Val) -> R<Ordering> {
    match (l.as_v(), r.as_v()) {
        (Some(a), Some(b)) => compare(a, b),
        _ => Err(EvalError("NULL cannot be compared".into())),
    }
}

fn compare(l: V<'_>, r: V<'_>) -> R<Ordering> {
    use V::*;
    Ok(match (l, r) {
        (Bool(a), Bool(b)) => a.cmp(&b),
        (Int(a), Int(b)) => a.cmp(&b),
        (Long(a), Long(b)) => a.cmp(&b),
        (Double(a), Double(b)) => double_cmp(a, b),
        (Str(a), Str(b)) => a.cmp(b),
        // RocketMQ casts the boolean to a string here and throws.
        (Bool(_), Str(s)) => return Err(EvalError(format!("a boolean cannot be compared with the string {s:?}"))),
        (Int(a), Long(b)) => i64::from(a).cmp(&b),
        (Long(a), Int(b)) => a.cmp(&i64::from(b)),
        (Int(a), Double(b)) => double_cmp(f64::from(a), b),
        (Long(a), Double(b)) => double_cmp(a as f64, b),
        (Double(a), Int(b)) => double_cmp(a, f64::from(b)),
        (Double(a), Long(b)) => double_cmp(a, b as f64),
        (Int(a), Str(s)) => a.cmp(&java_int::<i32>(s, "int")?),
        (Long(a), Str(s)) => a.cmp(&java_int::<i64>(s, "long")?),
        (Double(a), Str(s)) => double_cmp(a, java_double(s)?),
        (Str(s), Bool(b)) => java_bool(s).cmp(&b),
        (Str(s), Int(b)) => java_int::<i32>(s, "int")?.cmp(&b),
        (Str(s), Long(b)) => java_int::<i64>(s, "long")?.cmp(&b),
        (Str(s), Double(b)) => double_cmp(java_double(s)?, b),
        (Bool(_), _) | (Int(_) | Long(_) | Double(_), Bool(_)) => Ordering::Less,
    })
}

/// The selector's value: TRUE, FALSE or NULL.
pub(crate) fn evaluate_bool<'a>(e: &'a Expr, get: &dyn Fn(&str) -> Option<&'a str>) -> R<Option<bool>> {
    boolean(eval(e, get)?)
}

fn boolean(v: Option<V<'_>>) -> R<Option<bool>> {
    match v {
        None => Ok(None),
        Some(V::Bool(b)) => Ok(Some(b)),
        Some(other) => Err(EvalError(format!("{other:?} is not a boolean"))),
    }
}

fn eval<'a>(e: &'a Expr, get: &dyn Fn(&str) -> Option<&'a str>) -> R<Option<V<'a>>> {
    Ok(match e {
        Expr::Const(v) => v.as_v(),
        Expr::Prop(name) => get(name).map(V::Str),
        Expr::Neg(x) => match eval(x, get)? {
            Some(V::Int(i)) => Some(V::Int(i.wrapping_neg())),
            Some(V::Long(l)) => Some(V::Long(l.wrapping_neg())),
            Some(V::Double(d)) => Some(V::Double(-d)),
            _ => None,
        },
        Expr::Not(x) => boolean(eval(x, get)?)?.map(|b| V::Bool(!b)),
        Expr::Cast(x) => match eval(x, get)? {
            None => None,
            Some(V::Bool(b)) => Some(V::Bool(b)),
            Some(_) => Some(V::Bool(false)),
        },
        Expr::And(a, b) => {
            let l = boolean(eval(a, get)?)?;
            if l == Some(false) {
                return Ok(Some(V::Bool(false)));
            }
            let r = boolean(eval(b, get)?)?;
            match (l, r) {
                (_, Some(false)) => Some(V::Bool(false)),
                (Some(true), Some(true)) => Some(V::Bool(true)),
                _ => None,
            }
        }
        Expr::Or(a, b) => {
            let l = boolean(eval(a, get)?)?;
            if l == Some(true) {
                return Ok(Some(V::Bool(true)));
            }
            let r = boolean(eval(b, get)?)?;
            match (l, r) {
                (_, Some(true)) => Some(V::Bool(true)),
                (Some(false), Some(false)) => Some(V::Bool(false)),
                _ => None,
            }
        }
        Expr::Eq(a, b) => {
            let (l, r) = (eval(a, get)?, eval(b, get)?);
            match (l, r) {
                (None, None) => Some(V::Bool(true)),
                (None, Some(_)) => None,
                (Some(_), None) => Some(V::Bool(false)),
                (Some(l), Some(r)) => Some(V::Bool(compare(l, r)?.is_eq())),
            }
        }
        Expr::Cmp(op, a, b) => {
            let Some(l) = eval(a, get)? else { return Ok(None) };
            let Some(r) = eval(b, get)? else { return Ok(None) };
            let ord = match (l, r) {
                // Two strings (properties) are ordered as doubles, or the comparison fails.
                (V::Str(x), V::Str(y)) => double_cmp(java_double(x)?, java_double(y)?),
                _ => compare(l, r)?,
            };
            Some(V::Bool(match op {
                CmpOp::Gt => ord.is_gt(),
                CmpOp::Ge => ord.is_ge(),
                CmpOp::Lt => ord.is_lt(),
                CmpOp::Le => ord.is_le(),
            }))
        }
        Expr::In { prop, list, not } => get(prop).map(|v| V::Bool(list.binary_search_by(|x| x.as_str().cmp(v)).is_ok() != *not)),
        Expr::Text { op, not, left, search } => {
            if search.is_empty() {
                return Ok(Some(V::Bool(false)));
            }
            match eval(left, get)? {
                Some(V::Str(s)) => {
                    let hit = match op {
                        TextOp::Contains => s.contains(search.as_str()),
                        TextOp::StartsWith => s.starts_with(search.as_str()),
                        TextOp::EndsWith => s.ends_with(search.as_str()),
                    };
                    Some(V::Bool(hit != *not))
                }
                _ => Some(V::Bool(false)),
            }
        }
    })
}
