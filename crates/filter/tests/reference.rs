//! Property tests: random well-formed selectors, rendered to SQL92 text, parsed by `raftmq-filter` and
//! evaluated over random property maps, must agree with a small reference evaluator written directly on
//! the generated tree (SQL three-valued logic, left-to-right short-circuit, int conversion of property
//! strings that fails on non-numbers).

use std::collections::HashMap;

use proptest::prelude::*;
use raftmq_filter::Selector;

const PROPS: [&str; 3] = ["a", "b", "TAGS"];
const WORDS: [&str; 5] = ["x", "y", "TagA", "it's", "5x"];

#[derive(Debug, Clone)]
enum Ref {
    Lit(bool),
    /// `p op k` with an int constant.
    Cmp(usize, &'static str, i32),
    /// `p = 'w'` or `p <> 'w'`.
    StrEq(usize, String, bool),
    In(usize, Vec<String>, bool),
    IsNull(usize, bool),
    Between(usize, i32, i32, bool),
    Text(usize, &'static str, String, bool),
    And(Box<Ref>, Box<Ref>),
    Or(Box<Ref>, Box<Ref>),
    Not(Box<Ref>),
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn render(r: &Ref) -> String {
    match r {
        Ref::Lit(b) => if *b { "TRUE" } else { "false" }.to_string(),
        Ref::Cmp(p, op, k) => format!("{} {op} {k}", PROPS[*p]),
        Ref::StrEq(p, w, neg) => format!("{} {} {}", PROPS[*p], if *neg { "<>" } else { "=" }, quote(w)),
        Ref::In(p, list, not) => {
            format!("{}{} IN ({})", PROPS[*p], if *not { " NOT" } else { "" }, list.iter().map(|w| quote(w)).collect::<Vec<_>>().join(", "))
        }
        Ref::IsNull(p, not) => format!("{} IS {}NULL", PROPS[*p], if *not { "NOT " } else { "" }),
        Ref::Between(p, lo, hi, not) => format!("{}{} BETWEEN {lo} AND {hi}", PROPS[*p], if *not { " NOT" } else { "" }),
        Ref::Text(p, op, s, not) => format!("{}{} {op} {}", PROPS[*p], if *not { " NOT" } else { "" }, quote(s)),
        Ref::And(a, b) => format!("({}) AND ({})", render(a), render(b)),
        Ref::Or(a, b) => format!("({}) or ({})", render(a), render(b)),
        Ref::Not(a) => format!("NOT ({})", render(a)),
    }
}

/// `Err(())` when the evaluation fails (a non-number compared with a number).
fn reference(r: &Ref, p: &HashMap<&str, String>) -> Result<Option<bool>, ()> {
    let get = |i: usize| p.get(PROPS[i]).map(String::as_str);
    let int = |v: &str| v.parse::<i32>().map_err(|_| ());
    Ok(match r {
        Ref::Lit(b) => Some(*b),
        Ref::Cmp(i, op, k) => match get(*i) {
            None => None,
            Some(v) => {
                let v = int(v)?;
                Some(match *op {
                    ">" => v > *k,
                    ">=" => v >= *k,
                    "<" => v < *k,
                    "<=" => v <= *k,
                    "=" => v == *k,
                    _ => v != *k,
                })
            }
        },
        Ref::StrEq(i, w, neg) => get(*i).map(|v| (v == w) != *neg),
        Ref::In(i, list, not) => get(*i).map(|v| list.iter().any(|w| w == v) != *not),
        Ref::IsNull(i, not) => Some(get(*i).is_none() != *not),
        Ref::Between(i, lo, hi, not) => match get(*i) {
            None => None,
            Some(v) => {
                let v = int(v)?;
                Some((*lo <= v && v <= *hi) != *not)
            }
        },
        Ref::Text(i, op, s, not) => match get(*i) {
            None => Some(false),
            Some(v) => {
                let hit = match *op {
                    "CONTAINS" => v.contains(s.as_str()),
                    "STARTSWITH" => v.starts_with(s.as_str()),
                    _ => v.ends_with(s.as_str()),
                };
                Some(hit != *not)
            }
        },
        Ref::And(a, b) => {
            let l = reference(a, p)?;
            if l == Some(false) {
                return Ok(Some(false));
            }
            match (l, reference(b, p)?) {
                (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            }
        }
        Ref::Or(a, b) => {
            let l = reference(a, p)?;
            if l == Some(true) {
                return Ok(Some(true));
            }
            match (l, reference(b, p)?) {
                (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            }
        }
        Ref::Not(a) => reference(a, p)?.map(|b| !b),
    })
}

fn word() -> impl Strategy<Value = String> {
    prop::sample::select(WORDS.to_vec()).prop_map(String::from)
}

fn leaf() -> impl Strategy<Value = Ref> {
    let p = 0..PROPS.len();
    prop_oneof![
        any::<bool>().prop_map(Ref::Lit),
        (p.clone(), prop::sample::select(vec![">", ">=", "<", "<=", "=", "<>"]), -20i32..20).prop_map(|(p, o, k)| Ref::Cmp(p, o, k)),
        (p.clone(), word(), any::<bool>()).prop_map(|(p, w, n)| Ref::StrEq(p, w, n)),
        (p.clone(), prop::collection::vec(word(), 1..4), any::<bool>()).prop_map(|(p, l, n)| Ref::In(p, l, n)),
        (p.clone(), any::<bool>()).prop_map(|(p, n)| Ref::IsNull(p, n)),
        (p.clone(), -20i32..20, 0i32..20, any::<bool>()).prop_map(|(p, lo, w, n)| Ref::Between(p, lo, lo + w, n)),
        (p, prop::sample::select(vec!["CONTAINS", "STARTSWITH", "ENDSWITH"]), word(), any::<bool>())
            .prop_map(|(p, o, s, n)| Ref::Text(p, o, s, n)),
    ]
}

fn tree() -> impl Strategy<Value = Ref> {
    leaf().prop_recursive(5, 48, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Ref::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Ref::Or(Box::new(a), Box::new(b))),
            inner.prop_map(|a| Ref::Not(Box::new(a))),
        ]
    })
}

fn value() -> impl Strategy<Value = Option<String>> {
    prop_oneof![Just(None), (-25i32..25).prop_map(|i| Some(i.to_string())), word().prop_map(Some),]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn selector_agrees_with_the_reference(r in tree(), vals in prop::collection::vec(value(), PROPS.len())) {
        let src = render(&r);
        let sel = Selector::parse(&src).map_err(|e| TestCaseError::fail(format!("{src}: {e}")))?;
        let props: HashMap<&str, String> =
            PROPS.iter().zip(vals).filter_map(|(k, v)| v.map(|v| (*k, v))).collect();
        let get = |k: &str| props.get(k).map(String::as_str);
        let got = sel.evaluate(&get).map_err(|_| ());
        let want = reference(&r, &props);
        prop_assert_eq!(got, want, "{} over {:?}", src, props);
        prop_assert_eq!(sel.matches(&get), want == Ok(Some(true)));
    }
}
