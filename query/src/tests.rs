//! The language's own tests: translation, refusals and generated predicates.

use super::*;

fn fields(field: &str) -> Option<Field> {
    Some(match field {
        "identifier" => Field::Text("identifier"),
        "tenantId" => Field::Text("tenant_id"),
        "error" => Field::Bool("error"),
        "vpas" => Field::Json(JsonColumn {
            column: "vpas",
            scalar_keys: &["type"],
            key_tables: &[KeyTable {
                key: "state",
                table: "vpa_states",
                value: "state",
                row: "profile_id",
            }],
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
    // Upstream's "everything": the bare keyword, in any case; not a term of its own.
    for everything in ["true", "TRUE", " True "] {
        assert_eq!(translate(everything).0, "1 = 1", "{everything}");
    }
    assert!(translate_on(Backend::Sqlite, "true AND identifier = 'a'").is_err());
    assert!(translate_on(Backend::Sqlite, "false").is_err());
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
        let (sql, params) = translate_on(backend, "vpas.type IN ('a', 'b', 1, 2.5, true)").unwrap();
        // Texts, numbers, booleans: three alternatives, not one per value.
        assert_eq!(sql.matches(" OR ").count(), 2, "{sql}");
        assert!(!sql.contains("= $"), "{sql}");
        assert!(!sql.contains("'a'"), "{sql}");
        assert!(params.len() >= 4);
    }
    // A key listed in a table of its own reads that table, on both backends, for equality
    // and lists of strings; other comparisons and values walk the documents.
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let (sql, params) = translate_on(backend, "vpas.state IN ('error', 'pending')").unwrap();
        assert_eq!(
            sql,
            "id IN (SELECT profile_id FROM vpa_states WHERE state IN ($1, $2))"
        );
        assert_eq!(params.len(), 2);
        let (sql, _) = translate_on(backend, "vpas.state = 'error'").unwrap();
        assert!(
            sql.starts_with("id IN (SELECT profile_id FROM vpa_states"),
            "{sql}"
        );
        // Where it must hold for every match, beside other terms too.
        let (sql, _) = translate_on(
            backend,
            "identifier = 'x' AND (vpas.state = 'a' AND error = false)",
        )
        .unwrap();
        assert!(
            sql.contains("id IN (SELECT profile_id FROM vpa_states"),
            "{sql}"
        );
        for walked in [
            "vpas.state != 'error'",
            "vpas.state NOT IN ('error')",
            "vpas.state = 3",
            "vpas.state IN ('error', 3)",
            "vpas.state LIKE 'err%'",
            "vpas.state.deeper = 'x'",
            "vpas.state = 'active' OR identifier = 'x'",
            "identifier = 'x' AND (vpas.state = 'a' OR vpas.state = 'b')",
        ] {
            let (sql, _) = translate_on(backend, walked).unwrap();
            assert!(!sql.contains("vpa_states"), "{walked}: {sql}");
        }
    }
    // Deeper paths and other keys have no index shortcut.
    let (sql, _) = translate_on(Backend::Postgres, "vpas.properties.k = 'v'").unwrap();
    assert!(!sql.contains("@>"), "{sql}");
}

#[test]
fn values_of_the_wrong_type_are_refused() {
    for bad in ["identifier = 3", "error = 'yes'", "vpas.type > true"] {
        let err = translate_on(Backend::Sqlite, bad).unwrap_err();
        assert!(matches!(err, QueryError::Invalid(_)), "{bad}: {err}");
    }
    let (_, params) = translate("error = true");
    assert_eq!(params, vec![Literal::Integer(1)]);
}

fn refused_for(text: &str) -> &'static str {
    match Predicate::parse(text) {
        Err(QueryError::OverLimit { limit, .. }) => limit,
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
        Err(QueryError::OverLimit { .. })
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
                    // A refusal, never a panic; the type admits no other error.
                    Err(QueryError::Invalid(_) | QueryError::OverLimit { .. }) => {}
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

#[test]
fn a_page_tells_the_total_only_when_it_holds_the_last_match() {
    let page = |offset, limit| Page::new(Some(offset), Some(limit));
    assert_eq!(page(0, 100).total_if_last(0), Some(0), "nothing matches");
    assert_eq!(page(0, 100).total_if_last(42), Some(42));
    assert_eq!(page(200, 100).total_if_last(7), Some(207));
    assert_eq!(
        page(0, 100).total_if_last(100),
        None,
        "a full page may have more after it"
    );
    assert_eq!(
        page(500, 100).total_if_last(0),
        None,
        "an empty page past the first says only that the matches end before it"
    );
}

#[test]
fn matches_past_the_count_limit_are_told_as_more_than_it() {
    let page = |offset, limit| Page::new(Some(offset), Some(limit));
    assert_eq!(
        page(COUNT_LIMIT, 100).total_if_known(7),
        Some(Total::Exact(COUNT_LIMIT + 7)),
        "a last page tells the total, however far it is"
    );
    assert_eq!(
        page(COUNT_LIMIT - 50, 100).total_if_known(100),
        Some(Total::MoreThan(COUNT_LIMIT)),
        "a full page reaching past the limit needs no count"
    );
    assert_eq!(
        page(0, 100).total_if_known(100),
        None,
        "a full page within the limit needs one"
    );
    assert_eq!(
        page(COUNT_LIMIT * 5, 100).total_if_known(0),
        None,
        "an empty page far in may be past fewer matches than its offset"
    );
    assert_eq!(Total::counted(COUNT_LIMIT), Total::Exact(COUNT_LIMIT));
    assert_eq!(
        Total::counted(COUNT_LIMIT + 1),
        Total::MoreThan(COUNT_LIMIT)
    );
}
