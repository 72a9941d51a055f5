//! The predicate language of the query routes (`identifier LIKE '%provider%' AND ...`),
//! parsed by a small recursive-descent parser and translated to SQL with bound
//! parameters: user values never become SQL text.
//!
//! A field is a column (`identifier`) or a dotted path into a JSON document
//! (`properties.group`, `vpas.type`, `vpas.properties.k`). A path through an array
//! matches when any element matches, at every level, the way PostgreSQL's lax JSON
//! paths read. Both backends translate it with their own JSON functions (JSONB paths on
//! PostgreSQL, `json_each` on SQLite) to the same answers. Comparisons are typed: a text
//! value matches JSON strings, a number matches JSON numbers, `true`/`false` booleans.

use sqlx::Any;
use sqlx::any::AnyArguments;
use sqlx::query::Query;

use crate::error::{ManagerError, Result};
use crate::store::{Backend, Page};

/// A parsed predicate; `None` (the default) matches everything.
#[derive(Debug, Clone, PartialEq, Default)]
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

/// What a queryable field of a resource is stored as.
#[derive(Debug, Clone, Copy)]
pub enum Field {
    Text(&'static str),
    Integer(&'static str),
    /// An integer column holding 0 or 1.
    Bool(&'static str),
    Json(JsonColumn),
}

/// A column holding a JSON document. On PostgreSQL its parsed copy is `<column>_doc`.
#[derive(Debug, Clone, Copy)]
pub struct JsonColumn {
    pub column: &'static str,
    /// For a column holding an array of objects: keys whose values are always scalars.
    /// On PostgreSQL `key = value` on them is a JSONB containment test, which means the
    /// same as the path and is answered from the column's GIN index (or, for a value
    /// most rows have, by walking the rows in id order and stopping at the page's end).
    pub scalar_keys: &'static [&'static str],
}

/// The parameters of a statement being built, numbered `$1`, `$2`, ... in order.
#[derive(Debug, Default)]
pub struct Params(Vec<Literal>);

impl Params {
    /// Adds a parameter and returns its placeholder.
    pub fn push(&mut self, value: Literal) -> String {
        self.0.push(value);
        format!("${}", self.0.len())
    }

    /// The statement `sql` (built with these parameters) with every parameter bound.
    ///
    /// It is not prepared for reuse: PostgreSQL then plans it for the values it carries.
    /// A cached generic plan guesses a predicate's selectivity once for all values, and
    /// `vpas.type = 'cfm.connector'` (every row) after `vpas.state = 'error'` (1% of
    /// them) is the same statement with plans 100x apart. Nor does each distinct
    /// predicate take a slot in every connection's statement cache.
    pub fn query(self, sql: String) -> Query<'static, Any, AnyArguments> {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
        for param in self.0 {
            query = match param {
                Literal::Text(s) => query.bind(s),
                Literal::Integer(i) => query.bind(i),
                Literal::Real(f) => query.bind(f),
                Literal::Bool(b) => query.bind(b as i64),
            };
        }
        query
    }
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

    /// This predicate and `field = value`: how the server scopes a query of its own.
    pub fn and_equals(self, field: &str, value: Literal) -> Self {
        let compare = Expr::Compare {
            field: field.to_string(),
            op: "=",
            value,
        };
        Self(Some(match self.0 {
            None => compare,
            Some(expr) => Expr::And(Box::new(expr), Box::new(compare)),
        }))
    }

    /// `select` (a `SELECT ... FROM table`) narrowed to the rows this predicate matches:
    /// one page of them, sorted by id, every value bound. What the query routes run.
    pub fn select_page(
        &self,
        select: &str,
        fields: &dyn Fn(&str) -> Option<Field>,
        backend: Backend,
        page: Page,
    ) -> Result<Query<'static, Any, AnyArguments>> {
        let mut params = Params::default();
        let condition = self.to_sql(fields, backend, &mut params)?;
        let limit = params.push(Literal::Integer(page.limit));
        let offset = params.push(Literal::Integer(page.offset));
        Ok(params.query(format!(
            "{select} WHERE {condition} ORDER BY id LIMIT {limit} OFFSET {offset}"
        )))
    }

    /// The SQL condition, its values added to `params`. `fields` names a resource's
    /// queryable fields; an unknown one is a 400 naming it.
    pub fn to_sql(
        &self,
        fields: &dyn Fn(&str) -> Option<Field>,
        backend: Backend,
        params: &mut Params,
    ) -> Result<String> {
        match &self.0 {
            None => Ok("1 = 1".to_string()),
            Some(expr) => Translator {
                fields,
                backend,
                params,
                aliases: 0,
            }
            .expr(expr),
        }
    }
}

/// A field of a predicate resolved against a resource.
enum Target<'a> {
    Column(Field),
    Path(JsonColumn, Vec<&'a str>),
}

struct Translator<'a> {
    fields: &'a dyn Fn(&str) -> Option<Field>,
    backend: Backend,
    params: &'a mut Params,
    aliases: usize,
}

impl Translator<'_> {
    fn expr(&mut self, expr: &Expr) -> Result<String> {
        Ok(match expr {
            Expr::And(a, b) => format!("({} AND {})", self.expr(a)?, self.expr(b)?),
            Expr::Or(a, b) => format!("({} OR {})", self.expr(a)?, self.expr(b)?),
            Expr::Compare { field, op, value } => match self.resolve(field)? {
                Target::Column(column) => self.compare_column(field, column, op, value)?,
                Target::Path(json, path) => match self.containment(json, &path, op, value) {
                    Some(containment) => containment,
                    None => self.path_exists(json, &path, |t, v| t.compare_json(v, op, value))?,
                },
            },
            Expr::In {
                field,
                negated,
                values,
            } => match self.resolve(field)? {
                Target::Column(column) => {
                    let (name, values) = self.column_values(field, column, values)?;
                    let marks: Vec<String> =
                        values.into_iter().map(|v| self.params.push(v)).collect();
                    format!(
                        "{name} {}IN ({})",
                        if *negated { "NOT " } else { "" },
                        marks.join(", ")
                    )
                }
                Target::Path(json, path) => self.path_exists(json, &path, |t, v| {
                    let any = values
                        .iter()
                        .map(|value| t.compare_json(v, "=", value))
                        .collect::<Result<Vec<_>>>()?
                        .join(" OR ");
                    Ok(if *negated {
                        format!("({} AND NOT ({any}))", t.is_scalar(v))
                    } else {
                        format!("({any})")
                    })
                })?,
            },
            Expr::IsNull { field, negated } => match self.resolve(field)? {
                Target::Column(column) => format!(
                    "{} IS {}NULL",
                    column_name(column),
                    if *negated { "NOT " } else { "" }
                ),
                Target::Path(json, path) => {
                    let present = self.path_exists(json, &path, |t, v| Ok(t.is_present(v)))?;
                    if *negated {
                        present
                    } else {
                        format!("NOT {present}")
                    }
                }
            },
        })
    }

    fn resolve<'f>(&self, field: &'f str) -> Result<Target<'f>> {
        let unknown = || ManagerError::bad_request(format!("unknown field '{field}' in predicate"));
        if let Some(found) = (self.fields)(field) {
            return Ok(match found {
                Field::Json(json) => Target::Path(json, vec![]),
                column => Target::Column(column),
            });
        }
        let (root, rest) = field.split_once('.').ok_or_else(unknown)?;
        let Some(Field::Json(json)) = (self.fields)(root) else {
            return Err(unknown());
        };
        let path: Vec<&str> = rest.split('.').collect();
        if path.iter().any(|segment| segment.is_empty()) {
            return Err(ManagerError::bad_request(format!(
                "field '{field}' has an empty path segment"
            )));
        }
        Ok(Target::Path(json, path))
    }

    fn compare_column(
        &mut self,
        field: &str,
        column: Field,
        op: &str,
        value: &Literal,
    ) -> Result<String> {
        let (name, mut values) = self.column_values(field, column, std::slice::from_ref(value))?;
        let value = values.remove(0);
        Ok(match like_pattern(op, &value) {
            Some((op, pattern)) => {
                format!("{name} {op} {} ESCAPE '\\'", self.params.push(pattern))
            }
            None => format!("{name} {op} {}", self.params.push(value)),
        })
    }

    /// Checks that `values` suit a column's type and converts them to what it stores.
    fn column_values(
        &self,
        field: &str,
        column: Field,
        values: &[Literal],
    ) -> Result<(&'static str, Vec<Literal>)> {
        let converted = values
            .iter()
            .map(|value| match (column, value) {
                (Field::Text(_), Literal::Text(_)) | (Field::Integer(_), Literal::Integer(_)) => {
                    Ok(value.clone())
                }
                (Field::Integer(_), Literal::Real(_)) => Ok(value.clone()),
                (Field::Bool(_), Literal::Bool(b)) => Ok(Literal::Integer(*b as i64)),
                _ => Err(ManagerError::bad_request(format!(
                    "field '{field}' holds {}; compare it with {}",
                    kind_of(column),
                    match column {
                        Field::Text(_) => "a quoted string",
                        Field::Integer(_) => "a number",
                        _ => "true or false",
                    }
                ))),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((column_name(column), converted))
    }

    /// `EXISTS` over the scalar values a path reaches, arrays unwrapped at every level;
    /// `test` is the condition on one value.
    fn path_exists(
        &mut self,
        json: JsonColumn,
        path: &[&str],
        test: impl FnOnce(&mut Self, &str) -> Result<String>,
    ) -> Result<String> {
        match self.backend {
            Backend::Postgres => {
                self.aliases += 1;
                let alias = format!("v{}", self.aliases);
                // Keys are letters, digits and underscores (the tokenizer admits no
                // others), and the path is a bound parameter all the same.
                let jsonpath: String = std::iter::once("lax $".to_string())
                    .chain(path.iter().map(|key| format!(".\"{key}\"")))
                    .chain(std::iter::once("[*]".to_string()))
                    .collect();
                let mark = self.params.push(Literal::Text(jsonpath));
                let condition = test(self, &alias)?;
                Ok(format!(
                    "EXISTS (SELECT 1 FROM jsonb_path_query({}_doc, CAST({mark} AS jsonpath)) AS {alias} WHERE {condition})",
                    json.column
                ))
            }
            Backend::Sqlite => {
                let mut sql = String::new();
                let mut current = json.column.to_string();
                let mut opened = 0;
                for (level, key) in std::iter::once(None)
                    .chain(path.iter().map(Some))
                    .enumerate()
                {
                    self.aliases += 1;
                    let alias = format!("e{}", self.aliases);
                    let value = match key {
                        None => current.clone(),
                        Some(key) => format!("{current}.value -> '$.\"{key}\"'"),
                    };
                    if level > 0 {
                        sql.push_str(&format!("{current}.type = 'object' AND "));
                    }
                    sql.push_str(&format!(
                        "EXISTS (SELECT 1 FROM json_each(CASE json_type({value}) WHEN 'array' THEN {value} ELSE json_array(json({value})) END) AS {alias} WHERE "
                    ));
                    opened += 1;
                    current = alias;
                }
                sql.push_str(&test(self, &current)?);
                sql.push_str(&")".repeat(opened));
                Ok(sql)
            }
        }
    }

    /// Condition on one JSON value (`alias`) of a path.
    fn compare_json(&mut self, alias: &str, op: &str, value: &Literal) -> Result<String> {
        let pg = self.backend == Backend::Postgres;
        if let Some((op, pattern)) = like_pattern(op, value) {
            let mark = self.params.push(pattern);
            return Ok(if pg {
                format!(
                    "(jsonb_typeof({alias}) = 'string' AND {alias} #>> '{{}}' {op} {mark} ESCAPE '\\')"
                )
            } else {
                format!("({alias}.type = 'text' AND {alias}.value {op} {mark} ESCAPE '\\')")
            });
        }
        Ok(match value {
            Literal::Text(_) => {
                let mark = self.params.push(value.clone());
                if pg {
                    format!("(jsonb_typeof({alias}) = 'string' AND {alias} #>> '{{}}' {op} {mark})")
                } else {
                    format!("({alias}.type = 'text' AND {alias}.value {op} {mark})")
                }
            }
            Literal::Integer(_) | Literal::Real(_) => {
                let mark = self.params.push(value.clone());
                if pg {
                    // CASE, not AND: PostgreSQL may evaluate the cast first otherwise.
                    format!(
                        "CASE WHEN jsonb_typeof({alias}) = 'number' THEN ({alias} #>> '{{}}')::numeric {op} {mark} ELSE FALSE END"
                    )
                } else {
                    format!("({alias}.type IN ('integer', 'real') AND {alias}.value {op} {mark})")
                }
            }
            Literal::Bool(b) => {
                let wanted = match op {
                    "=" => *b,
                    "!=" => !*b,
                    _ => {
                        return Err(ManagerError::bad_request(format!(
                            "'{op}' does not compare booleans; use = or !="
                        )));
                    }
                };
                if pg {
                    format!("{alias} = '{wanted}'::jsonb")
                } else {
                    format!("{alias}.type = '{wanted}'")
                }
            }
        })
    }

    /// The value is a string, number or boolean.
    fn is_scalar(&self, alias: &str) -> String {
        match self.backend {
            Backend::Postgres => {
                format!("jsonb_typeof({alias}) IN ('string', 'number', 'boolean')")
            }
            Backend::Sqlite => format!("{alias}.type NOT IN ('object', 'array', 'null')"),
        }
    }

    /// The value exists and is not JSON null.
    fn is_present(&self, alias: &str) -> String {
        match self.backend {
            Backend::Postgres => format!("jsonb_typeof({alias}) <> 'null'"),
            Backend::Sqlite => format!("{alias}.type <> 'null'"),
        }
    }

    /// `key = value` on a scalar key of an array of objects as JSONB containment:
    /// `[{"key": value}]` is contained exactly when some element's key equals the value.
    fn containment(
        &mut self,
        json: JsonColumn,
        path: &[&str],
        op: &str,
        value: &Literal,
    ) -> Option<String> {
        if self.backend != Backend::Postgres || op != "=" {
            return None;
        }
        let [key] = path else { return None };
        if !json.scalar_keys.contains(key) {
            return None;
        }
        let value = match value {
            Literal::Text(t) => serde_json::Value::from(t.as_str()),
            Literal::Integer(i) => serde_json::Value::from(*i),
            Literal::Real(_) => return None,
            Literal::Bool(b) => serde_json::Value::from(*b),
        };
        let document = serde_json::json!([{ *key: value }]).to_string();
        let mark = self.params.push(Literal::Text(document));
        Some(format!("{}_doc @> CAST({mark} AS jsonb)", json.column))
    }
}

fn column_name(field: Field) -> &'static str {
    match field {
        Field::Text(c) | Field::Integer(c) | Field::Bool(c) => c,
        Field::Json(json) => json.column,
    }
}

fn kind_of(field: Field) -> &'static str {
    match field {
        Field::Text(_) => "text",
        Field::Integer(_) => "a number",
        Field::Bool(_) => "a boolean",
        Field::Json(_) => "JSON",
    }
}

/// LIKE and its shorthands as an SQL operator and pattern; None for other operators.
fn like_pattern(op: &str, value: &Literal) -> Option<(&'static str, Literal)> {
    let Literal::Text(t) = value else { return None };
    Some(match op {
        "LIKE" => ("LIKE", value.clone()),
        "NOT LIKE" => ("NOT LIKE", value.clone()),
        "CONTAINS" => ("LIKE", Literal::Text(format!("%{}%", escape_like(t)))),
        "STARTS_WITH" => ("LIKE", Literal::Text(format!("{}%", escape_like(t)))),
        "ENDS_WITH" => ("LIKE", Literal::Text(format!("%{}", escape_like(t)))),
        _ => return None,
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

    fn fields(field: &str) -> Option<Field> {
        Some(match field {
            "identifier" => Field::Text("identifier"),
            "tenantId" => Field::Text("tenant_id"),
            "error" => Field::Bool("error"),
            "vpas" => Field::Json(JsonColumn {
                column: "vpas",
                scalar_keys: &["type"],
            }),
            _ => return None,
        })
    }

    fn translate_on(backend: Backend, text: &str) -> Result<(String, Vec<Literal>)> {
        let mut params = Params::default();
        let sql = Predicate::parse(text)?.to_sql(&fields, backend, &mut params)?;
        Ok((sql, params.0))
    }

    fn translate(text: &str) -> (String, Vec<Literal>) {
        translate_on(Backend::Sqlite, text).unwrap()
    }

    #[test]
    fn like_and_boolean_structure_translate_to_bound_sql() {
        let (sql, params) = translate("identifier like '%provider%'");
        assert_eq!(sql, "identifier LIKE $1 ESCAPE '\\'");
        assert_eq!(params, vec![Literal::Text("%provider%".into())]);
        let (sql, params) =
            translate("(identifier = 'a' OR identifier = 'b') and tenantId NOT IN ('x', 'y')");
        assert_eq!(
            sql,
            "((identifier = $1 OR identifier = $2) AND tenant_id NOT IN ($3, $4))"
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
        assert!(sql.contains("LIKE $1"));
        assert_eq!(params, vec![Literal::Text("%50\\%\\_%".into())]);
    }

    #[test]
    fn json_paths_bind_values_and_postgres_uses_the_index_for_equality() {
        let (sql, params) = translate("vpas.type = 'cfm.connector'");
        assert!(sql.contains("json_each"), "{sql}");
        assert!(!sql.contains("cfm.connector"), "{sql}");
        assert_eq!(params, vec![Literal::Text("cfm.connector".into())]);
        let (sql, params) = translate_on(Backend::Postgres, "vpas.type = 'x'").unwrap();
        assert_eq!(sql, "vpas_doc @> CAST($1 AS jsonb)");
        assert_eq!(params, vec![Literal::Text(r#"[{"type":"x"}]"#.into())]);
        let (sql, params) = translate_on(Backend::Postgres, "vpas.type != 'x'").unwrap();
        assert!(sql.contains("jsonb_path_query"), "{sql}");
        assert_eq!(params[0], Literal::Text(r#"lax $."type"[*]"#.into()));
        // Deeper paths and other keys have no index shortcut.
        let (sql, _) = translate_on(Backend::Postgres, "vpas.properties.k = 'v'").unwrap();
        assert!(!sql.contains("@>"), "{sql}");
    }

    #[test]
    fn values_of_the_wrong_type_are_refused() {
        for bad in ["identifier = 3", "error = 'yes'", "vpas.type > true"] {
            let err = translate_on(Backend::Sqlite, bad).unwrap_err();
            assert!(matches!(err, ManagerError::BadRequest(_)), "{bad}: {err}");
        }
        let (_, params) = translate("error = true");
        assert_eq!(params, vec![Literal::Integer(1)]);
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
        for unknown in ["nope = 'x'", "identifier.x = 'y'", "vpas..type = 'x'"] {
            let err = translate_on(Backend::Sqlite, unknown)
                .unwrap_err()
                .to_string();
            assert!(err.contains("field"), "{unknown}: {err}");
        }
    }
}
