//! Fleet operations: cells with capacity and labels, placement, migrating a participant
//! between cells (and a migration that fails before its switch), and draining a cell,
//! through the real `cfm serve` with the built-in plugins on the embedded backends (one
//! cluster folder per cell, one zone file), and concurrent placement on two `cfm manager`
//! replicas sharing PostgreSQL.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use cfm_manager::on_both_backends;
use cfm_manager::testing::TestBackend;
use cfm_test_support::{Api, Deployment, Server, nats_url};
use reqwest::Method;
use serde_json::{Value, json};

on_both_backends!(
    cells_place_migrate_and_drain,
    a_rebalance_plan_brings_a_new_cell_into_the_band,
    fleet_routes_refuse_bad_input
);

async fn cells_place_migrate_and_drain(backend: TestBackend) {
    let server = Server::start_on(backend, &["--no-seed"]).await;
    let api = server.client();
    template(&api).await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let tenant = tenant["id"].as_str().unwrap().to_string();
    let cells: Vec<String> = create_cells(&api, &["a", "b", "c"], 2).await;

    // Versions and states of cells.
    let (status, _) = api
        .call(
            Method::PATCH,
            &format!("/cells/{}", cells[0]),
            Some(json!({"labels": {"tier": "gold"}})),
            Some("\"7\""),
        )
        .await;
    assert_eq!(status, 409, "a stale If-Match");
    let (status, body) = api
        .call(
            Method::PATCH,
            &format!("/cells/{}", cells[0]),
            Some(json!({"state": "draining"})),
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");

    // Spread placement: two participants per cell, then nothing fits.
    let mut profiles = Vec::new();
    for i in 0..6 {
        profiles.push(onboard(&api, &tenant, i, json!({})).await);
    }
    for id in &profiles {
        api.wait_active(&tenant, id, Duration::from_secs(60)).await;
    }
    for cell in api.get_json("/cells").await.as_array().unwrap() {
        assert_eq!(cell["usage"]["participants"], 2, "{cell}");
        assert_eq!(cell["usage"]["utilisation"], 1.0, "{cell}");
    }
    let (status, refused) = deploy(&api, &tenant, 6, json!({})).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["reason"], "no-cell-fits");
    let reasons = refused["details"]["cells"].as_array().unwrap();
    assert_eq!(reasons.len(), 3, "{refused}");
    assert!(
        reasons
            .iter()
            .all(|r| r["reason"].as_str().unwrap().starts_with("is full")),
        "{refused}"
    );

    // Labels: a fourth cell in another region takes only who asks for it.
    let d = create_cell(&api, "d", 10, "us").await;
    let (status, refused) = deploy(
        &api,
        &tenant,
        7,
        json!({"cfm.requiredCellLabels": {"region": "mars"}}),
    )
    .await;
    assert_eq!(status, 409);
    assert!(
        refused
            .to_string()
            .contains("has label region=us, not mars"),
        "{refused}"
    );
    let placed = onboard(
        &api,
        &tenant,
        8,
        json!({"cfm.requiredCellLabels": {"region": "us"}}),
    )
    .await;
    let placed = api
        .wait_active(&tenant, &placed, Duration::from_secs(60))
        .await;
    assert_eq!(placed["vpas"][0]["cellId"], d);

    // A live migration, make-before-break.
    let moving = &profiles[0];
    let source = cell_of(&api, &tenant, moving).await;
    let migration = api
        .post_ok(
            &format!("/tenants/{tenant}/participant-profiles/{moving}/migrations"),
            json!({"targetCellId": d}),
            202,
        )
        .await;
    assert_eq!(migration["state"], "provisioning");
    let during = api
        .get_json(&format!("/tenants/{tenant}/participant-profiles/{moving}"))
        .await;
    assert!(
        during["vpas"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["state"] == "active"),
        "{during}"
    );
    // Still under way (the second migration below is refused): a read of the profile
    // shows it; once it has ended, reads do not.
    assert_eq!(during["migration"]["id"], migration["id"], "{during}");
    let (status, _) = api
        .call(
            Method::POST,
            &format!("/tenants/{tenant}/participant-profiles/{moving}/migrations"),
            Some(json!({"targetCellId": d})),
            None,
        )
        .await;
    assert_eq!(status, 409, "one migration of a participant at a time");
    let done = wait_migration(&api, &tenant, moving, "completed").await;
    assert_eq!(done["sourceCellId"], source);
    let after = api
        .get_json(&format!("/tenants/{tenant}/participant-profiles/{moving}"))
        .await;
    assert!(after.get("migration").is_none(), "{after}");
    assert_eq!(cell_of(&api, &tenant, moving).await, d);
    let data = server.data_dir();
    assert!(
        !namespace_in(&data, &source, moving),
        "the source still holds the namespace: {}",
        server.log()
    );
    assert!(
        namespace_in(&data, &d, moving),
        "the target lacks the namespace"
    );
    let config_map = std::fs::read_to_string(data.join(format!(
        "cluster/{d}/cfm-{moving}/ConfigMap/participant-context.yaml"
    )))
    .unwrap();
    assert!(config_map.contains(&d), "{config_map}");
    assert_eq!(record(&data, moving), "d.cells.cfm.local.");

    // A migration that fails before its switch (the target cell's DNS target is refused)
    // rolls back: the participant stays active in its source, the target holds nothing.
    let broken = create_cell(&api, "e", 5, "eu").await;
    api.call(
        Method::PATCH,
        &format!("/cells/{broken}"),
        Some(json!({"properties": {"dnsTarget": "bad;target"}})),
        None,
    )
    .await;
    let unlucky = &profiles[1];
    let home = cell_of(&api, &tenant, unlucky).await;
    api.post_ok(
        &format!("/tenants/{tenant}/participant-profiles/{unlucky}/migrations"),
        json!({"targetCellId": broken}),
        202,
    )
    .await;
    let rolled_back = wait_migration(&api, &tenant, unlucky, "rolled-back").await;
    assert!(
        rolled_back["errorDetail"]
            .as_str()
            .unwrap()
            .contains("record data"),
        "{rolled_back}"
    );
    let after = api
        .get_json(&format!("/tenants/{tenant}/participant-profiles/{unlucky}"))
        .await;
    assert!(
        after["vpas"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["state"] == "active" && v["cellId"] == home.as_str()),
        "{after}"
    );
    assert!(
        !namespace_in(&data, &broken, unlucky),
        "the failed target keeps objects"
    );
    assert!(namespace_in(&data, &home, unlucky));
    assert!(
        record(&data, unlucky).starts_with(&name_of(&api, &home).await),
        "routing left the source"
    );
    let broken_cell = api.get_json(&format!("/cells/{broken}")).await;
    assert_eq!(broken_cell["usage"]["participants"], 0);
    assert_eq!(broken_cell["usage"]["arriving"], 0);
    api.call(
        Method::PATCH,
        &format!("/cells/{broken}"),
        Some(json!({"state": "cordoned"})),
        None,
    )
    .await;

    // Draining the unlucky participant's cell moves everyone out, two at a time.
    api.call(
        Method::PATCH,
        &format!("/cells/{d}"),
        Some(json!({"capacity": {"maxParticipants": 20}})),
        None,
    )
    .await;
    let before = api.get_json(&format!("/cells/{home}")).await;
    let drain = api
        .post_ok(
            &format!("/cells/{home}/drain"),
            json!({"parallelism": 2}),
            202,
        )
        .await;
    assert_eq!(drain["state"], "running");
    assert_eq!(drain["total"], before["usage"]["participants"]);
    assert!(drain["total"].as_i64().unwrap() >= 1);
    let deadline = Instant::now() + Duration::from_secs(90);
    let drain = loop {
        let drain = api.get_json(&format!("/cells/{home}/drain")).await;
        if drain["state"] == "completed" {
            break drain;
        }
        assert!(
            Instant::now() < deadline,
            "the drain did not finish: {drain}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(drain["moved"], before["usage"]["participants"], "{drain}");
    let drained = api.get_json(&format!("/cells/{home}")).await;
    assert_eq!(drained["state"], "drained");
    assert_eq!(drained["usage"]["participants"], 0);
    assert_eq!(
        namespaces(&data, &home),
        0,
        "the drained cell holds objects"
    );
    let (status, _) = deploy(&api, &tenant, 9, json!({})).await;
    assert_eq!(status, 202, "the other cells take new participants");

    // End state: every participant active, with exactly one set of objects, in its cell,
    // and its name pointing there.
    let mut everyone = profiles.clone();
    everyone.push(placed["id"].as_str().unwrap().to_string());
    for id in &everyone {
        let profile = api.wait_active(&tenant, id, Duration::from_secs(60)).await;
        let cell = profile["vpas"][0]["cellId"].as_str().unwrap().to_string();
        let holding: Vec<&String> = [&cells[0], &cells[1], &cells[2], &d, &broken]
            .into_iter()
            .filter(|c| namespace_in(&data, c, id))
            .collect();
        assert_eq!(holding, [&cell], "participant {id}");
        assert!(
            record(&data, id).starts_with(&name_of(&api, &cell).await),
            "participant {id}"
        );
    }
}

/// Three cells holding four participants each, then a fourth, empty one: a plan into the
/// band 25–35 % is a dry run that moves one participant from each full cell to the new
/// one; executed, it leaves every cell at three, each moved participant whole in its new
/// cell. A second plan computed beside it is stale afterwards, and a cancelled one cannot
/// be executed.
async fn a_rebalance_plan_brings_a_new_cell_into_the_band(backend: TestBackend) {
    let server = Server::start_on(backend, &["--no-seed"]).await;
    let api = server.client();
    template(&api).await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let tenant = tenant["id"].as_str().unwrap().to_string();
    let full = create_cells(&api, &["a", "b", "c"], 10).await;
    let mut profiles = Vec::new();
    for i in 0..12 {
        profiles.push(onboard(&api, &tenant, i, json!({})).await);
    }
    for id in &profiles {
        api.wait_active(&tenant, id, Duration::from_secs(60)).await;
    }
    let new = create_cell(&api, "d", 10, "eu").await;

    // The default band is the fleet's mean (12 of 40 places) ± 0.1.
    let default = api.post_ok("/rebalance-plans", json!({}), 201).await;
    assert!(
        (default["band"]["min"].as_f64().unwrap() - 0.2).abs() < 1e-9,
        "{default}"
    );
    assert!(
        (default["band"]["max"].as_f64().unwrap() - 0.4).abs() < 1e-9,
        "{default}"
    );

    let band = json!({"band": {"min": 0.25, "max": 0.35}, "parallelism": 2});
    let plan = api.post_ok("/rebalance-plans", band.clone(), 201).await;
    let id = plan["id"].as_str().unwrap().to_string();
    assert_eq!(plan["state"], "planned");
    let moves = plan["moves"].as_array().unwrap();
    assert_eq!(moves.len(), 3, "{plan}");
    let mut sources: Vec<&str> = moves
        .iter()
        .map(|m| m["sourceCellId"].as_str().unwrap())
        .collect();
    sources.sort();
    let mut expected: Vec<&str> = full.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(sources, expected, "one from each full cell: {plan}");
    assert!(
        moves
            .iter()
            .all(|m| m["targetCellId"] == new.as_str() && m["state"] == "planned")
    );
    for cell in plan["cells"].as_array().unwrap() {
        assert_eq!(cell["planned"], 3, "{cell}");
        assert_eq!(cell["plannedUtilisation"], 0.3, "{cell}");
    }
    assert_eq!(plan["unresolvedCells"], json!([]));
    assert_eq!(plan["progress"]["remaining"], 3);
    // A dry run: nothing has moved.
    let untouched = api.get_json(&format!("/cells/{new}")).await;
    assert_eq!(untouched["usage"]["participants"], 0);
    assert_eq!(untouched["usage"]["arriving"], 0);

    let beside = api.post_ok("/rebalance-plans", band.clone(), 201).await;
    let discarded = api.post_ok("/rebalance-plans", band.clone(), 201).await;
    let discarded = discarded["id"].as_str().unwrap();
    let cancelled = api
        .post_ok(
            &format!("/rebalance-plans/{discarded}/cancel"),
            Value::Null,
            200,
        )
        .await;
    assert_eq!(cancelled["state"], "cancelled");
    let (status, refused) = api
        .call(
            Method::POST,
            &format!("/rebalance-plans/{discarded}/execute"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 409, "{refused}");

    let running = api
        .post_ok(&format!("/rebalance-plans/{id}/execute"), Value::Null, 200)
        .await;
    assert_eq!(running["state"], "running");
    let again = api
        .post_ok(&format!("/rebalance-plans/{id}/execute"), Value::Null, 200)
        .await;
    assert_eq!(
        again["state"], "running",
        "executing twice is one execution"
    );
    let beside_id = beside["id"].as_str().unwrap();
    let (status, refused) = api
        .call(
            Method::POST,
            &format!("/rebalance-plans/{beside_id}/execute"),
            None,
            None,
        )
        .await;
    assert_eq!(
        status, 409,
        "two plans over the same cells at once: {refused}"
    );
    assert!(
        refused
            .to_string()
            .contains("is running over some of the same cells"),
        "{refused}"
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let done = loop {
        let plan = api.get_json(&format!("/rebalance-plans/{id}")).await;
        assert!(
            plan["progress"]["inFlight"].as_i64().unwrap() <= 2,
            "over its parallelism: {plan}"
        );
        if plan["state"] == "completed" {
            break plan;
        }
        assert!(Instant::now() < deadline, "the plan did not finish: {plan}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(done["progress"]["moved"], 3, "{done}");
    assert!(
        done["moves"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["state"] == "completed"),
        "{done}"
    );
    for cell in api.get_json("/cells").await.as_array().unwrap() {
        assert_eq!(cell["usage"]["participants"], 3, "{cell}");
    }
    let data = server.data_dir();
    for planned in done["moves"].as_array().unwrap() {
        let moved = planned["profileId"].as_str().unwrap();
        let profile = api
            .wait_active(&tenant, moved, Duration::from_secs(60))
            .await;
        assert_eq!(profile["vpas"][0]["cellId"], new.as_str());
        let source = planned["sourceCellId"].as_str().unwrap();
        assert!(
            !namespace_in(&data, source, moved),
            "{moved} left objects in {source}"
        );
        assert!(namespace_in(&data, &new, moved));
        assert_eq!(record(&data, moved), "d.cells.cfm.local.");
    }

    // The plan computed beside it was for a fleet that no longer exists.
    let beside = beside["id"].as_str().unwrap();
    let (status, refused) = api
        .call(
            Method::POST,
            &format!("/rebalance-plans/{beside}/execute"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["reason"], "stale-plan");
    let reasons = refused["details"]["reasons"].as_array().unwrap();
    assert!(
        reasons
            .iter()
            .any(|r| r.as_str().unwrap().contains("is no longer active in cell")),
        "{refused}"
    );
    let stale = api.get_json(&format!("/rebalance-plans/{beside}")).await;
    assert_eq!(stale["state"], "stale");
    assert_eq!(
        stale["progress"]["remaining"], 3,
        "a stale plan moved nobody"
    );

    // Balanced now, and a cordoned cell is left out, saying why.
    api.call(
        Method::PATCH,
        &format!("/cells/{}", full[0]),
        Some(json!({"state": "cordoned"})),
        None,
    )
    .await;
    let after = api.post_ok("/rebalance-plans", band, 201).await;
    assert_eq!(after["moves"], json!([]), "{after}");
    assert_eq!(after["excludedCells"][0]["cellId"], full[0].as_str());
    assert!(
        after["excludedCells"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("cordoned")
    );
    let listed = api.get_json("/rebalance-plans").await;
    assert_eq!(listed.as_array().unwrap().len(), 5);
}

/// Every input the fleet routes take, malformed or out of bounds: a clear 4xx naming the
/// problem, never a 5xx; and a tenant's own token cannot move its participants.
async fn fleet_routes_refuse_bad_input(backend: TestBackend) {
    let server = Server::start_on(backend, &["--no-seed"]).await;
    let api = server.client();
    template(&api).await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let tenant = tenant["id"].as_str().unwrap().to_string();
    let cell = create_cell(&api, "a", 5, "eu").await;
    let profile = onboard(&api, &tenant, 0, json!({})).await;
    api.wait_active(&tenant, &profile, Duration::from_secs(60))
        .await;
    let many_labels: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    let cases = [
        (
            Method::POST,
            "/cells".to_string(),
            json!({"labels": {"": "x"}}),
            400,
            "labels",
        ),
        (
            Method::POST,
            "/cells".into(),
            json!({"labels": {"k": "a\nb"}}),
            400,
            "control",
        ),
        (
            Method::POST,
            "/cells".into(),
            json!({"capacity": {"maxParticipants": -1}}),
            400,
            "negative",
        ),
        (
            Method::POST,
            "/cells".into(),
            json!({"capacity": {"maxParticipants": "many"}}),
            400,
            "Invalid request",
        ),
        (
            Method::POST,
            "/cells".into(),
            json!({"state": "draining"}),
            400,
            "POST /cells/{id}/drain",
        ),
        (
            Method::POST,
            "/cells".into(),
            json!({"state": "sleepy"}),
            400,
            "is not one of",
        ),
        (
            Method::PATCH,
            format!("/cells/{cell}"),
            json!({"labels": many_labels}),
            400,
            "at most 64 labels",
        ),
        (
            Method::PATCH,
            format!("/cells/{cell}"),
            json!({"colour": "red"}),
            400,
            "unknown field",
        ),
        (
            Method::PATCH,
            format!("/cells/{cell}"),
            json!({"state": "drained"}),
            400,
            "drain",
        ),
        (
            Method::PATCH,
            "/cells/nope".into(),
            json!({"state": "cordoned"}),
            404,
            "not found",
        ),
        (
            Method::POST,
            format!("/cells/{cell}/drain"),
            json!({"parallelism": 0}),
            400,
            "parallelism",
        ),
        (
            Method::POST,
            format!("/cells/{cell}/drain"),
            json!({"parallelism": 100000}),
            400,
            "parallelism",
        ),
        (
            Method::POST,
            format!("/cells/{cell}/drain"),
            json!({"speed": 1}),
            400,
            "unknown field",
        ),
        (
            Method::POST,
            "/cells/nope/drain".into(),
            json!({}),
            404,
            "not found",
        ),
        (
            Method::GET,
            format!("/cells/{cell}/drain"),
            Value::Null,
            404,
            "has not been drained",
        ),
        (
            Method::POST,
            format!("/cells/{cell}/drain/pause"),
            Value::Null,
            404,
            "has not been drained",
        ),
        (
            Method::POST,
            format!("/cells/{cell}/drain/explode"),
            Value::Null,
            400,
            "pause, resume or cancel",
        ),
        (
            Method::POST,
            format!("/tenants/{tenant}/participant-profiles/{profile}/migrations"),
            json!({}),
            400,
            "targetCellId",
        ),
        (
            Method::POST,
            format!("/tenants/{tenant}/participant-profiles/{profile}/migrations"),
            json!({"targetCellId": "nope"}),
            400,
            "does not exist",
        ),
        (
            Method::POST,
            format!("/tenants/{tenant}/participant-profiles/{profile}/migrations"),
            json!({"targetCellId": cell}),
            409,
            "already",
        ),
        (
            Method::POST,
            format!("/tenants/{tenant}/participant-profiles/nope/migrations"),
            json!({"targetCellId": cell}),
            404,
            "not found",
        ),
        (
            Method::POST,
            format!("/tenants/{tenant}/participant-profiles"),
            json!({"identifier": "did:web:q.example", "properties": {"cfm.requiredCellLabels": "eu"}}),
            400,
            "must be an object",
        ),
        (
            Method::POST,
            format!("/tenants/{tenant}/participant-profiles"),
            json!({"identifier": "did:web:q.example", "properties": {"cfm.requiredCellLabels": {"region": 1}}}),
            400,
            "must be a string",
        ),
        (
            Method::POST,
            "/rebalance-plans".into(),
            json!({"band": {"min": 0.8, "max": 0.2}}),
            400,
            "min ≤ max",
        ),
        (
            Method::POST,
            "/rebalance-plans".into(),
            json!({"band": {"min": -1, "max": 2}}),
            400,
            "0 ≤ min",
        ),
        (
            Method::POST,
            "/rebalance-plans".into(),
            json!({"band": {"min": 0.1}}),
            400,
            "max",
        ),
        (
            Method::POST,
            "/rebalance-plans".into(),
            json!({"cellIds": ["nope"]}),
            400,
            "does not exist",
        ),
        (
            Method::POST,
            "/rebalance-plans".into(),
            json!({"parallelism": 0}),
            400,
            "parallelism",
        ),
        (
            Method::POST,
            "/rebalance-plans".into(),
            json!({"dryRun": false}),
            400,
            "unknown field",
        ),
        (
            Method::GET,
            "/rebalance-plans/nope".into(),
            Value::Null,
            404,
            "not found",
        ),
        (
            Method::POST,
            "/rebalance-plans/nope/execute".into(),
            Value::Null,
            404,
            "not found",
        ),
        (
            Method::POST,
            "/rebalance-plans/nope/explode".into(),
            Value::Null,
            400,
            "execute or cancel",
        ),
    ];
    for (method, path, body, status, says) in cases {
        let body = (!body.is_null()).then_some(body);
        let (got, answer) = api.call(method.clone(), &path, body, None).await;
        assert_eq!(got, status, "{method} {path}: {answer}");
        assert!(
            answer.to_string().contains(says),
            "{method} {path}: {answer}"
        );
    }
    // The cell is untouched by all of it.
    let unchanged = api.get_json(&format!("/cells/{cell}")).await;
    assert_eq!(unchanged["version"], 0, "{unchanged}");
    assert_eq!(unchanged["state"], "active");

    let own = server.client_with(server.tenant_token(&tenant, &cfm_manager::auth::ALL_SCOPES));
    let path = format!("/tenants/{tenant}/participant-profiles/{profile}/migrations");
    let (status, answer) = own
        .call(
            Method::POST,
            &path,
            Some(json!({"targetCellId": cell})),
            None,
        )
        .await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer.to_string().contains("operator"), "{answer}");
    let (status, history) = own.call(Method::GET, &path, None, None).await;
    assert_eq!((status, history), (200, json!([])));
}

/// 32 onboardings from 16 clients spread over two `cfm manager` replicas on one
/// PostgreSQL: the cells' 10 places are taken exactly, never more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_placement_never_overfills_a_cell() {
    let deployment = Deployment::start(&nats_url(), 2).await;
    let apis = [deployment.api(0), deployment.api(1)];
    template(&apis[0]).await;
    let tenant = apis[0].post_ok("/tenants", json!({}), 201).await;
    let tenant = tenant["id"].as_str().unwrap().to_string();
    let cells = create_cells(&apis[0], &["a", "b"], 5).await;
    let mut clients = Vec::new();
    for client in 0..16 {
        let api = apis[client % 2].clone();
        let tenant = tenant.clone();
        clients.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for n in 0..2 {
                let (status, body) = deploy(&api, &tenant, 100 + client * 2 + n, json!({})).await;
                assert!(
                    status == 202 || (status == 409 && body["reason"] == "no-cell-fits"),
                    "{status} {body}"
                );
                statuses.push(status);
            }
            statuses
        }));
    }
    let mut accepted = 0;
    for client in clients {
        accepted += client.await.unwrap().iter().filter(|s| **s == 202).count();
    }
    assert_eq!(accepted, 10);
    for cell in &cells {
        let cell = apis[1].get_json(&format!("/cells/{cell}")).await;
        assert_eq!(cell["usage"]["participants"], 5, "{cell}");
    }
}

/// Activity definitions and a template of the three local plugins: vault, then k8s,
/// then DNS (routing switches last), disposed in reverse.
pub(super) async fn template(api: &Api) {
    api.define_activities(&[
        "cfm.vault.credentials",
        "cfm.k8s.runtime",
        "cfm.dns.routing",
    ])
    .await;
    api.post_ok(
        "/orchestration-definitions",
        json!({"activities": {
            "cfm.orchestration.vpa.deploy": [
                {"id": "vault", "type": "cfm.vault.credentials"},
                {"id": "k8s", "type": "cfm.k8s.runtime", "dependsOn": ["vault"]},
                {"id": "dns", "type": "cfm.dns.routing", "dependsOn": ["k8s"]}],
            "cfm.orchestration.vpa.dispose": [
                {"id": "dns", "type": "cfm.dns.routing"},
                {"id": "k8s", "type": "cfm.k8s.runtime", "dependsOn": ["dns"]},
                {"id": "vault", "type": "cfm.vault.credentials", "dependsOn": ["k8s"]}]}}),
        201,
    )
    .await;
}

async fn create_cells(api: &Api, names: &[&str], capacity: i64) -> Vec<String> {
    let mut ids = Vec::new();
    for name in names {
        ids.push(create_cell(api, name, capacity, "eu").await);
    }
    ids
}

pub(super) async fn create_cell(api: &Api, name: &str, capacity: i64, region: &str) -> String {
    let cell = api
        .post_ok(
            "/cells",
            json!({"externalId": name, "labels": {"region": region},
                   "capacity": {"maxParticipants": capacity}}),
            201,
        )
        .await;
    assert_eq!(cell["usage"]["participants"], 0);
    cell["id"].as_str().unwrap().to_string()
}

pub(super) async fn deploy(api: &Api, tenant: &str, n: usize, properties: Value) -> (u16, Value) {
    api.call(
        Method::POST,
        &format!("/tenants/{tenant}/participant-profiles"),
        Some(json!({"identifier": format!("did:web:p{n}.example"), "properties": properties})),
        None,
    )
    .await
}

async fn onboard(api: &Api, tenant: &str, n: usize, properties: Value) -> String {
    let (status, profile) = deploy(api, tenant, n, properties).await;
    assert_eq!(status, 202, "{profile}");
    profile["id"].as_str().unwrap().to_string()
}

async fn cell_of(api: &Api, tenant: &str, profile: &str) -> String {
    let profile = api
        .get_json(&format!("/tenants/{tenant}/participant-profiles/{profile}"))
        .await;
    profile["vpas"][0]["cellId"].as_str().unwrap().to_string()
}

/// The external id a cell's DNS target starts with.
async fn name_of(api: &Api, cell: &str) -> String {
    let cell = api.get_json(&format!("/cells/{cell}")).await;
    format!("{}.", cell["externalId"].as_str().unwrap())
}

async fn wait_migration(api: &Api, tenant: &str, profile: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let history = api
            .get_json(&format!(
                "/tenants/{tenant}/participant-profiles/{profile}/migrations"
            ))
            .await;
        let latest = history[0].clone();
        if latest["state"] == state {
            return latest;
        }
        assert!(
            Instant::now() < deadline,
            "migration never reached {state}: {latest}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn namespace_in(data: &Path, cell: &str, pc: &str) -> bool {
    data.join(format!("cluster/{cell}/_cluster/Namespace/cfm-{pc}.yaml"))
        .exists()
        || data
            .join(format!(
                "cluster/{cell}/cfm-{pc}/ConfigMap/participant-context.yaml"
            ))
            .exists()
}

fn namespaces(data: &Path, cell: &str) -> usize {
    std::fs::read_dir(data.join(format!("cluster/{cell}/_cluster/Namespace")))
        .map(|entries| entries.count())
        .unwrap_or(0)
}

/// The CNAME target of a participant's name in the embedded zone file.
fn record(data: &Path, pc: &str) -> String {
    let zone = std::fs::read_to_string(data.join("dns/participants.cfm.local.zone")).unwrap();
    let records: HashMap<&str, &str> = zone
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() == 5 && fields[3] == "CNAME").then(|| (fields[0], fields[4]))
        })
        .collect();
    records
        .get(pc)
        .unwrap_or_else(|| panic!("no record for {pc}: {zone}"))
        .to_string()
}
