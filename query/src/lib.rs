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

mod parse;
mod sql;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

pub use sql::Backend;

/// Why a predicate was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// Not a predicate of this language, or one naming a field the resource lacks.
    #[error("{0}")]
    Invalid(String),
    /// Past one of the [`Limits`]; `limit` names which (`predicate-depth`, ...), for
    /// clients to match on.
    #[error("{message}")]
    OverLimit {
        /// Which limit: `predicate-` and the [`Limits`] field, `-` for `_`.
        limit: &'static str,
        /// What the predicate holds and what is allowed, for a person to read.
        message: String,
    },
}

/// What parsing and translating a predicate return.
pub type Result<T, E = QueryError> = std::result::Result<T, E>;

/// Paging of a query: `offset` and `limit` (0 or over the maximum means the maximum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Matching rows skipped before the page starts.
    pub offset: i64,
    /// The most rows the page holds, 1 to [`MAX_PAGE`].
    pub limit: i64,
}

/// The most rows one page holds.
pub const MAX_PAGE: i64 = 10_000;

impl Page {
    /// The page a request asks for: a missing or negative `offset` is 0, a missing
    /// `limit` or one outside 1 to [`MAX_PAGE`] is [`MAX_PAGE`].
    pub fn new(offset: Option<i64>, limit: Option<i64>) -> Self {
        let limit = match limit {
            Some(l) if l > 0 && l <= MAX_PAGE => l,
            _ => MAX_PAGE,
        };
        Self {
            offset: offset.unwrap_or(0).max(0),
            limit,
        }
    }

    /// How many rows match in all, when this page, holding `found` of them, tells: one
    /// that is not full holds the last match (unless it is empty past the first page,
    /// where the matches may end before it). `None` when only counting can tell.
    pub fn total_if_last(&self, found: usize) -> Option<i64> {
        let found = i64::try_from(found).ok()?;
        (found < self.limit && (found > 0 || self.offset == 0)).then_some(self.offset + found)
    }

    /// [`Page::total_if_last`] as a [`Total`], or [`Total::MoreThan`] when this full
    /// page already runs past [`COUNT_LIMIT`]: `None` when only a count can tell.
    pub fn total_if_known(&self, found: usize) -> Option<Total> {
        if let Some(total) = self.total_if_last(found) {
            return Some(Total::Exact(total));
        }
        // Not the last page: a full one, or an empty one past the first that says nothing.
        let found = i64::try_from(found).ok().filter(|&found| found > 0)?;
        (self.offset.saturating_add(found) > COUNT_LIMIT).then_some(Total::MoreThan(COUNT_LIMIT))
    }
}

/// The most matches a count reads: past it, the total is told as [`Total::MoreThan`]
/// instead of counted. A count reads every row it counts, so at a million matches it
/// reads the whole table (2 s on PostgreSQL) for one header; 1,001 rows take a few
/// milliseconds.
pub const COUNT_LIMIT: i64 = 1_000;

/// How many rows match in all (`X-Total-Count`), as far as counting them is worth it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Total {
    /// Exactly this many.
    Exact(i64),
    /// More than this many ([`COUNT_LIMIT`]); the count stopped there.
    MoreThan(i64),
}

impl Total {
    /// The total a capped count (see [`Predicate::select_count_capped`]) read.
    pub fn counted(rows: i64) -> Total {
        if rows > COUNT_LIMIT {
            Total::MoreThan(COUNT_LIMIT)
        } else {
            Total::Exact(rows)
        }
    }
}

impl Default for Page {
    fn default() -> Self {
        Self::new(None, None)
    }
}

/// A parsed predicate; `None` (the default) matches everything.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Predicate(Option<Expr>);

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
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

/// A value in a predicate, and a parameter bound to a statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// A quoted string.
    Text(String),
    /// A number that fits an `i64`.
    Integer(i64),
    /// Any other finite number.
    Real(f64),
    /// `true` or `false`.
    Bool(bool),
}

/// What a queryable field of a resource is stored as.
#[derive(Debug, Clone, Copy)]
pub enum Field {
    /// A text column, by name.
    Text(&'static str),
    /// An integer column, by name; compared with any number.
    Integer(&'static str),
    /// An integer column holding 0 or 1.
    Bool(&'static str),
    /// A JSON document, queried by dotted paths into it.
    Json(JsonColumn),
}

/// A column holding a JSON document. On PostgreSQL its parsed copy is `<column>_doc`.
#[derive(Debug, Clone, Copy)]
pub struct JsonColumn {
    /// The column's name in SQL.
    pub column: &'static str,
    /// For a column holding an array of objects: keys whose values are always scalars.
    /// On PostgreSQL `key = value` on them is a JSONB containment test, which means the
    /// same as the path and is answered from the column's GIN index (or, for a value
    /// most rows have, by walking the rows in id order and stopping at the page's end).
    pub scalar_keys: &'static [&'static str],
    /// Keys whose string values are also listed in a table of their own, on both
    /// backends: `key = 'v'` and `key IN ('v', ...)` become an `id IN` over that table,
    /// and a predicate that is nothing else is counted in that table alone.
    pub key_tables: &'static [KeyTable],
}

/// A table that lists, for each row of a resource, the distinct string values one key of
/// a JSON column takes (for `vpas`: `state`), with an index on `(value, row)`.
///
/// A value many rows share is read from it in id order, a page at a time; from a JSONB
/// GIN index a page cost fetching and sorting every match. The table must be kept in
/// step with the column (triggers do it for `participant_vpa_states`), so that for every
/// document the application writes a predicate reading it means what the JSON path means.
#[derive(Debug, Clone, Copy)]
pub struct KeyTable {
    /// The key in the column's documents.
    pub key: &'static str,
    /// The table's name in SQL.
    pub table: &'static str,
    /// Its column holding one value of the key.
    pub value: &'static str,
    /// Its column holding the id of the resource's row.
    pub row: &'static str,
}

/// The parameters of a statement being built, numbered `$1`, `$2`, ... in order.
#[derive(Debug, Default)]
pub struct Params(pub(crate) Vec<Literal>);

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
    /// The bounds [`Predicate::parse`] applies, and so every query route.
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

    /// Parses `text`, refusing it past any of `limits`.
    pub fn parse_within(text: &str, limits: &Limits) -> Result<Self> {
        if text.len() > limits.bytes {
            return Err(parse::over_limit(
                "predicate-bytes",
                format!(
                    "the predicate has {} bytes; at most {} are allowed",
                    text.len(),
                    limits.bytes
                ),
            ));
        }
        let tokens = parse::tokenize(text)?;
        if tokens.is_empty() || parse::is_bare_true(&tokens) {
            return Ok(Self(None));
        }
        parse::Parser::new(tokens, text, limits)
            .predicate()
            .map(|expr| Self(Some(expr)))
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

    /// How many rows of `select` (the same `SELECT ... FROM table` as [`Predicate::select_page`]
    /// takes) this predicate matches in all: what `X-Total-Count` says.
    pub fn select_count(
        &self,
        select: &str,
        fields: &dyn Fn(&str) -> Option<Field>,
        backend: Backend,
    ) -> Result<Query<'static, Any, AnyArguments>> {
        self.counting(select, fields, backend, None)
    }

    /// Like [`Predicate::select_count`], but reading no more than [`COUNT_LIMIT`] + 1
    /// matches: what `X-Total-Count` says, through [`Total::counted`].
    pub fn select_count_capped(
        &self,
        select: &str,
        fields: &dyn Fn(&str) -> Option<Field>,
        backend: Backend,
    ) -> Result<Query<'static, Any, AnyArguments>> {
        self.counting(select, fields, backend, Some(COUNT_LIMIT + 1))
    }

    /// A predicate that is one comparison a [`KeyTable`] answers is counted in that table
    /// alone: its rows are kept with the resource's, so every id it lists is a row that
    /// matches, and the count skips a probe of the resource's table per match (at a million
    /// profiles, 1,001 matches of `vpas.state = 'error'`: 5 ms with the probes, 0.6 ms
    /// without). DISTINCT: a row listed under two of the values is one match.
    fn counting(
        &self,
        select: &str,
        fields: &dyn Fn(&str) -> Option<Field>,
        backend: Backend,
        cap: Option<i64>,
    ) -> Result<Query<'static, Any, AnyArguments>> {
        let mut params = Params::default();
        let listed = match &self.0 {
            Some(expr) => {
                sql::Translator::new(fields, backend, &mut params).key_table_comparison(expr)?
            }
            None => None,
        };
        let rows = match listed {
            Some((listed, condition)) => format!(
                "SELECT DISTINCT {} FROM {} WHERE {condition}",
                listed.row, listed.table
            ),
            None => {
                let condition = self.to_sql(fields, backend, &mut params)?;
                let from = select.find(" FROM ").map_or(select, |at| &select[at..]);
                format!("SELECT 1{from} WHERE {condition}")
            }
        };
        let sql = match cap {
            None => format!("SELECT COUNT(*) FROM ({rows}) AS matches"),
            Some(cap) => {
                let cap = params.push(Literal::Integer(cap));
                format!("SELECT COUNT(*) FROM ({rows} LIMIT {cap}) AS matches")
            }
        };
        Ok(params.query(sql))
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
            Some(expr) => sql::Translator::new(fields, backend, params).expr(expr),
        }
    }
}
