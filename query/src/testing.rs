//! Generated inputs for property tests of the language (feature `testing`).

/// Predicates built from the query grammar over `fields`: nested and wide, with every
/// operator and value kind, long `IN` lists, quotes and wildcards, often past a limit.
/// For property tests of the parser and of the query routes on real databases.
pub fn predicates(fields: &'static [&'static str]) -> proptest::strategy::BoxedStrategy<String> {
    use proptest::prelude::*;
    let field = prop::sample::select(fields);
    let text = "[a-z%_'\\\\]{0,12}".prop_map(|s| format!("'{}'", s.replace('\'', "''")));
    let value = prop_oneof![
        text.clone(),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| f.to_string()),
        prop::bool::ANY.prop_map(|b| b.to_string()),
    ];
    let ordering = prop::sample::select(vec!["=", "!=", "<", "<=", ">", ">="]);
    let like = prop::sample::select(vec![
        "LIKE",
        "NOT LIKE",
        "CONTAINS",
        "STARTS_WITH",
        "ENDS_WITH",
    ]);
    // The LIKE family takes a pattern: mostly a quoted one, now and then a number.
    let pattern = prop_oneof![9 => text, 1 => any::<i64>().prop_map(|i| i.to_string())];
    let compare = prop_oneof![
        (field.clone(), ordering, value.clone()).prop_map(|(f, o, v)| format!("{f} {o} {v}")),
        (field.clone(), like, pattern).prop_map(|(f, o, v)| format!("{f} {o} {v}")),
    ];
    // Mostly short lists, now and then one past the limit of 256.
    let values = prop_oneof![
        9 => prop::collection::vec(value.clone(), 1..40),
        1 => prop::collection::vec(value.clone(), 250..300),
    ];
    let list = (field.clone(), prop::bool::ANY, values).prop_map(|(f, negated, values)| {
        let not = if negated { "NOT " } else { "" };
        format!("{f} {not}IN ({})", values.join(", "))
    });
    let null = (field, prop::bool::ANY)
        .prop_map(|(f, negated)| format!("{f} IS {}NULL", if negated { "NOT " } else { "" }));
    let leaf = prop_oneof![4 => compare, 1 => list, 1 => null];
    // Deep enough to pass the nesting limit (16) at times, wide enough to pass the terms
    // limit (64) at times; most predicates stay inside both.
    leaf.prop_recursive(20, 72, 6, |inner| {
        prop_oneof![
            inner.clone().prop_map(|p| format!("({p})")),
            (prop::collection::vec(inner, 2..8), prop::bool::ANY)
                .prop_map(|(terms, and)| terms.join(if and { " AND " } else { " OR " })),
        ]
    })
    .boxed()
}
