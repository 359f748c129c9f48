//! The lexer of RocketMQ's selector grammar (`SelectorParser.jj`), as winnow combinators: whitespace and
//! comments, keywords (case-insensitive), identifiers, decimal and floating-point literals, string
//! literals with `''` escapes, and the operators. Like JavaCC's token manager it takes the longest token at
//! each position, a keyword winning over an identifier of the same length, and a `--` comment must end in a
//! line break (otherwise `-` is a token of its own and the parser refuses what follows).

use winnow::ascii::digit1;
use winnow::combinator::{alt, opt, repeat};
use winnow::prelude::*;
use winnow::token::{one_of, take_until, take_while};

use crate::ParseError;

/// Reserved words (matched case-insensitively).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kw {
    Not,
    And,
    Or,
    Between,
    In,
    True,
    False,
    Null,
    Is,
    Contains,
    StartsWith,
    EndsWith,
}

const KEYWORDS: [(&str, Kw); 12] = [
    ("NOT", Kw::Not),
    ("AND", Kw::And),
    ("OR", Kw::Or),
    ("BETWEEN", Kw::Between),
    ("IN", Kw::In),
    ("TRUE", Kw::True),
    ("FALSE", Kw::False),
    ("NULL", Kw::Null),
    ("IS", Kw::Is),
    ("CONTAINS", Kw::Contains),
    ("STARTSWITH", Kw::StartsWith),
    ("ENDSWITH", Kw::EndsWith),
];

/// One token.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Kw(Kw),
    /// A property name, as written (names are case-sensitive).
    Ident(String),
    /// A string literal, unquoted (`''` → `'`).
    Str(String),
    /// `0` or `[1-9][0-9]*`, an optional `l`/`L` suffix stripped.
    Decimal(String),
    /// A floating-point literal as written.
    Float(String),
    /// `=`, `<>`, `>`, `>=`, `<`, `<=`, `(`, `)`, `,`, `+`, `-`.
    Sym(&'static str),
}

impl Tok {
    /// How an error message names the token.
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::Kw(k) => KEYWORDS.iter().find(|(_, x)| x == k).map_or_else(String::new, |(s, _)| s.to_string()),
            Tok::Ident(s) => format!("identifier {s}"),
            Tok::Str(s) => format!("string '{}'", s.replace('\'', "''")),
            Tok::Decimal(s) | Tok::Float(s) => format!("number {s}"),
            Tok::Sym(s) => format!("'{s}'"),
        }
    }
}

/// A token and the byte offset it starts at.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Spanned {
    pub(crate) tok: Tok,
    pub(crate) pos: usize,
}

fn blank<'i>(i: &mut &'i str) -> ModalResult<&'i str> {
    take_while(1.., [' ', '\t', '\n', '\r', '\u{c}']).parse_next(i)
}

fn line_comment<'i>(i: &mut &'i str) -> ModalResult<&'i str> {
    ("--", take_while(0.., |c: char| c != '\n' && c != '\r'), alt(("\r\n", "\n", "\r"))).take().parse_next(i)
}

fn block_comment<'i>(i: &mut &'i str) -> ModalResult<&'i str> {
    ("/*", take_until(0.., "*/"), "*/").take().parse_next(i)
}

/// Whitespace and comments (JavaCC's SPECIAL_TOKEN and SKIP).
fn skip(i: &mut &str) -> ModalResult<()> {
    repeat(0.., alt((blank, line_comment, block_comment))).parse_next(i)
}

fn exponent<'i>(i: &mut &'i str) -> ModalResult<&'i str> {
    (one_of(['e', 'E']), opt(one_of(['+', '-'])), digit1).take().parse_next(i)
}

/// `5.5`, `5.`, `5.5E10`, `.5`, `.5E10`, `5E10`.
fn float<'i>(i: &mut &'i str) -> ModalResult<&'i str> {
    alt(((digit1, '.', opt(digit1), opt(exponent)).take(), ('.', digit1, opt(exponent)).take(), (digit1, exponent).take())).parse_next(i)
}

/// `0`, or `[1-9][0-9]*` with an optional `l`/`L`.
fn decimal(i: &mut &str) -> ModalResult<String> {
    alt((
        (one_of('1'..='9'), take_while(0.., |c: char| c.is_ascii_digit()), opt(one_of(['l', 'L'])))
            .take()
            .map(|s: &str| s.trim_end_matches(['l', 'L']).to_string()),
        "0".map(String::from),
    ))
    .parse_next(i)
}

fn string_literal(i: &mut &str) -> ModalResult<String> {
    let body: &str = ('\'', repeat::<_, _, (), _, _>(0.., alt(("''", take_while(1.., |c: char| c != '\'')))), '\'').take().parse_next(i)?;
    Ok(body[1..body.len() - 1].replace("''", "'"))
}

fn word(i: &mut &str) -> ModalResult<Tok> {
    let w: &str = (
        one_of(|c: char| c.is_ascii_alphabetic() || c == '_' || c == '$'),
        take_while(0.., |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '$'),
    )
        .take()
        .parse_next(i)?;
    Ok(match KEYWORDS.iter().find(|(k, _)| k.eq_ignore_ascii_case(w)) {
        Some((_, kw)) => Tok::Kw(*kw),
        None => Tok::Ident(w.to_string()),
    })
}

fn symbol(i: &mut &str) -> ModalResult<Tok> {
    alt((alt(("<>", "<=", ">=", "=", "<", ">")), alt(("(", ")", ",", "+", "-")))).map(|s: &str| Tok::Sym(sym(s))).parse_next(i)
}

fn sym(s: &str) -> &'static str {
    ["<>", "<=", ">=", "=", "<", ">", "(", ")", ",", "+", "-"].into_iter().find(|x| *x == s).unwrap_or("?")
}

fn token(i: &mut &str) -> ModalResult<Tok> {
    alt((string_literal.map(Tok::Str), float.map(|s: &str| Tok::Float(s.to_string())), decimal.map(Tok::Decimal), word, symbol))
        .parse_next(i)
}

/// The tokens of `src` with their byte offsets.
///
/// # Errors
/// A [`ParseError`] at the first byte no token starts with (an unterminated string or comment, or a
/// character outside the grammar).
pub(crate) fn tokenize(src: &str) -> Result<Vec<Spanned>, ParseError> {
    let mut rest = src;
    let mut out = Vec::new();
    loop {
        // `skip` cannot fail: every alternative of its repetition may simply not match.
        let _ = skip.parse_next(&mut rest);
        if rest.is_empty() {
            return Ok(out);
        }
        let pos = src.len() - rest.len();
        match token.parse_next(&mut rest) {
            Ok(tok) => out.push(Spanned { tok, pos }),
            Err(_) => {
                let message = if rest.starts_with('\'') {
                    "unterminated string literal".to_string()
                } else if rest.starts_with("/*") {
                    "unterminated comment".to_string()
                } else {
                    format!("unexpected character {:?}", rest.chars().next().unwrap_or(' '))
                };
                return Err(ParseError { position: pos, message });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        tokenize(s).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn longest_match_and_keywords() {
        assert_eq!(toks("note not NoT"), vec![Tok::Ident("note".into()), Tok::Kw(Kw::Not), Tok::Kw(Kw::Not)]);
        assert_eq!(
            toks("a<>b<=c"),
            vec![Tok::Ident("a".into()), Tok::Sym("<>"), Tok::Ident("b".into()), Tok::Sym("<="), Tok::Ident("c".into())]
        );
        assert_eq!(
            toks("12L 0L 5. .5 5E3 1.5e"),
            vec![
                Tok::Decimal("12".into()),
                Tok::Decimal("0".into()),
                Tok::Ident("L".into()),
                Tok::Float("5.".into()),
                Tok::Float(".5".into()),
                Tok::Float("5E3".into()),
                Tok::Float("1.5".into()),
                Tok::Ident("e".into())
            ]
        );
        assert_eq!(toks("007"), vec![Tok::Decimal("0".into()), Tok::Decimal("0".into()), Tok::Decimal("7".into())]);
        assert_eq!(toks("$a_1"), vec![Tok::Ident("$a_1".into())]);
    }

    #[test]
    fn strings_comments_and_positions() {
        assert_eq!(toks("'it''s' ''"), vec![Tok::Str("it's".into()), Tok::Str(String::new())]);
        assert_eq!(toks("/* x */ a -- c\n b"), vec![Tok::Ident("a".into()), Tok::Ident("b".into())]);
        assert_eq!(
            toks("a -- no newline"),
            vec![Tok::Ident("a".into()), Tok::Sym("-"), Tok::Sym("-"), Tok::Ident("no".into()), Tok::Ident("newline".into())]
        );
        let t = tokenize("  a = 'x'").unwrap();
        assert_eq!(t.iter().map(|s| s.pos).collect::<Vec<_>>(), vec![2, 4, 6]);
        assert_eq!(tokenize("a = 'x").unwrap_err(), ParseError { position: 4, message: "unterminated string literal".into() });
        assert_eq!(tokenize("a /* x").unwrap_err().position, 2);
        assert_eq!(tokenize("a != 1").unwrap_err(), ParseError { position: 2, message: "unexpected character '!'".into() });
        assert_eq!(tokenize("é").unwrap_err().position, 0);
    }
}
