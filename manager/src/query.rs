//! The predicate language of the query routes (`identifier LIKE '%provider%' AND ...`),
//! parsed by a small recursive-descent parser and translated to SQL with bound
//! parameters: user values never become SQL text.
//!
//! This covers comparisons on top-level fields; paths into JSON documents come with
//! the full Tenant Manager query support.

use sqlx::Sqlite;
use sqlx::query::Query;
use sqlx::sqlite::SqliteArguments;

use crate::error::{ManagerError, Result};

/// A parsed predicate; `None` matches everything.
#[derive(Debug, Clone, PartialEq)]
pub struct Predicate(Option<Expr>);

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Compare {
        field: String,
        op: &'static str,
        value: Literal,
    },
    In {
        field: String,
        negated: bool,
        values: Vec<Literal>,
    },
    IsNull {
        field: String,
        negated: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Text(String),
    Integer(i64),
    Real(f64),
    Bool(bool),
}

impl Predicate {
    pub fn parse(text: &str) -> Result<Self> {
        let tokens = tokenize(text)?;
        if tokens.is_empty() {
            return Ok(Self(None));
        }
        let mut parser = Parser {
            tokens,
            at: 0,
            text,
        };
        let expr = parser.or()?;
        if parser.at < parser.tokens.len() {
            return Err(parser.expected("AND, OR or the end of the predicate"));
        }
        Ok(Self(Some(expr)))
    }

    /// SQL condition text and the parameters to bind, in order. `column` maps a field
    /// name to its column; an unknown field is a 400 naming it.
    pub fn to_sql(
        &self,
        column: &dyn Fn(&str) -> Option<&'static str>,
    ) -> Result<(String, Vec<Literal>)> {
        let mut params = Vec::new();
        let sql = match &self.0 {
            None => "1 = 1".to_string(),
            Some(expr) => sql(expr, column, &mut params)?,
        };
        Ok((sql, params))
    }
}

/// Binds parameters produced by [`Predicate::to_sql`].
pub fn bind_all<'q>(
    mut query: Query<'q, Sqlite, SqliteArguments>,
    params: Vec<Literal>,
) -> Query<'q, Sqlite, SqliteArguments> {
    for param in params {
        query = match param {
            Literal::Text(s) => query.bind(s),
            Literal::Integer(i) => query.bind(i),
            Literal::Real(f) => query.bind(f),
            Literal::Bool(b) => query.bind(b),
        };
    }
    query
}

fn sql(
    expr: &Expr,
    column: &dyn Fn(&str) -> Option<&'static str>,
    params: &mut Vec<Literal>,
) -> Result<String> {
    let col = |field: &str| {
        column(field).ok_or_else(|| {
            ManagerError::bad_request(format!("unknown field '{field}' in predicate"))
        })
    };
    Ok(match expr {
        Expr::And(a, b) => format!(
            "({} AND {})",
            sql(a, column, params)?,
            sql(b, column, params)?
        ),
        Expr::Or(a, b) => format!(
            "({} OR {})",
            sql(a, column, params)?,
            sql(b, column, params)?
        ),
        Expr::Compare { field, op, value } => {
            let column = col(field)?;
            let (op, value) = match (*op, value) {
                ("CONTAINS", Literal::Text(t)) => {
                    ("LIKE", Literal::Text(format!("%{}%", escape_like(t))))
                }
                ("STARTS_WITH", Literal::Text(t)) => {
                    ("LIKE", Literal::Text(format!("{}%", escape_like(t))))
                }
                ("ENDS_WITH", Literal::Text(t)) => {
                    ("LIKE", Literal::Text(format!("%{}", escape_like(t))))
                }
                (op, value) => (op, value.clone()),
            };
            params.push(value);
            if op.contains("LIKE") {
                format!("{column} {op} ? ESCAPE '\\'")
            } else {
                format!("{column} {op} ?")
            }
        }
        Expr::In {
            field,
            negated,
            values,
        } => {
            let column = col(field)?;
            params.extend(values.iter().cloned());
            let marks = vec!["?"; values.len()].join(", ");
            format!(
                "{column} {}IN ({marks})",
                if *negated { "NOT " } else { "" }
            )
        }
        Expr::IsNull { field, negated } => {
            format!(
                "{} IS {}NULL",
                col(field)?,
                if *negated { "NOT " } else { "" }
            )
        }
    })
}

fn escape_like(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Text(String),
    Number(String),
    Op(&'static str),
    Open,
    Close,
    Comma,
}

/// Tokens with their byte positions, for error messages.
fn tokenize(text: &str) -> Result<Vec<(usize, Token)>> {
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

fn invalid(position: usize, expected: &str) -> ManagerError {
    ManagerError::bad_request(format!(
        "invalid predicate at position {position}: expected {expected}"
    ))
}

struct Parser<'a> {
    tokens: Vec<(usize, Token)>,
    at: usize,
    text: &'a str,
}

impl Parser<'_> {
    fn or(&mut self) -> Result<Expr> {
        let mut left = self.and()?;
        while self.keyword("OR") {
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr> {
        let mut left = self.unary()?;
        while self.keyword("AND") {
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr> {
        if self.eat(&Token::Open) {
            let inner = self.or()?;
            if !self.eat(&Token::Close) {
                return Err(self.expected("')'"));
            }
            return Ok(inner);
        }
        let field = match self.peek() {
            Some(Token::Word(w)) if !is_keyword(w) => w.clone(),
            _ => return Err(self.expected("a field name")),
        };
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
                value: self.text_literal()?,
            });
        }
        if self.keyword("IN") {
            if !self.eat(&Token::Open) {
                return Err(self.expected("'('"));
            }
            let mut values = vec![self.literal()?];
            while self.eat(&Token::Comma) {
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
                        value: self.text_literal()?,
                    });
                }
            }
        }
        Err(self.expected("an operator (= != > >= < <= LIKE NOT LIKE IN NOT IN IS CONTAINS STARTS_WITH ENDS_WITH)"))
    }

    fn literal(&mut self) -> Result<Literal> {
        let literal = match self.peek() {
            Some(Token::Text(t)) => Literal::Text(t.clone()),
            Some(Token::Number(n)) => match n.parse::<i64>() {
                Ok(i) => Literal::Integer(i),
                Err(_) => Literal::Real(n.parse().map_err(|_| self.expected("a number"))?),
            },
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("true") => Literal::Bool(true),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("false") => Literal::Bool(false),
            _ => return Err(self.expected("a value ('text', number, true or false)")),
        };
        self.at += 1;
        Ok(literal)
    }

    fn text_literal(&mut self) -> Result<Literal> {
        match self.literal()? {
            text @ Literal::Text(_) => Ok(text),
            _ => {
                self.at -= 1;
                Err(self.expected("a quoted string"))
            }
        }
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

    fn expected(&self, what: &str) -> ManagerError {
        let position = self
            .tokens
            .get(self.at)
            .map_or(self.text.len(), |(p, _)| *p);
        invalid(position, what)
    }
}

fn is_keyword(word: &str) -> bool {
    ["AND", "OR", "NOT", "LIKE", "IN", "IS", "NULL"]
        .iter()
        .any(|k| word.eq_ignore_ascii_case(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(field: &str) -> Option<&'static str> {
        match field {
            "identifier" => Some("identifier"),
            "tenantId" => Some("tenant_id"),
            _ => None,
        }
    }

    fn translate(text: &str) -> (String, Vec<Literal>) {
        Predicate::parse(text).unwrap().to_sql(&column).unwrap()
    }

    #[test]
    fn like_and_boolean_structure_translate_to_bound_sql() {
        let (sql, params) = translate("identifier like '%provider%'");
        assert_eq!(sql, "identifier LIKE ? ESCAPE '\\'");
        assert_eq!(params, vec![Literal::Text("%provider%".into())]);
        let (sql, params) =
            translate("(identifier = 'a' OR identifier = 'b') and tenantId NOT IN ('x', 'y')");
        assert_eq!(
            sql,
            "((identifier = ? OR identifier = ?) AND tenant_id NOT IN (?, ?))"
        );
        assert_eq!(params.len(), 4);
        let (sql, _) = translate("");
        assert_eq!(sql, "1 = 1");
    }

    #[test]
    fn quotes_and_wildcards_never_escape_their_literal() {
        let (_, params) = translate("identifier = 'it''s'");
        assert_eq!(params, vec![Literal::Text("it's".into())]);
        let (sql, params) = translate("identifier CONTAINS '50%_'");
        assert!(sql.contains("LIKE ?"));
        assert_eq!(params, vec![Literal::Text("%50\\%\\_%".into())]);
    }

    #[test]
    fn errors_name_position_and_expectation() {
        let err = Predicate::parse("identifier like").unwrap_err().to_string();
        assert!(
            err.contains("position 15") && err.contains("value"),
            "{err}"
        );
        let err = Predicate::parse("identifier ~ 'x'")
            .unwrap_err()
            .to_string();
        assert!(err.contains("position 11"), "{err}");
        let err = Predicate::parse("identifier = 'x").unwrap_err().to_string();
        assert!(err.contains("closing quote"), "{err}");
        let err = Predicate::parse("nope = 'x'")
            .unwrap()
            .to_sql(&column)
            .unwrap_err()
            .to_string();
        assert!(err.contains("'nope'"), "{err}");
    }
}
