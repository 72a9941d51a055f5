//! Tenant Manager conformance: the REST API's contract (versions, deletes, placement,
//! the predicate language, paging), each scenario run against the real `cfm serve` once
//! on SQLite and once on PostgreSQL.

use std::time::Duration;

use cfm_manager::on_both_backends;
use cfm_manager::testing::TestBackend;
use cfm_test_support::{Api, Server};
use reqwest::Method;
use serde_json::{Value, json};

on_both_backends!(
    tenant_patches_merge_and_versions_guard_writes,
    concurrent_patches_lose_no_key,
    deletes_wait_until_participants_are_disposed,
    queries_reach_through_json_paths_and_arrays,
    tenant_lists_page_with_links,
    totals_past_the_count_limit_are_not_guessed,
    vpa_state_queries_follow_every_write,
    placement_honours_a_named_cell_and_balances_load,
    a_participant_naming_no_dataspace_joins_those_its_cell_serves,
    cells_keep_a_clients_state_timestamp,
    dataspace_profiles_keep_their_artifacts,
    a_did_is_deployed_once,
);

async fn tenant_patches_merge_and_versions_guard_writes(backend: TestBackend) {
    let server = Server::start_on(backend, &[]).await;
    let api = server.client();
    let tenant = api
        .post_ok("/tenants", json!({"properties": {"a": 1, "b": 2}}), 201)
        .await;
    let path = format!("/tenants/{}", tenant["id"].as_str().unwrap());

    let patch = json!({"properties": {"c": 3, "b": "two"}, "removed": ["a", "missing"]});
    let (status, patched) = api.call(Method::PATCH, &path, Some(patch), None).await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["properties"], json!({"b": "two", "c": 3}));
    assert_eq!(patched["version"], 1);
    let read = api.get(&path).await;
    assert_eq!(read.headers()["etag"], "\"1\"");

    // A write based on version 0 lost the race: header or body, it is refused whole.
    let stale = json!({"properties": {"d": 4}});
    let (status, body) = api
        .call(Method::PATCH, &path, Some(stale.clone()), Some("\"0\""))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["message"].as_str().unwrap().contains("version 1"));
    let (status, _) = api
        .call(
            Method::PATCH,
            &path,
            Some(json!({"properties": {"d": 4}, "version": 0})),
            None,
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(
        api.get_json(&path).await["properties"],
        patched["properties"]
    );

    let (status, current) = api
        .call(Method::PATCH, &path, Some(stale.clone()), Some("W/\"1\""))
        .await;
    assert_eq!((status, current["version"].clone()), (200, json!(2)));
    let (status, body) = api
        .call(Method::PATCH, &path, Some(stale.clone()), Some("soon"))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = api
        .call(Method::PATCH, "/tenants/nope", Some(stale), None)
        .await;
    assert_eq!(status, 404);
    let (status, body) = api
        .call(Method::PATCH, &path, Some(json!({"removed": "a"})), None)
        .await;
    assert_eq!(status, 400, "{body}");
}

async fn concurrent_patches_lose_no_key(backend: TestBackend) {
    let server = Server::start_on(backend, &[]).await;
    let api = server.client();
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let path = format!("/tenants/{}", tenant["id"].as_str().unwrap());
    let writers = (0..50).map(|i| {
        let api = server.client();
        let path = path.clone();
        tokio::spawn(async move {
            let patch = json!({"properties": {format!("k{i}"): i}});
            api.call(Method::PATCH, &path, Some(patch), None).await.0
        })
    });
    for writer in writers.collect::<Vec<_>>() {
        assert_eq!(writer.await.unwrap(), 200);
    }
    let tenant = api.get_json(&path).await;
    let properties = tenant["properties"].as_object().unwrap();
    assert_eq!(properties.len(), 50, "{tenant}");
    assert_eq!(tenant["version"], 50);
}

async fn deletes_wait_until_participants_are_disposed(backend: TestBackend) {
    let server = Server::start_on(backend, &[]).await;
    let api = server.client();
    let env = api.dataspace_with_cell("cell-del").await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let tenant_id = tenant["id"].as_str().unwrap();
    let profile = api
        .post_ok(
            &format!("/tenants/{tenant_id}/participant-profiles"),
            json!({"identifier": "did:web:leaving.example",
                   "dataspaceProfileIds": [env.dataspace_id]}),
            202,
        )
        .await;
    let profile_id = profile["id"].as_str().unwrap();
    api.wait_active(tenant_id, profile_id, Duration::from_secs(30))
        .await;

    let tenant_path = format!("/tenants/{tenant_id}");
    let cell_path = format!("/cells/{}", env.cell_id);
    let dataspace_path = format!("/dataspace-profiles/{}", env.dataspace_id);
    // One guard, one answer, whichever owner is deleted.
    for path in [&tenant_path, &cell_path, &dataspace_path] {
        let (status, body) = api.call(Method::DELETE, path, None, None).await;
        assert_eq!(status, 409, "{path}: {body}");
        assert_eq!(
            body["reason"], "participants-not-disposed",
            "{path}: {body}"
        );
        assert!(body["message"].as_str().unwrap().contains("not disposed"));
    }

    let profile_path = format!("{tenant_path}/participant-profiles/{profile_id}");
    assert_eq!(
        api.call(Method::DELETE, &profile_path, None, None).await.0,
        202
    );
    api.wait_vpas(tenant_id, profile_id, "disposed", Duration::from_secs(30))
        .await;
    let (status, _) = api
        .call(Method::DELETE, &tenant_path, None, Some("\"7\""))
        .await;
    assert_eq!(status, 409, "a stale If-Match guards deletes too");
    assert_eq!(
        api.call(Method::DELETE, &tenant_path, None, None).await.0,
        200
    );
    assert_eq!(api.get(&tenant_path).await.status(), 404);
    assert_eq!(
        api.call(Method::DELETE, &cell_path, None, None).await.0,
        200
    );
    assert_eq!(api.get(&cell_path).await.status(), 404);
    assert_eq!(
        api.call(Method::DELETE, &dataspace_path, None, None)
            .await
            .0,
        200
    );
    assert_eq!(api.get(&dataspace_path).await.status(), 404);
    assert_eq!(
        api.call(Method::DELETE, &cell_path, None, None).await.0,
        404
    );
}

async fn queries_reach_through_json_paths_and_arrays(backend: TestBackend) {
    let server = Server::start_on(backend, &[]).await;
    let api = server.client();
    let env = api.dataspace_with_cell("cell-q").await;
    let tenant = api
        .post_ok(
            "/tenants",
            json!({"properties": {"name": "Consumer", "size": 3}}),
            201,
        )
        .await;
    api.post_ok("/tenants", json!({"properties": {"name": "Provider"}}), 201)
        .await;
    let tenant_id = tenant["id"].as_str().unwrap();
    let profiles = format!("/tenants/{tenant_id}/participant-profiles");
    let create = |identifier: &str, properties: Value, vpa_properties: Value| {
        api.post_ok(
            &profiles,
            json!({"identifier": identifier, "dataspaceProfileIds": [env.dataspace_id],
                   "properties": properties, "vpaProperties": vpa_properties}),
            202,
        )
    };
    let alpha = create(
        "did:web:alpha.example",
        json!({"group": "a", "tier": 1, "tags": ["x", "y"], "nested": {"deep": true}}),
        json!({"cfm.issuer": {"k": "v"}}),
    )
    .await;
    let beta = create(
        "did:web:beta.example",
        json!({"group": "b", "tier": 2.5}),
        json!({}),
    )
    .await;
    let (alpha, beta) = (alpha["id"].as_str().unwrap(), beta["id"].as_str().unwrap());
    let mut both = vec![alpha, beta];
    both.sort();

    let cases: &[(&str, Vec<&str>)] = &[
        ("vpas.type = 'cfm.connector'", both.clone()),
        ("vpas.type = 'cfm.nothing'", vec![]),
        ("vpas.properties.k = 'v'", vec![alpha]),
        ("vpas.properties.k != 'v'", vec![]),
        ("properties.group = 'b'", vec![beta]),
        ("properties.tier >= 2", vec![beta]),
        ("properties.tier < 2", vec![alpha]),
        ("properties.tags = 'y'", vec![alpha]),
        ("properties.tags IS NULL", vec![beta]),
        ("properties.tags IS NOT NULL", vec![alpha]),
        ("properties.nested.deep = true", vec![alpha]),
        ("properties.group NOT IN ('a')", vec![beta]),
        (
            "properties.group IN ('a', 'b') AND tenantId = 'nobody'",
            vec![],
        ),
        ("identifier LIKE '%ALPHA%'", vec![]),
        (
            "identifier like '%alpha%' OR identifier ENDS_WITH 'beta.example'",
            both.clone(),
        ),
        ("identifier STARTS_WITH 'did:web:b'", vec![beta]),
        (
            "properties.group = 'a' AND (properties.tier = 1 OR error = true)",
            vec![alpha],
        ),
        ("error = false", both.clone()),
        // Upstream's "everything".
        ("true", both.clone()),
        ("properties.tier = '1'", vec![]),
    ];
    let dataspace = format!("dataspaceProfileIds = '{}'", env.dataspace_id);
    for (predicate, expected) in cases
        .iter()
        .cloned()
        .chain([(dataspace.as_str(), both.clone())])
    {
        let ids = api.profile_ids_matching(predicate).await;
        assert_eq!(ids, expected, "{predicate}");
    }

    let page = api
        .post_ok(
            "/participant-profiles/query",
            json!({"predicate": "", "offset": 1, "limit": 1}),
            200,
        )
        .await;
    assert_eq!(page[0]["id"], both[1]);
    // Every query route says how many match in all, and links the pages, as lists do.
    for (path, predicate, total) in [
        ("/participant-profiles/query", "true", 2),
        (
            "/participant-profiles/query",
            "identifier STARTS_WITH 'did:web:b'",
            1,
        ),
        ("/tenants/query", "true", 2),
        ("/orchestrations/query", "orchestrationType = 'nope'", 0),
    ] {
        let response = api
            .raw(
                Method::POST,
                path,
                Some(&json!({"predicate": predicate, "limit": 1}).to_string()),
                None,
            )
            .await;
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers();
        assert_eq!(
            headers["x-total-count"],
            total.to_string().as_str(),
            "{path}"
        );
        let link = headers["link"].to_str().unwrap();
        assert!(
            link.contains(&format!("{path}?offset=0&limit=1>; rel=\"first\"")),
            "{link}"
        );
        assert_eq!(link.contains("rel=\"next\""), total > 1, "{link}");
    }
    let tenants = api
        .post_ok(
            "/tenants/query",
            json!({"predicate": "properties.name = 'Consumer' AND properties.size > 2"}),
            200,
        )
        .await;
    assert_eq!(tenants.as_array().unwrap().len(), 1);
    assert_eq!(tenants[0]["id"], tenant_id);

    for (bad, says) in [
        ("identifier = 3", "quoted string"),
        ("vpas.type >", "position 11"),
        ("vpas..type = 'x'", "empty path"),
        ("secret = 'x'", "unknown field 'secret'"),
        ("properties.tier > true", "booleans"),
    ] {
        let (status, body) = api
            .call(
                Method::POST,
                "/participant-profiles/query",
                Some(json!({"predicate": bad})),
                None,
            )
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(says), "{bad}: {message}");
    }
}

/// Past 1,000 matches a count would read every one of them (seconds at a million) for a
/// header: lists and queries then leave `X-Total-Count` and the `last` link out, and
/// still link the next page; a page that holds the last match still tells the total.
async fn totals_past_the_count_limit_are_not_guessed(backend: TestBackend) {
    let server = Server::start_on(backend, &[]).await;
    let api = server.client();
    let db = database_of(&server).await;
    // Written straight to the table, as a fleet would have grown them.
    sqlx::query(
        "INSERT INTO tenants (id, version, properties, created_at)
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1001)
         SELECT 'bulk-' || i, 0, '{\"bulk\":true}', '2026-01-01T00:00:00Z' FROM n",
    )
    .execute(&db)
    .await
    .unwrap();
    db.close().await;
    let only = api
        .post_ok("/tenants", json!({"properties": {"one": true}}), 201)
        .await;

    let first = api.get("/tenants?limit=100").await;
    assert_eq!(first.status(), 200);
    assert!(
        first.headers().get("x-total-count").is_none(),
        "{:?}",
        first.headers()
    );
    let links = first.headers()["link"].to_str().unwrap().to_string();
    assert!(
        links.contains("offset=100&limit=100>; rel=\"next\""),
        "{links}"
    );
    assert!(!links.contains("rel=\"last\""), "{links}");

    let response = api
        .raw(
            Method::POST,
            "/tenants/query",
            Some(&json!({"predicate": "properties.bulk = true", "limit": 100}).to_string()),
            None,
        )
        .await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("x-total-count").is_none());
    let page: Value = response.json().await.unwrap();
    assert_eq!(page.as_array().unwrap().len(), 100);

    // The last page knows where the matches end, past the limit or not.
    let last = api.get("/tenants?offset=1000&limit=100").await;
    assert_eq!(last.headers()["x-total-count"], "1002");
    let narrow = api
        .raw(
            Method::POST,
            "/tenants/query",
            Some(&json!({"predicate": "properties.one = true", "limit": 1}).to_string()),
            None,
        )
        .await;
    assert_eq!(narrow.headers()["x-total-count"], "1");
    let narrow: Value = narrow.json().await.unwrap();
    assert_eq!(narrow[0]["id"], only["id"]);
}

async fn tenant_lists_page_with_links(backend: TestBackend) {
    let server = Server::start_on(backend, &[]).await;
    let api = server.client();
    for i in 0..5 {
        api.post_ok("/tenants", json!({"properties": {"i": i}}), 201)
            .await;
    }
    let all = api.get_json("/tenants").await;
    let mut ids: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    let listed = ids.clone();
    ids.sort();
    assert_eq!(listed, ids, "lists are sorted by id");

    let page = api.get("/tenants?offset=2&limit=2").await;
    assert_eq!(page.headers()["x-total-count"], "5");
    let links = page.headers()["link"].to_str().unwrap().to_string();
    for (rel, offset) in [
        ("self", 2),
        ("first", 0),
        ("prev", 0),
        ("next", 4),
        ("last", 4),
    ] {
        let link = format!("</api/v1alpha1/tenants?offset={offset}&limit=2>; rel=\"{rel}\"");
        assert!(links.contains(&link), "{link} not in {links}");
    }
    let items: Value = page.json().await.unwrap();
    assert_eq!(items[0]["id"], ids[2]);
    assert_eq!(items[1]["id"], ids[3]);
    assert_eq!(api.get("/tenants?limit=x").await.status(), 400);
    // A repeated parameter keeps its last value, as a repeated JSON key does.
    let repeated = api.get("/tenants?limit=1&limit=3").await;
    assert_eq!(
        repeated
            .json::<Value>()
            .await
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // The other lists page the same way.
    for external_id in ["c-1", "c-2", "c-3"] {
        api.post_ok("/cells", json!({"externalId": external_id}), 201)
            .await;
    }
    let cells = api.get("/cells?offset=1&limit=1").await;
    assert_eq!(cells.headers()["x-total-count"], "3");
    let links = cells.headers()["link"].to_str().unwrap().to_string();
    assert!(
        links.contains("</api/v1alpha1/cells?offset=2&limit=1>; rel=\"next\""),
        "{links}"
    );
    assert_eq!(
        cells
            .json::<Value>()
            .await
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let profiles = api
        .get(&format!("/tenants/{}/participant-profiles?limit=5", ids[0]))
        .await;
    assert_eq!(profiles.headers()["x-total-count"], "0");
    assert_eq!(api.get("/dataspace-profiles?offset=-1").await.status(), 200);
}

/// `vpas.state` is answered from `participant_vpa_states`, which triggers keep: the
/// answers follow onboarding, decommissioning and deletion, and no row outlives its
/// profile.
async fn vpa_state_queries_follow_every_write(backend: TestBackend) {
    let server = Server::start_on(backend, &[]).await;
    let api = server.client();
    let env = api.dataspace_with_cell("cell-s").await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let tenant_id = tenant["id"].as_str().unwrap();
    let ids = api
        .onboard_active(tenant_id, &env.dataspace_id, &["one", "two"])
        .await;
    let query = |predicate: &'static str| api.profile_ids_matching(predicate);
    let mut both = ids.clone();
    both.sort();
    let (one, two) = (vec![ids[0].clone()], vec![ids[1].clone()]);
    assert_eq!(query("vpas.state = 'active'").await, both);
    assert_eq!(
        query("vpas.state IN ('pending', 'error')").await,
        Vec::<String>::new()
    );
    assert_eq!(
        query("vpas.state IN ('error', 'active') AND identifier = 'did:web:two.example'").await,
        two
    );

    api.dispose(tenant_id, &ids[0]).await;
    assert_eq!(query("vpas.state = 'disposed'").await, one);
    assert_eq!(query("vpas.state = 'active'").await, two);
    // The same answers as walking the documents.
    assert_eq!(query("vpas.state != 'active'").await, one);
    let db = database_of(&server).await;
    let listed: Vec<(String, String)> = sqlx::query_as(
        "SELECT state, profile_id FROM participant_vpa_states ORDER BY profile_id, state",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let mut expected = vec![
        ("disposed".to_string(), ids[0].clone()),
        ("active".to_string(), ids[1].clone()),
    ];
    expected.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(listed, expected);

    // One profile in two states: listed twice, matched and counted once. A page of one
    // cannot tell the total, so X-Total-Count is counted (from the table alone).
    let path = format!("/tenants/{tenant_id}/participant-profiles/{}", ids[1]);
    let vpas = api.get_json(&path).await["vpas"].clone();
    let mut mixed = vpas.clone();
    mixed[0]["state"] = json!("error");
    let write_vpas = |vpas: Value| {
        let db = db.clone();
        let id = ids[1].clone();
        async move {
            sqlx::query("UPDATE participant_profiles SET vpas = $1 WHERE id = $2")
                .bind(vpas.to_string())
                .bind(id)
                .execute(&db)
                .await
                .unwrap();
        }
    };
    write_vpas(mixed).await;
    for predicate in ["vpas.state IN ('active', 'error')", "vpas.state = 'error'"] {
        let response = api
            .raw(
                Method::POST,
                "/participant-profiles/query",
                Some(&json!({"predicate": predicate, "limit": 1}).to_string()),
                None,
            )
            .await;
        assert_eq!(response.headers()["x-total-count"], "1", "{predicate}");
        let found: Value = response.json().await.unwrap();
        assert_eq!(found[0]["id"], ids[1].as_str(), "{predicate}");
    }
    write_vpas(vpas).await;

    api.dispose(tenant_id, &ids[1]).await;
    let (status, body) = api
        .call(Method::DELETE, &format!("/tenants/{tenant_id}"), None, None)
        .await;
    assert_eq!(status, 200, "{body}");
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM participant_vpa_states")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(left, 0);
    assert_eq!(query("vpas.state = 'disposed'").await, Vec::<String>::new());
    db.close().await;
}

/// The server's database, opened beside it.
async fn database_of(server: &Server) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    let url = match server.database_url() {
        Some(url) => url.to_string(),
        None => format!("sqlite://{}", server.data_dir().join("cfm.db").display()),
    };
    sqlx::AnyPool::connect(&url).await.unwrap()
}

async fn placement_honours_a_named_cell_and_balances_load(backend: TestBackend) {
    let server = Server::start_on(backend, &[]).await;
    let api = server.client();
    let env = api.dataspace_with_cell("cell-a").await;
    let cell_b = api
        .post_ok("/cells", json!({"externalId": "cell-b"}), 201)
        .await;
    api.post_ok(
        &format!("/dataspace-profiles/{}/deployments", env.dataspace_id),
        json!({"cellId": cell_b["id"]}),
        202,
    )
    .await;
    let bare = api
        .post_ok("/cells", json!({"externalId": "cell-bare"}), 201)
        .await;
    let locked = api
        .post_ok(
            "/cells",
            json!({"externalId": "cell-locked", "state": "locked"}),
            201,
        )
        .await;
    api.post_ok(
        &format!("/dataspace-profiles/{}/deployments", env.dataspace_id),
        json!({"cellId": "cell-locked"}),
        202,
    )
    .await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let tenant_id = tenant["id"].as_str().unwrap();
    let deployed = std::sync::atomic::AtomicUsize::new(0);
    let deploy = |cell: Value| {
        let api: &Api = &api;
        let env = &env;
        // A DID is one live participant: each deployment names its own.
        let n = deployed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move {
            let (status, body) = api
                .call(
                    Method::POST,
                    &format!("/tenants/{tenant_id}/participant-profiles"),
                    Some(
                        json!({"identifier": format!("did:web:p{n}.example"), "cellId": cell,
                                "dataspaceProfileIds": [env.dataspace_id]}),
                    ),
                    None,
                )
                .await;
            let placed = body["vpas"][0]["cellId"].as_str().unwrap_or_default();
            let message = body["message"].as_str().unwrap_or_default();
            (status, format!("{placed}{message}"))
        }
    };
    let (a, b) = (env.cell_id.as_str(), cell_b["id"].as_str().unwrap());
    // Named by external id, then the least loaded, then a stale id falls back to it.
    assert_eq!(deploy(json!("cell-a")).await, (202, a.to_string()));
    assert_eq!(deploy(json!(null)).await, (202, b.to_string()));
    let lowest = a.min(b).to_string();
    assert_eq!(deploy(json!("stale-id")).await, (202, lowest));
    for (cell, why) in [
        (bare["id"].clone(), "has no active deployment"),
        (locked["id"].clone(), "is locked"),
    ] {
        let (status, message) = deploy(cell.clone()).await;
        assert_eq!(status, 409, "{cell}: {message}");
        assert!(message.contains(why), "{cell}: {message}");
    }
    let lonely = api
        .post_ok("/dataspace-profiles", json!({"dataspaceSpec": {}}), 201)
        .await;
    let (status, body) = api
        .call(
            Method::POST,
            &format!("/tenants/{tenant_id}/participant-profiles"),
            Some(json!({"identifier": "did:web:p.example",
                        "dataspaceProfileIds": [lonely["id"]]})),
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["reason"], "no-cell-fits", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("has no active deployment"),
        "{body}"
    );
    let (status, body) = api
        .call(
            Method::POST,
            &format!("/tenants/{tenant_id}/participant-profiles"),
            Some(json!({"identifier": "did:web:p.example", "dataspaceProfileIds": ["nope"]})),
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("'nope'"));
}

/// Upstream's clients (JAD's) deploy participants without `dataspaceProfileIds`: such a
/// participant joins the dataspaces its cell serves, or every one when the cell serves
/// none, gets their credentials, and its profile says which.
async fn a_participant_naming_no_dataspace_joins_those_its_cell_serves(backend: TestBackend) {
    let server = Server::start_on(backend, &[]).await;
    let api = server.client();
    let env = api.dataspace_with_cell("cell-n").await;
    // Deployed to no cell.
    let other = api
        .post_ok(
            "/dataspace-profiles",
            json!({"dataspaceSpec": {"credentialSpecs": [{"id": "other", "type": "OtherCredential",
                   "issuer": "did:web:issuer.example", "format": "vc20-bssl/jwt"}]}}),
            201,
        )
        .await;
    let other_id = other["id"].as_str().unwrap().to_string();
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let profiles = format!(
        "/tenants/{}/participant-profiles",
        tenant["id"].as_str().unwrap()
    );

    let served = api
        .post_ok(
            &profiles,
            json!({"identifier": "did:web:n.example", "cellId": env.cell_id}),
            202,
        )
        .await;
    assert_eq!(served["dataspaceProfileIds"], json!([env.dataspace_id]));
    let deploy = api
        .orchestrations_of(served["id"].as_str().unwrap(), "deploy")
        .await;
    let credentials = &deploy[0]["processingData"]["cfm.vpa.credentials"];
    assert_eq!(
        credentials.as_array().map(Vec::len),
        Some(1),
        "{credentials}"
    );
    assert_eq!(credentials[0]["id"], "membership", "{credentials}");

    let bare = api
        .post_ok("/cells", json!({"externalId": "cell-bare"}), 201)
        .await;
    let everywhere = api
        .post_ok(
            &profiles,
            json!({"identifier": "did:web:m.example", "cellId": bare["id"]}),
            202,
        )
        .await;
    let mut joined: Vec<String> =
        serde_json::from_value(everywhere["dataspaceProfileIds"].clone()).unwrap();
    joined.sort();
    let mut all = vec![env.dataspace_id.clone(), other_id];
    all.sort();
    assert_eq!(joined, all);
    // Stored, not only answered: the query language finds it by a joined dataspace.
    let found = api
        .post_ok(
            "/participant-profiles/query",
            json!({"predicate": format!("dataspaceProfileIds = '{}'", all[1])}),
            200,
        )
        .await;
    assert!(
        found
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == everywhere["id"]),
        "{found}"
    );
}

/// Upstream keeps the `stateTimestamp` a client registers a cell with; one that is not a
/// timestamp is the client's mistake, and nothing is created.
async fn cells_keep_a_clients_state_timestamp(backend: TestBackend) {
    let server = Server::start_on(backend, &[]).await;
    let api = server.client();
    let given = "2026-07-01T10:00:00Z";
    let cell = api
        .post_ok(
            "/cells",
            json!({"externalId": "cell-t", "stateTimestamp": given}),
            201,
        )
        .await;
    assert_eq!(cell["stateTimestamp"], given);
    let read = api
        .get_json(&format!("/cells/{}", cell["id"].as_str().unwrap()))
        .await;
    assert_eq!(read["stateTimestamp"], given);
    let (status, body) = api
        .call(
            Method::POST,
            "/cells",
            Some(json!({"externalId": "cell-u", "stateTimestamp": "yesterday"})),
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("RFC 3339"),
        "{body}"
    );
    let cells = api.get_json("/cells").await;
    assert_eq!(cells.as_array().unwrap().len(), 1, "{cells}");
}

async fn dataspace_profiles_keep_their_artifacts(backend: TestBackend) {
    let server = Server::start_on(backend, &[]).await;
    let api = server.client();
    let artifacts = json!([
        "https://dataspace.example/policies/membership.json",
        "urn:x"
    ]);
    let created = api
        .post_ok("/dataspace-profiles", json!({"artifacts": artifacts}), 201)
        .await;
    assert_eq!(created["artifacts"], artifacts);
    let read = api
        .get_json(&format!(
            "/dataspace-profiles/{}",
            created["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(read["artifacts"], artifacts);
    // None given, none shown (upstream leaves the empty list out too).
    let bare = api.post_ok("/dataspace-profiles", json!({}), 201).await;
    assert!(bare.get("artifacts").is_none(), "{bare}");
    let (status, body) = api
        .call(
            Method::POST,
            "/dataspace-profiles",
            Some(json!({"artifacts": [1, 2]})),
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");
}

/// Services key holders and credentials by DID: a second live participant with another's
/// DID, in any tenant, is refused; once the first is disposed the DID is free again. A DID
/// that could leave a URL path segment is no DID.
async fn a_did_is_deployed_once(backend: TestBackend) {
    let server = Server::start_on(backend, &[]).await;
    let api = server.client();
    let env = api.dataspace_with_cell("cell-d").await;
    let deploy = |tenant: String, did: &'static str| {
        let api = api.clone();
        let dataspace = env.dataspace_id.clone();
        async move {
            api.call(
                Method::POST,
                &format!("/tenants/{tenant}/participant-profiles"),
                Some(json!({"identifier": did, "dataspaceProfileIds": [dataspace]})),
                None,
            )
            .await
        }
    };
    let first = api.post_ok("/tenants", json!({}), 201).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let second = api.post_ok("/tenants", json!({}), 201).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, profile) = deploy(first.clone(), "did:web:twin.example").await;
    assert_eq!(status, 202, "{profile}");
    let (status, body) = deploy(second.clone(), "did:web:twin.example").await;
    assert_eq!(status, 409, "{body}");
    let id = profile["id"].as_str().unwrap();
    api.wait_active(&first, id, Duration::from_secs(30)).await;
    api.dispose(&first, id).await;
    let (status, body) = deploy(second.clone(), "did:web:twin.example").await;
    assert_eq!(status, 202, "{body}");
    for bad in [
        "did:web:x/../../issuer/holders/did:web:v",
        "did:web:v.example?x",
    ] {
        let (status, body) = deploy(second.clone(), bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
}
