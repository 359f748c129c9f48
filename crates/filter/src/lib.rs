//! RocketMQ SQL92 message selectors (`MessageSelector.bySql`, expression type `SQL92`): the grammar of
//! RocketMQ's `SelectorParser.jj` and the semantics of its `filter` module's expression classes, evaluated
//! over a message's properties (user properties and system ones such as `TAGS`).
//!
//! - Grammar: `OR` < `AND` < `=`, `<>`, `IS [NOT] NULL` < `>`, `>=`, `<`, `<=`, `[NOT] BETWEEN x AND y`,
//!   `[NOT] IN ('a', …)`, `[NOT] CONTAINS|STARTSWITH|ENDSWITH 'a'` < unary `+`, `-`, `NOT` < literals,
//!   property names and parentheses. Keywords are case-insensitive, property names are not. String literals
//!   are single-quoted with `''` for a quote; numbers are `int`/`long` (`123`, `123L`) or `double` (`1.5`,
//!   `.5`, `1E3`). Comments `/* … */` and `-- …` (ended by a line break).
//! - The checks RocketMQ makes while building the tree are made here too, so that an expression RocketMQ
//!   refuses is refused: only numbers and properties may be ordered (`'a' > 1`, `TRUE < 1` fail), `NULL`
//!   cannot be an operand of `=`, `IN` needs a property on its left, constant `BETWEEN` bounds must be
//!   ordered, and a double literal must lie within `[Double.MIN_VALUE, Double.MAX_VALUE]` (so `0.0` is
//!   refused, as in RocketMQ).
//! - Values: property values are strings; a comparison with a number converts the property string to that
//!   number's type (`int`, `long` or `double`), two properties compared with `<`… are both read as doubles.
//!   A missing property is NULL and NULL propagates with SQL's three-valued logic: `AND`/`OR`/`NOT` as in
//!   SQL, comparisons with NULL are NULL, `IN` of NULL is NULL, `CONTAINS` of NULL is false. A message
//!   matches only when the whole expression is TRUE; a conversion that fails (`a > 5` with `a = 'x'`)
//!   makes the whole evaluation fail, and the message does not match (RocketMQ logs and skips it).
//! - Bounds: [`SQL_EXPRESSION_BYTES_MAX`] bytes, [`SQL_EXPRESSION_DEPTH_MAX`] nested parentheses and unary
//!   operators, [`SQL_EXPRESSION_NODES_MAX`] tree nodes. Parsing is linear in the length; evaluating one
//!   message is linear in the nodes times the longest property value. Every error carries the byte offset
//!   (0-based) where it was found.

mod eval;
mod lex;
mod parse;

pub use eval::EvalError;

/// Expression type of SQL92 selectors in subscriptions and pulls.
pub const EXPRESSION_TYPE_SQL92: &str = "SQL92";
/// Longest SQL92 expression accepted, in bytes.
pub const SQL_EXPRESSION_BYTES_MAX: usize = 4096;
/// Deepest nesting of parentheses and unary operators (`NOT`, `-`, `+`) accepted.
pub const SQL_EXPRESSION_DEPTH_MAX: usize = 64;
/// Most nodes (operators, operands, `IN` list items) in one expression.
pub const SQL_EXPRESSION_NODES_MAX: usize = 1024;

/// Why an expression was refused, and where (a byte offset into the expression, 0-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {position}: {message}")]
pub struct ParseError {
    /// Byte offset of the token or character the error was found at (the expression's length at its end).
    pub position: usize,
    /// What was wrong.
    pub message: String,
}

/// A compiled SQL92 selector.
#[derive(Debug, Clone)]
pub struct Selector {
    source: String,
    root: parse::Expr,
}

impl PartialEq for Selector {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Selector {}

impl Selector {
    /// Parses and checks `source`.
    ///
    /// # Errors
    /// [`ParseError`] with the byte position of the first problem.
    pub fn parse(source: &str) -> Result<Selector, ParseError> {
        if source.len() > SQL_EXPRESSION_BYTES_MAX {
            return Err(ParseError {
                position: SQL_EXPRESSION_BYTES_MAX,
                message: format!("the expression is {} bytes long; at most {SQL_EXPRESSION_BYTES_MAX}", source.len()),
            });
        }
        let tokens = lex::tokenize(source)?;
        let root = parse::parse(&tokens, source.len())?;
        Ok(Selector { source: source.to_string(), root })
    }

    /// The expression as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the selector over a message whose property `name` is `get(name)`: `Ok(Some(true))` when
    /// it matches, `Ok(None)` when it is NULL (unknown).
    ///
    /// # Errors
    /// [`EvalError`] when a value could not be converted for a comparison (RocketMQ throws there).
    pub fn evaluate<'a>(&'a self, get: &dyn Fn(&str) -> Option<&'a str>) -> Result<Option<bool>, EvalError> {
        eval::evaluate_bool(&self.root, get)
    }

    /// True when the selector is TRUE for the message (NULL and evaluation errors do not match).
    pub fn matches<'a>(&'a self, get: &dyn Fn(&str) -> Option<&'a str>) -> bool {
        matches!(self.evaluate(get), Ok(Some(true)))
    }
}

#[cfg(test)]
mod tests;
