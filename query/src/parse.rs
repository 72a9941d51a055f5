//! Reading predicate text: tokens, then a recursive-descent parser under [`Limits`].

use crate::{Expr, Limits, Literal, QueryError, Result};

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Token {
    Word(String),
    Text(String),
    Number(String),
    Op(&'static str),
    Open,
    Close,
    Comma,
}

/// Whether the predicate is the bare keyword `true`: upstream's grammar for "everything"
/// (`TRUE_KEYWORD EOF`), which clients send to list all.
pub(crate) fn is_bare_true(tokens: &[(usize, Token)]) -> bool {
    matches!(tokens, [(_, Token::Word(word))] if word.eq_ignore_ascii_case("true"))
}

/// Tokens with their byte positions, for error messages.
pub(crate) fn tokenize(text: &str) -> Result<Vec<(usize, Token)>> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        let token = match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => {
                i += 1;
                Token::Open
            }
            b')' => {
                i += 1;
                Token::Close
            }
            b',' => {
                i += 1;
                Token::Comma
            }
            b'=' => {
                i += 1;
                Token::Op("=")
            }
            b'!' if bytes.get(i + 1) == Some(&b'=') => {
                i += 2;
                Token::Op("!=")
            }
            b'<' | b'>' => {
                let eq = bytes.get(i + 1) == Some(&b'=');
                i += 1 + eq as usize;
                Token::Op(match (c, eq) {
                    (b'<', true) => "<=",
                    (b'<', false) => "<",
                    (_, true) => ">=",
                    _ => ">",
                })
            }
            b'\'' => {
                let mut value = String::new();
                i += 1;
                loop {
                    match text[i..].find('\'') {
                        None => return Err(invalid(start, "a closing quote")),
                        Some(end) => {
                            value.push_str(&text[i..i + end]);
                            i += end + 1;
                            // '' inside a string is a quote.
                            if bytes.get(i) == Some(&b'\'') {
                                value.push('\'');
                                i += 1;
                            } else {
                                break;
                            }
                        }
                    }
                }
                Token::Text(value)
            }
            b'0'..=b'9' | b'-' => {
                i += 1;
                while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                    i += 1;
                }
                Token::Number(text[start..i].to_string())
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || matches!(bytes[i], b'_' | b'.'))
                {
                    i += 1;
                }
                Token::Word(text[start..i].to_string())
            }
            _ => return Err(invalid(start, "a field, value, operator or parenthesis")),
        };
        tokens.push((start, token));
    }
    Ok(tokens)
}

fn invalid(position: usize, expected: &str) -> QueryError {
    QueryError::Invalid(format!(
        "invalid predicate at position {position}: expected {expected}"
    ))
}

/// The parser's recursion (`or` → `and` → `unary` → `or` on `(`) goes one level per
/// open parenthesis, and `depth` refuses more than the limit before recursing.
pub(crate) struct Parser<'a> {
    tokens: Vec<(usize, Token)>,
    at: usize,
    text: &'a str,
    limits: &'a Limits,
    depth: usize,
    terms: usize,
    values: usize,
}

impl<'a> Parser<'a> {
    pub(crate) fn new(tokens: Vec<(usize, Token)>, text: &'a str, limits: &'a Limits) -> Self {
        Self {
            tokens,
            at: 0,
            text,
            limits,
            depth: 0,
            terms: 0,
            values: 0,
        }
    }

    /// The whole predicate: an `OR` of terms, and nothing after it.
    pub(crate) fn predicate(&mut self) -> Result<Expr> {
        let expr = self.or()?;
        if self.at < self.tokens.len() {
            return Err(self.expected("AND, OR or the end of the predicate"));
        }
        Ok(expr)
    }

    fn or(&mut self) -> Result<Expr> {
        let mut terms = vec![self.and()?];
        while self.keyword("OR") {
            terms.push(self.and()?);
        }
        Ok(flatten(terms, Expr::Or))
    }

    fn and(&mut self) -> Result<Expr> {
        let mut terms = vec![self.unary()?];
        while self.keyword("AND") {
            terms.push(self.unary()?);
        }
        Ok(flatten(terms, Expr::And))
    }

    fn unary(&mut self) -> Result<Expr> {
        if self.eat(&Token::Open) {
            if self.depth == self.limits.depth {
                return Err(over_limit(
                    "predicate-depth",
                    format!(
                        "the predicate nests parentheses deeper than {} levels",
                        self.limits.depth
                    ),
                ));
            }
            self.depth += 1;
            let inner = self.or()?;
            self.depth -= 1;
            if !self.eat(&Token::Close) {
                return Err(self.expected("')'"));
            }
            return Ok(inner);
        }
        let field = match self.peek() {
            Some(Token::Word(w)) if !is_keyword(w) => w.clone(),
            _ => return Err(self.expected("a field name")),
        };
        self.check_path(&field)?;
        self.terms += 1;
        if self.terms > self.limits.terms {
            return Err(over_limit(
                "predicate-terms",
                format!(
                    "the predicate has more than {} comparisons",
                    self.limits.terms
                ),
            ));
        }
        self.at += 1;
        if let Some(Token::Op(op)) = self.peek() {
            let op = *op;
            self.at += 1;
            return Ok(Expr::Compare {
                field,
                op,
                value: self.literal()?,
            });
        }
        if self.keyword("IS") {
            let negated = self.keyword("NOT");
            if !self.keyword("NULL") {
                return Err(self.expected("NULL"));
            }
            return Ok(Expr::IsNull { field, negated });
        }
        let negated = self.keyword("NOT");
        if self.keyword("LIKE") {
            let op = if negated { "NOT LIKE" } else { "LIKE" };
            return Ok(Expr::Compare {
                field,
                op,
                value: self.pattern(true)?,
            });
        }
        if self.keyword("IN") {
            if !self.eat(&Token::Open) {
                return Err(self.expected("'('"));
            }
            let mut values = vec![self.literal()?];
            while self.eat(&Token::Comma) {
                if values.len() == self.limits.in_values {
                    return Err(over_limit(
                        "predicate-in-values",
                        format!("an IN list has more than {} values", self.limits.in_values),
                    ));
                }
                values.push(self.literal()?);
            }
            if !self.eat(&Token::Close) {
                return Err(self.expected("')'"));
            }
            return Ok(Expr::In {
                field,
                negated,
                values,
            });
        }
        if !negated {
            for op in ["CONTAINS", "STARTS_WITH", "ENDS_WITH"] {
                if self.keyword(op) {
                    return Ok(Expr::Compare {
                        field,
                        op,
                        value: self.pattern(false)?,
                    });
                }
            }
        }
        Err(self.expected("an operator (= != > >= < <= LIKE NOT LIKE IN NOT IN IS CONTAINS STARTS_WITH ENDS_WITH)"))
    }

    fn literal(&mut self) -> Result<Literal> {
        self.values += 1;
        if self.values > self.limits.values {
            return Err(over_limit(
                "predicate-values",
                format!("the predicate has more than {} values", self.limits.values),
            ));
        }
        let literal = match self.peek() {
            Some(Token::Text(t)) if t.len() > self.limits.text_bytes => {
                return Err(over_limit(
                    "predicate-text-bytes",
                    format!(
                        "a quoted value has {} bytes; at most {} are allowed",
                        t.len(),
                        self.limits.text_bytes
                    ),
                ));
            }
            Some(Token::Text(t)) => Literal::Text(t.clone()),
            Some(Token::Number(n)) => match n.parse::<i64>() {
                Ok(i) => Literal::Integer(i),
                // A literal past f64's range reads as infinity, which no database compares.
                Err(_) => match n.parse::<f64>() {
                    Ok(real) if real.is_finite() => Literal::Real(real),
                    _ => return Err(self.expected("a number")),
                },
            },
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("true") => Literal::Bool(true),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("false") => Literal::Bool(false),
            _ => return Err(self.expected("a value ('text', number, true or false)")),
        };
        self.at += 1;
        Ok(literal)
    }

    /// The value of LIKE and its shorthands: a quoted string. A LIKE pattern (`wildcards`)
    /// may hold only so many `%` and `_`; the shorthands escape theirs, so they count none.
    fn pattern(&mut self, wildcards: bool) -> Result<Literal> {
        match self.literal()? {
            Literal::Text(text)
                if wildcards
                    && text.bytes().filter(|b| matches!(b, b'%' | b'_')).count()
                        > self.limits.wildcards =>
            {
                Err(over_limit(
                    "predicate-wildcards",
                    format!(
                        "a LIKE pattern has more than {} wildcards (% and _)",
                        self.limits.wildcards
                    ),
                ))
            }
            text @ Literal::Text(_) => Ok(text),
            _ => {
                self.at -= 1;
                Err(self.expected("a quoted string"))
            }
        }
    }

    fn check_path(&self, field: &str) -> Result<()> {
        let segments = field.split('.').count().saturating_sub(1);
        if segments > self.limits.path_segments {
            return Err(over_limit(
                "predicate-path-segments",
                format!(
                    "field path '{}...' has {segments} segments; at most {} are allowed",
                    field.chars().take(64).collect::<String>(),
                    self.limits.path_segments
                ),
            ));
        }
        Ok(())
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|(_, t)| t)
    }

    fn eat(&mut self, token: &Token) -> bool {
        let found = self.peek() == Some(token);
        self.at += found as usize;
        found
    }

    fn keyword(&mut self, keyword: &str) -> bool {
        let found = matches!(self.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(keyword));
        self.at += found as usize;
        found
    }

    fn expected(&self, what: &str) -> QueryError {
        let position = self
            .tokens
            .get(self.at)
            .map_or(self.text.len(), |(p, _)| *p);
        invalid(position, what)
    }
}

/// One term stays itself; two or more become one flat `AND` or `OR`.
fn flatten(mut terms: Vec<Expr>, join: fn(Vec<Expr>) -> Expr) -> Expr {
    match terms.len() {
        1 => terms.remove(0),
        _ => join(terms),
    }
}

pub(crate) fn over_limit(limit: &'static str, message: String) -> QueryError {
    QueryError::OverLimit { limit, message }
}

fn is_keyword(word: &str) -> bool {
    ["AND", "OR", "NOT", "LIKE", "IN", "IS", "NULL"]
        .iter()
        .any(|k| word.eq_ignore_ascii_case(k))
}
