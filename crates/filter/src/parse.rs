//! The selector grammar over the lexer's tokens (`SelectorParser.jj`'s productions, one function each),
//! building the expression tree with RocketMQ's construction-time checks, bounded in nesting depth and
//! node count.

use crate::eval::{java_compare, Val};
use crate::lex::{Kw, Spanned, Tok};
use crate::{ParseError, SQL_EXPRESSION_DEPTH_MAX, SQL_EXPRESSION_NODES_MAX};

/// `>`, `>=`, `<`, `<=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Gt,
    Ge,
    Lt,
    Le,
}

/// `CONTAINS`, `STARTSWITH`, `ENDSWITH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextOp {
    Contains,
    StartsWith,
    EndsWith,
}

/// An expression node.
#[derive(Debug, Clone)]
pub(crate) enum Expr {
    /// A literal; `Val::Null` for NULL.
    Const(Val),
    /// A property's value (a string), NULL when the message lacks it.
    Prop(String),
    /// Unary minus: numbers negated, anything else NULL.
    Neg(Box<Expr>),
    /// Boolean NOT (NULL stays NULL).
    Not(Box<Expr>),
    /// A property used as a boolean: NULL when missing, else FALSE unless it is a boolean (never: it is a
    /// string), as RocketMQ's `createBooleanCast`.
    Cast(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    /// `=`; `IS NULL` is `= NULL` without the operand checks.
    Eq(Box<Expr>, Box<Expr>),
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    /// `[NOT] IN (…)` on a property.
    In {
        prop: String,
        list: Vec<String>,
        not: bool,
    },
    /// `[NOT] CONTAINS|STARTSWITH|ENDSWITH 'search'`.
    Text {
        op: TextOp,
        not: bool,
        left: Box<Expr>,
        search: String,
    },
}

impl Expr {
    /// RocketMQ's `BooleanExpression`: what may be an operand of AND/OR/NOT or the whole selector.
    fn is_boolean(&self) -> bool {
        match self {
            Expr::Const(v) => matches!(v, Val::Bool(_) | Val::Null),
            Expr::Prop(_) | Expr::Neg(_) => false,
            _ => true,
        }
    }

    fn constant(&self) -> Option<&Val> {
        match self {
            Expr::Const(v) => Some(v),
            _ => None,
        }
    }
}

struct Parser<'t> {
    tokens: &'t [Spanned],
    at: usize,
    end: usize,
    depth: usize,
    nodes: usize,
}

type R<T> = Result<T, ParseError>;

pub(crate) fn parse(tokens: &[Spanned], source_len: usize) -> R<Expr> {
    let mut p = Parser { tokens, at: 0, end: source_len, depth: 0, nodes: 0 };
    let start = p.pos();
    let e = p.or_expr()?;
    if let Some(t) = p.peek() {
        return Err(ParseError { position: t.pos, message: format!("unexpected {} after a complete expression", t.tok.describe()) });
    }
    p.as_boolean(e, start)
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Spanned> {
        self.tokens.get(self.at)
    }

    fn peek2(&self) -> Option<&Tok> {
        self.tokens.get(self.at + 1).map(|t| &t.tok)
    }

    fn pos(&self) -> usize {
        self.peek().map_or(self.end, |t| t.pos)
    }

    fn is(&self, tok: &Tok) -> bool {
        self.peek().is_some_and(|t| &t.tok == tok)
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        let yes = self.is(tok);
        if yes {
            self.at += 1;
        }
        yes
    }

    fn err<T>(&self, position: usize, message: impl Into<String>) -> R<T> {
        Err(ParseError { position, message: message.into() })
    }

    fn unexpected<T>(&self, expected: &str) -> R<T> {
        match self.peek() {
            Some(t) => self.err(t.pos, format!("unexpected {}, expected {expected}", t.tok.describe())),
            None => self.err(self.end, format!("unexpected end of expression, expected {expected}")),
        }
    }

    fn expect(&mut self, tok: &Tok, what: &str) -> R<()> {
        if self.eat(tok) {
            Ok(())
        } else {
            self.unexpected(what)
        }
    }

    /// Counts a node against [`SQL_EXPRESSION_NODES_MAX`].
    fn node(&mut self, pos: usize, e: Expr) -> R<Expr> {
        self.nodes += 1;
        if self.nodes > SQL_EXPRESSION_NODES_MAX {
            return self.err(pos, format!("the expression has more than {SQL_EXPRESSION_NODES_MAX} nodes"));
        }
        Ok(e)
    }

    fn enter(&mut self, pos: usize) -> R<()> {
        self.depth += 1;
        if self.depth > SQL_EXPRESSION_DEPTH_MAX {
            return self.err(pos, format!("the expression nests deeper than {SQL_EXPRESSION_DEPTH_MAX} levels"));
        }
        Ok(())
    }

    /// RocketMQ's `asBooleanExpression`.
    fn as_boolean(&mut self, e: Expr, pos: usize) -> R<Expr> {
        if e.is_boolean() {
            return Ok(e);
        }
        if matches!(e, Expr::Prop(_)) {
            return self.node(pos, Expr::Cast(Box::new(e)));
        }
        self.err(pos, "this operand does not give a boolean value")
    }

    /// `orExpression := andExpression (OR andExpression)*`
    fn or_expr(&mut self) -> R<Expr> {
        let start = self.pos();
        let mut left = self.and_expr()?;
        while self.is(&Tok::Kw(Kw::Or)) {
            let op = self.pos();
            self.at += 1;
            let rpos = self.pos();
            let right = self.and_expr()?;
            let l = self.as_boolean(left, start)?;
            let r = self.as_boolean(right, rpos)?;
            left = self.node(op, Expr::Or(Box::new(l), Box::new(r)))?;
        }
        Ok(left)
    }

    /// `andExpression := equalityExpression (AND equalityExpression)*`
    fn and_expr(&mut self) -> R<Expr> {
        let start = self.pos();
        let mut left = self.equality()?;
        while self.is(&Tok::Kw(Kw::And)) {
            let op = self.pos();
            self.at += 1;
            let rpos = self.pos();
            let right = self.equality()?;
            let l = self.as_boolean(left, start)?;
            let r = self.as_boolean(right, rpos)?;
            left = self.node(op, Expr::And(Box::new(l), Box::new(r)))?;
        }
        Ok(left)
    }

    /// `equalityExpression := comparisonExpression ('=' c | '<>' c | IS NULL | IS NOT NULL)*`
    fn equality(&mut self) -> R<Expr> {
        let start = self.pos();
        let mut left = self.comparison()?;
        loop {
            let op = self.pos();
            let negate = if self.eat(&Tok::Sym("=")) {
                Some(false)
            } else if self.eat(&Tok::Sym("<>")) {
                Some(true)
            } else {
                None
            };
            if let Some(negate) = negate {
                let rpos = self.pos();
                let right = self.comparison()?;
                check_equal_operand(&left, start)?;
                check_equal_operand(&right, rpos)?;
                if let (Some(l), Some(r)) = (left.constant(), right.constant()) {
                    if matches!(l, Val::Bool(_) | Val::Null) && !matches!(r, Val::Bool(_) | Val::Null) {
                        return self.err(start, "a boolean constant cannot be compared with a non-boolean constant");
                    }
                }
                let eq = self.node(op, Expr::Eq(Box::new(left), Box::new(right)))?;
                left = if negate { self.node(op, Expr::Not(Box::new(eq)))? } else { eq };
            } else if self.is(&Tok::Kw(Kw::Is)) {
                self.at += 1;
                let not = self.eat(&Tok::Kw(Kw::Not));
                self.expect(&Tok::Kw(Kw::Null), "NULL")?;
                let null = self.node(op, Expr::Const(Val::Null))?;
                let eq = self.node(op, Expr::Eq(Box::new(left), Box::new(null)))?;
                left = if not { self.node(op, Expr::Not(Box::new(eq)))? } else { eq };
            } else {
                return Ok(left);
            }
        }
    }

    /// `comparisonExpression := unaryExpr (('>'|'>='|'<'|'<=') unaryExpr | [NOT] BETWEEN u AND u | [NOT] IN
    /// (str, …) | [NOT] CONTAINS|STARTSWITH|ENDSWITH str)*`
    fn comparison(&mut self) -> R<Expr> {
        let start = self.pos();
        let mut left = self.unary()?;
        loop {
            let op = self.pos();
            let Some(t) = self.peek() else { return Ok(left) };
            let cmp = match &t.tok {
                Tok::Sym(">") => Some(CmpOp::Gt),
                Tok::Sym(">=") => Some(CmpOp::Ge),
                Tok::Sym("<") => Some(CmpOp::Lt),
                Tok::Sym("<=") => Some(CmpOp::Le),
                _ => None,
            };
            if let Some(c) = cmp {
                self.at += 1;
                let rpos = self.pos();
                let right = self.unary()?;
                left = self.ordered(c, op, (left, start), (right, rpos))?;
                continue;
            }
            let not = matches!(t.tok, Tok::Kw(Kw::Not))
                && matches!(self.peek2(), Some(Tok::Kw(Kw::Between | Kw::In | Kw::Contains | Kw::StartsWith | Kw::EndsWith)));
            if not {
                self.at += 1;
            }
            let Some(Tok::Kw(kw)) = self.peek().map(|t| t.tok.clone()) else { return Ok(left) };
            match kw {
                Kw::Between => {
                    self.at += 1;
                    let lpos = self.pos();
                    let low = self.unary()?;
                    self.expect(&Tok::Kw(Kw::And), "AND of BETWEEN")?;
                    let hpos = self.pos();
                    let high = self.unary()?;
                    if let (Some(l), Some(h)) = (low.constant(), high.constant()) {
                        if matches!(l, Val::Null) || matches!(h, Val::Null) {
                            return self.err(lpos, "the bounds of BETWEEN cannot be NULL");
                        }
                        match java_compare(h, l) {
                            Ok(o) if o.is_lt() => {
                                return self.err(lpos, "the lower bound of BETWEEN is greater than the upper bound");
                            }
                            Ok(_) => {}
                            Err(e) => return self.err(lpos, format!("the bounds of BETWEEN cannot be compared: {e}")),
                        }
                    }
                    // The value is tested twice (RocketMQ builds `v >= low AND v <= high`); it is a property,
                    // a number or a negation (anything else fails the operand check), so the copy is small.
                    let value = left.clone();
                    self.nodes += size(&value);
                    left = if not {
                        let lt = self.ordered(CmpOp::Lt, op, (left, start), (low, lpos))?;
                        let gt = self.ordered(CmpOp::Gt, op, (value, start), (high, hpos))?;
                        self.node(op, Expr::Or(Box::new(lt), Box::new(gt)))?
                    } else {
                        let ge = self.ordered(CmpOp::Ge, op, (left, start), (low, lpos))?;
                        let le = self.ordered(CmpOp::Le, op, (value, start), (high, hpos))?;
                        self.node(op, Expr::And(Box::new(ge), Box::new(le)))?
                    };
                }
                Kw::In => {
                    self.at += 1;
                    let Expr::Prop(prop) = left else {
                        return self.err(start, "IN needs a property on its left");
                    };
                    self.expect(&Tok::Sym("("), "'(' of IN")?;
                    let mut list = Vec::new();
                    loop {
                        let ipos = self.pos();
                        let Some(Tok::Str(s)) = self.peek().map(|t| t.tok.clone()) else {
                            return self.unexpected("a string literal in the IN list");
                        };
                        self.at += 1;
                        self.node(ipos, Expr::Const(Val::Null))?;
                        list.push(s);
                        if !self.eat(&Tok::Sym(",")) {
                            break;
                        }
                    }
                    self.expect(&Tok::Sym(")"), "',' or ')' of the IN list")?;
                    list.sort_unstable();
                    list.dedup();
                    left = self.node(op, Expr::In { prop, list, not })?;
                }
                Kw::Contains | Kw::StartsWith | Kw::EndsWith => {
                    self.at += 1;
                    let Some(Tok::Str(search)) = self.peek().map(|t| t.tok.clone()) else {
                        return self.unexpected("a string literal");
                    };
                    self.at += 1;
                    let op_kind = match kw {
                        Kw::Contains => TextOp::Contains,
                        Kw::StartsWith => TextOp::StartsWith,
                        _ => TextOp::EndsWith,
                    };
                    left = self.node(op, Expr::Text { op: op_kind, not, left: Box::new(left), search })?;
                }
                _ => return Ok(left),
            }
        }
    }

    /// A `>`/`>=`/`<`/`<=` node after RocketMQ's `checkLessThanOperand` on both sides.
    fn ordered(&mut self, c: CmpOp, op: usize, (l, lpos): (Expr, usize), (r, rpos): (Expr, usize)) -> R<Expr> {
        check_less_than_operand(&l, lpos)?;
        check_less_than_operand(&r, rpos)?;
        self.node(op, Expr::Cmp(c, Box::new(l), Box::new(r)))
    }

    /// `unaryExpr := '+' unaryExpr | '-' unaryExpr | NOT unaryExpr | primaryExpr`
    fn unary(&mut self) -> R<Expr> {
        let pos = self.pos();
        let r = if self.eat(&Tok::Sym("+")) {
            self.enter(pos)?;
            self.unary()
        } else if self.eat(&Tok::Sym("-")) {
            self.enter(pos)?;
            let e = self.unary()?;
            self.node(pos, Expr::Neg(Box::new(e)))
        } else if self.eat(&Tok::Kw(Kw::Not)) {
            self.enter(pos)?;
            let opos = self.pos();
            let e = self.unary()?;
            let b = self.as_boolean(e, opos)?;
            self.node(pos, Expr::Not(Box::new(b)))
        } else {
            return self.primary();
        };
        self.depth -= 1;
        r
    }

    /// `primaryExpr := literal | variable | '(' orExpression ')'`
    fn primary(&mut self) -> R<Expr> {
        let pos = self.pos();
        let Some(t) = self.peek().map(|t| t.tok.clone()) else {
            return self.unexpected("a literal, a property or '('");
        };
        let e = match t {
            Tok::Str(s) => Expr::Const(Val::Str(s)),
            Tok::Decimal(d) => Expr::Const(decimal(&d).map_err(|m| ParseError { position: pos, message: m })?),
            Tok::Float(f) => Expr::Const(float(&f).map_err(|m| ParseError { position: pos, message: m })?),
            Tok::Kw(Kw::True) => Expr::Const(Val::Bool(true)),
            Tok::Kw(Kw::False) => Expr::Const(Val::Bool(false)),
            Tok::Kw(Kw::Null) => Expr::Const(Val::Null),
            Tok::Ident(name) => Expr::Prop(name),
            Tok::Sym("(") => {
                self.at += 1;
                self.enter(pos)?;
                let e = self.or_expr()?;
                self.expect(&Tok::Sym(")"), "')'")?;
                self.depth -= 1;
                return Ok(e);
            }
            _ => return self.unexpected("a literal, a property or '('"),
        };
        self.at += 1;
        self.node(pos, e)
    }
}

/// RocketMQ's `createFromDecimal`: a `long`, narrowed to `int` when it fits.
fn decimal(text: &str) -> Result<Val, String> {
    let v: i64 = text.parse().map_err(|_| format!("the number {text} does not fit a 64-bit integer"))?;
    Ok(match i32::try_from(v) {
        Ok(i) => Val::Int(i),
        Err(_) => Val::Long(v),
    })
}

/// RocketMQ's `createFloat`: a double within `[Double.MIN_VALUE, Double.MAX_VALUE]`.
fn float(text: &str) -> Result<Val, String> {
    let v: f64 = text.parse().map_err(|_| format!("{text} is not a number"))?;
    if v > f64::MAX {
        return Err(format!("{text} is greater than {:e}", f64::MAX));
    }
    // Java's Double.MIN_VALUE, the smallest positive subnormal (RocketMQ refuses 0.0 this way too).
    let min = f64::from_bits(1);
    if v < min {
        return Err(format!("{text} is less than {min:e}"));
    }
    Ok(Val::Double(v))
}

/// RocketMQ's `checkLessThanOperand`: only numbers, properties and negations may be ordered.
fn check_less_than_operand(e: &Expr, pos: usize) -> R<()> {
    match e {
        Expr::Const(Val::Int(_) | Val::Long(_) | Val::Double(_)) => Ok(()),
        Expr::Const(_) => Err(ParseError { position: pos, message: "only numbers can be compared with '>', '>=', '<', '<='".into() }),
        e if e.is_boolean() => {
            Err(ParseError { position: pos, message: "a boolean expression cannot be compared with '>', '>=', '<', '<='".into() })
        }
        _ => Ok(()),
    }
}

/// RocketMQ's `checkEqualOperand`: NULL cannot be an operand of `=`/`<>` (use IS NULL).
fn check_equal_operand(e: &Expr, pos: usize) -> R<()> {
    if matches!(e, Expr::Const(Val::Null)) {
        return Err(ParseError { position: pos, message: "NULL cannot be compared with '=' or '<>'; use IS [NOT] NULL".into() });
    }
    Ok(())
}

/// Nodes in a tree.
fn size(e: &Expr) -> usize {
    match e {
        Expr::Const(_) | Expr::Prop(_) => 1,
        Expr::Neg(x) | Expr::Not(x) | Expr::Cast(x) => 1 + size(x),
        Expr::And(a, b) | Expr::Or(a, b) | Expr::Eq(a, b) | Expr::Cmp(_, a, b) => 1 + size(a) + size(b),
        Expr::In { list, .. } => 1 + list.len(),
        Expr::Text { left, .. } => 1 + size(left),
    }
}
