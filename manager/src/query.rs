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
//!
//! Any API client with a read token can send a predicate, so what one may ask of the
//! parser and the database is bounded ([`Limits`]): size, nesting, terms, values, path
//! length and LIKE wildcards. Nothing here recurses deeper than the nesting limit, and
//! `AND`/`OR` chains are kept flat, so no predicate can exhaust the stack.

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
    /// Two or more terms; chains are flat, so depth follows parentheses only.
    And(Vec<Expr>),
    Or(Vec<Expr>),
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

/// What one predicate may ask for. Each bound is far above what a person writes and
/// far below what costs the server: past one, the request is refused with a 400 that
/// names it (reason `predicate-<field>`, `-` for `_`: `predicate-in-values`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of predicate text.
    pub bytes: usize,
    /// Parentheses nested inside each other.
    pub depth: usize,
    /// Comparisons (`a = 1`, `b IN (...)`, `c IS NULL`) in all.
    pub terms: usize,
    /// Values in one `IN` list.
    pub in_values: usize,
    /// Values in all, every `IN` list counted.
    pub values: usize,
    /// Segments of a JSON path after its column (`vpas.properties.k` has two).
    pub path_segments: usize,
    /// Bytes of one quoted value.
    pub text_bytes: usize,
    /// `%` and `_` wildcards in one LIKE pattern.
    pub wildcards: usize,
}

impl Limits {
    pub const DEFAULT: Self = Self {
        bytes: 16 * 1024,
        depth: 16,
        terms: 64,
        in_values: 256,
        values: 1024,
        path_segments: 8,
        text_bytes: 1024,
        wildcards: 32,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl Predicate {
    /// Parses `text` under the default [`Limits`].
    pub fn parse(text: &str) -> Result<Self> {
        Self::parse_within(text, &Limits::DEFAULT)
    }

    pub fn parse_within(text: &str, limits: &Limits) -> Result<Self> {
        if text.len() > limits.bytes {
            return Err(over_limit(
                "predicate-bytes",
                format!(
                    "the predicate has {} bytes; at most {} are allowed",
                    text.len(),
                    limits.bytes
                ),
            ));
        }
        let tokens = tokenize(text)?;
        if tokens.is_empty() {
            return Ok(Self(None));
        }
        let mut parser = Parser {
            tokens,
            at: 0,
            text,
            limits,
            depth: 0,
            terms: 0,
            values: 0,
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
            Some(Expr::And(mut terms)) => {
                terms.push(compare);
                Expr::And(terms)
            }
            Some(expr) => Expr::And(vec![expr, compare]),
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
            Expr::And(terms) => self.join(terms, " AND ")?,
            Expr::Or(terms) => self.join(terms, " OR ")?,
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
                    let any = t.json_in(v, values);
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

    /// `(a AND b AND c)`: flat, so SQLite's expression depth follows the predicate's nesting.
    fn join(&mut self, terms: &[Expr], operator: &str) -> Result<String> {
        let parts = terms
            .iter()
            .map(|term| self.expr(term))
            .collect::<Result<Vec<_>>>()?;
        Ok(format!("({})", parts.join(operator)))
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

    /// One JSON value (`alias`) equals one of `values`: one flat `IN` per kind of value.
    /// Not a chain of `=` joined by `OR`: inside a path's nested subqueries SQLite counts
    /// such a chain toward its expression depth limit (1000), which 256 values passed.
    fn json_in(&mut self, alias: &str, values: &[Literal]) -> String {
        let pg = self.backend == Backend::Postgres;
        let (mut texts, mut numbers, mut bools) = (Vec::new(), Vec::new(), Vec::new());
        for value in values {
            match value {
                Literal::Text(_) => texts.push(self.params.push(value.clone())),
                Literal::Integer(_) | Literal::Real(_) => {
                    let mark = self.params.push(value.clone());
                    numbers.push(if pg {
                        format!("CAST({mark} AS numeric)")
                    } else {
                        mark
                    });
                }
                Literal::Bool(b) if !bools.contains(b) => bools.push(*b),
                Literal::Bool(_) => {}
            }
        }
        let mut kinds = Vec::new();
        if !texts.is_empty() {
            let list = texts.join(", ");
            kinds.push(if pg {
                format!("(jsonb_typeof({alias}) = 'string' AND {alias} #>> '{{}}' IN ({list}))")
            } else {
                format!("({alias}.type = 'text' AND {alias}.value IN ({list}))")
            });
        }
        if !numbers.is_empty() {
            let list = numbers.join(", ");
            kinds.push(if pg {
                // CASE, not AND: PostgreSQL may evaluate the cast first otherwise.
                format!(
                    "CASE WHEN jsonb_typeof({alias}) = 'number' THEN ({alias} #>> '{{}}')::numeric IN ({list}) ELSE FALSE END"
                )
            } else {
                format!("({alias}.type IN ('integer', 'real') AND {alias}.value IN ({list}))")
            });
        }
        for b in bools {
            kinds.push(if pg {
                format!("{alias} = '{b}'::jsonb")
            } else {
                format!("{alias}.type = '{b}'")
            });
        }
        kinds.join(" OR ")
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

/// The parser's recursion (`or` → `and` → `unary` → `or` on `(`) goes one level per
/// open parenthesis, and `depth` refuses more than the limit before recursing.
struct Parser<'a> {
    tokens: Vec<(usize, Token)>,
    at: usize,
    text: &'a str,
    limits: &'a Limits,
    depth: usize,
    terms: usize,
    values: usize,
}

impl Parser<'_> {
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

    fn expected(&self, what: &str) -> ManagerError {
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

fn over_limit(limit: &'static str, message: String) -> ManagerError {
    ManagerError::over_limit(limit, message)
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
        // A list on a path is one flat IN per kind of value, on both backends.
        for backend in [Backend::Sqlite, Backend::Postgres] {
            let (sql, params) =
                translate_on(backend, "vpas.type IN ('a', 'b', 1, 2.5, true)").unwrap();
            // Texts, numbers, booleans: three alternatives, not one per value.
            assert_eq!(sql.matches(" OR ").count(), 2, "{sql}");
            assert!(!sql.contains("= $"), "{sql}");
            assert!(!sql.contains("'a'"), "{sql}");
            assert!(params.len() >= 4);
        }
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

    fn refused_for(text: &str) -> &'static str {
        match Predicate::parse(text) {
            Err(ManagerError::OverLimit { limit, .. }) => limit,
            other => panic!("{}...: {other:?}", &text[..text.len().min(60)]),
        }
    }

    #[test]
    fn every_limit_is_refused_by_name() {
        let limits = Limits::DEFAULT;
        let term = "identifier = 'x'";
        let deep = format!(
            "{}{term}{}",
            "(".repeat(limits.depth + 1),
            ")".repeat(limits.depth + 1)
        );
        assert_eq!(refused_for(&deep), "predicate-depth");
        let wide = vec![term; limits.terms + 1].join(" AND ");
        assert_eq!(refused_for(&wide), "predicate-terms");
        let list = (0..=limits.in_values)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            refused_for(&format!("tenantId IN ({list})")),
            "predicate-in-values"
        );
        let path = format!("vpas{}", ".k".repeat(limits.path_segments + 1));
        assert_eq!(
            refused_for(&format!("{path} = 'x'")),
            "predicate-path-segments"
        );
        let long = "x".repeat(limits.text_bytes + 1);
        assert_eq!(
            refused_for(&format!("identifier = '{long}'")),
            "predicate-text-bytes"
        );
        let pattern = "%a".repeat(limits.wildcards + 1);
        assert_eq!(
            refused_for(&format!("identifier LIKE '{pattern}'")),
            "predicate-wildcards"
        );
        // The shorthands escape their wildcards: a CONTAINS of underscores is no pattern.
        translate(&format!(
            "identifier CONTAINS '{}'",
            "_".repeat(limits.wildcards + 1)
        ));
        let err = Predicate::parse(&format!("vpas.n = 1{}", "0".repeat(400))).unwrap_err();
        assert!(err.to_string().contains("a number"), "{err}");
        let huge = format!("identifier = '{}'", "x".repeat(limits.bytes));
        assert_eq!(refused_for(&huge), "predicate-bytes");
        // Many lists, each within its own bound, still count toward all values.
        let lists = (0..limits.values / limits.in_values + 1)
            .map(|_| {
                let values = vec!["1"; limits.in_values].join(",");
                format!("tenantId IN ({values})")
            })
            .collect::<Vec<_>>()
            .join(" OR ");
        assert_eq!(refused_for(&lists), "predicate-values");
    }

    #[test]
    fn everything_up_to_each_limit_is_accepted() {
        let limits = Limits::DEFAULT;
        let term = "identifier = 'x'";
        let deep = format!(
            "{}{term}{}",
            "(".repeat(limits.depth),
            ")".repeat(limits.depth)
        );
        translate(&deep);
        translate(&vec![term; limits.terms].join(" OR "));
        let path = format!("vpas{} = 'x'", ".k".repeat(limits.path_segments));
        translate(&path);
        translate(&format!(
            "identifier LIKE '{}'",
            "%a".repeat(limits.wildcards / 2)
        ));
    }

    /// What crashed the server: a stack overflow in the parser, the translator or the
    /// drop of a deep tree. Each is refused now, long before any recursion gets deep.
    #[test]
    fn predicates_that_once_overflowed_the_stack_are_refused() {
        let parens = format!("{}identifier = 'x'{}", "(".repeat(5000), ")".repeat(5000));
        assert_eq!(refused_for(&parens), "predicate-depth");
        let unclosed = "(".repeat(100_000);
        assert!(matches!(
            Predicate::parse(&unclosed),
            Err(ManagerError::OverLimit { .. })
        ));
        let chain = vec!["identifier = 'x'"; 3000].join(" AND ");
        assert_eq!(refused_for(&chain), "predicate-bytes");
        let chain = vec!["a=1"; 2000].join(" OR ");
        assert_eq!(refused_for(&chain), "predicate-terms");
    }

    #[test]
    fn chains_stay_flat_in_sql() {
        let (sql, params) =
            translate("identifier = 'a' AND identifier = 'b' AND identifier = 'c' OR error = true");
        assert_eq!(
            sql,
            "((identifier = $1 AND identifier = $2 AND identifier = $3) OR error = $4)"
        );
        assert_eq!(params.len(), 4);
        let scoped = Predicate::parse("identifier = 'a' AND identifier = 'b'")
            .unwrap()
            .and_equals("tenantId", Literal::Text("t".into()));
        let mut params = Params::default();
        let sql = scoped
            .to_sql(&fields, Backend::Postgres, &mut params)
            .unwrap();
        assert_eq!(
            sql,
            "(identifier = $1 AND identifier = $2 AND tenant_id = $3)"
        );
    }

    mod generated {
        use super::*;
        use crate::testing::predicates;
        use proptest::prelude::*;

        const FIELDS: &[&str] = &[
            "identifier",
            "tenantId",
            "error",
            "vpas",
            "vpas.type",
            "vpas.properties.k",
            "vpas.a.b.c.d.e.f.g.h.i",
            "nope",
            "identifier.x",
        ];

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Any text at all: an answer, never a panic or an overflow.
            #[test]
            fn arbitrary_text_parses_or_is_refused(text in ".{0,400}") {
                let _ = Predicate::parse(&text);
            }

            /// Grammar-shaped predicates: either refused as a client error, or SQL whose
            /// bound values stay within the limits on both backends.
            #[test]
            fn generated_predicates_translate_within_the_limits(text in predicates(FIELDS)) {
                for backend in [Backend::Sqlite, Backend::Postgres] {
                    match translate_on(backend, &text) {
                        Ok((sql, params)) => {
                            // A value each, and a JSON path's own parameter per term.
                            let limits = Limits::DEFAULT;
                            prop_assert!(params.len() <= limits.values + limits.terms);
                            prop_assert!(sql.len() < 4 << 20);
                        }
                        Err(ManagerError::BadRequest(_) | ManagerError::OverLimit { .. }) => {}
                        Err(other) => prop_assert!(false, "{other:?}"),
                    }
                }
            }
        }
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
