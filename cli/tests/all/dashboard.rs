//! The `/ui` dashboard in a real headless browser (Debian's chromium) against `cfm serve`
//! with real onboardings: the fleet overview's numbers against the API, a failed
//! onboarding's graph with the failed step in red and its error, a participant's
//! capability calls with the refusals highlighted, a tenant-confined token that sees only
//! its tenant, and screenshots kept as test artifacts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cfm_test_support::{Api, Server, cfm_binary, plugins_config_with};
use serde_json::Value;

use super::client::Client;
use super::retry::vault_check_dns;
use super::rollouts::noop_failing;
use serde_json::json;

/// The DID whose deploy the `noop` plugin is told to fail ([`noop_failing`]'s participant 0).
const FAILING_DID: &str = "did:web:p0.example";
/// The colour failed steps are drawn in (app.js).
const FAILED_RED: &str = "#c62828";

#[tokio::test]
async fn the_dashboard_shows_the_fleet_a_failed_step_and_only_a_tenants_own_participants() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = noop_failing(dir.path(), "failDeploysOf", &[0]);
    let plugins = plugins.display().to_string();
    let server = Server::start(&["--no-seed", "--plugins", &plugins]).await;
    let api = server.client();
    vault_check_dns(&api).await;
    let env = api.dataspace_with_cell("cell-ui").await;
    let tenant_a = api
        .post_ok("/tenants", json!({"properties": {"name": "A"}}), 201)
        .await;
    let tenant_a = tenant_a["id"].as_str().unwrap().to_string();
    let tenant_b = api
        .post_ok("/tenants", json!({"properties": {"name": "B"}}), 201)
        .await;
    let tenant_b = tenant_b["id"].as_str().unwrap().to_string();
    let a_ids = api
        .onboard_active(&tenant_a, &env.dataspace_id, &["ui-a1", "ui-a2"])
        .await;
    let b_ids = api
        .onboard_active(&tenant_b, &env.dataspace_id, &["ui-b1"])
        .await;
    let failed = api
        .post_ok(
            &format!("/tenants/{tenant_a}/participant-profiles"),
            json!({"identifier": FAILING_DID, "dataspaceProfileIds": [env.dataspace_id]}),
            202,
        )
        .await;
    let failed_id = failed["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let path = format!("/tenants/{tenant_a}/participant-profiles/{failed_id}");
    while api.get_json(&path).await["vpas"][0]["state"] != "error" {
        assert!(
            std::time::Instant::now() < deadline,
            "the failing deploy did not fail"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Text a client chose is shown as text: this label must not become an element.
    api.post_ok(
        "/cells",
        json!({"externalId": "cell-hostile", "labels": {"note": "<img src=x onerror=\"document.title='pwned'\">"}}),
        201,
    )
    .await;
    let browser = Browser::new(&server, dir.path());
    let shots = artifacts();

    // The fleet overview: every number as the API tells it.
    let admin = std::fs::read_to_string(server.data_dir().join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let fleet = browser.dom("#/", &admin);
    browser.screenshot("#/", &admin, &shots.join("fleet.png"));
    for state in ["pending", "active", "disposing", "error", "disposed"] {
        let expected = total(
            &api,
            "/participant-profiles/query",
            &format!("vpas.state = '{state}'"),
        )
        .await;
        assert_eq!(
            shown(&fleet, &format!("data-count=\"participants-{state}\"")),
            expected.to_string(),
            "participants {state}"
        );
    }
    assert_eq!(shown(&fleet, "data-count=\"participants-active\""), "3");
    assert_eq!(shown(&fleet, "data-count=\"participants-error\""), "1");
    let errored = total(&api, "/orchestrations/query", "state = 3").await;
    assert_eq!(
        shown(&fleet, "data-count=\"orchestrations-errored\""),
        errored.to_string()
    );
    assert!(
        fleet.contains("note=&lt;img src=x"),
        "the label as text: {fleet}"
    );
    assert!(
        !fleet.contains("<img") && !fleet.contains("pwned</title>"),
        "{fleet}"
    );
    let cell = api.get_json(&format!("/cells/{}", env.cell_id)).await;
    let used = cell["usage"]["participants"].as_u64().unwrap();
    assert!(
        fleet.contains(&format!(
            "data-cell=\"cell-ui\" data-participants=\"{used}\""
        )),
        "{fleet}"
    );

    // The failed onboarding's graph: the failed step drawn red, its error beside it.
    let page = format!("#/participant/{tenant_a}/{failed_id}");
    let graph = browser.dom(&page, &admin);
    browser.screenshot(&page, &admin, &shots.join("failed-onboarding.png"));
    let node = element(&graph, "<g class=\"step\" data-step=\"check\"");
    assert!(node.contains("data-state=\"failed\""), "{node}");
    assert!(
        node.contains(&format!("stroke=\"{FAILED_RED}\"")),
        "the failed step is red: {node}"
    );
    let passed = element(&graph, "<g class=\"step\" data-step=\"vault\"");
    assert!(
        passed.contains("data-state=\"completed\"") && !passed.contains(FAILED_RED),
        "{passed}"
    );
    let error = element(&graph, "<li class=\"error\" data-step=\"check\"");
    assert!(
        error.contains("failDeploysOf"),
        "the step's error is shown: {error}"
    );

    // Search by predicate.
    let search = browser.dom("#/participants?q=identifier%20LIKE%20'%25ui-a%25'", &admin);
    browser.screenshot("#/participants", &admin, &shots.join("participants.png"));
    assert_eq!(listed(&search), sorted(&a_ids), "{search}");

    // Tenants, each linking to its participants.
    let tenants = browser.dom("#/tenants", &admin);
    for tenant in [&tenant_a, &tenant_b] {
        assert!(
            tenants.contains(&format!("data-tenant=\"{tenant}\"")),
            "{tenants}"
        );
    }

    // A token confined to tenant B: only B's participants and B itself, no fleet-wide
    // orchestrations, and A's participant is not found.
    let confined = tenant_token(&server, &tenant_b);
    let their_tenants = browser.dom("#/tenants", &confined);
    assert!(
        their_tenants.contains(&format!("data-tenant=\"{tenant_b}\"")),
        "{their_tenants}"
    );
    assert!(!their_tenants.contains(&tenant_a), "{their_tenants}");
    let theirs = browser.dom("#/participants", &confined);
    assert_eq!(listed(&theirs), sorted(&b_ids), "{theirs}");
    let their_fleet = browser.dom("#/", &confined);
    assert_eq!(
        shown(&their_fleet, "data-count=\"participants-active\""),
        "1"
    );
    assert_eq!(
        shown(&their_fleet, "data-count=\"participants-error\""),
        "0"
    );
    assert!(
        their_fleet.contains("may not read orchestrations"),
        "{their_fleet}"
    );
    let other = browser.dom(&page, &confined);
    assert!(
        other.contains("404") && !other.contains(FAILING_DID),
        "{other}"
    );

    // Without a token: the sign-in form, nothing else.
    let signed_out = browser.dom_without_token("#/");
    assert!(
        signed_out.contains("id=\"signin-form\"") && !signed_out.contains("data-count"),
        "{signed_out}"
    );
}

/// A participant's page lists what its plugins did through their capabilities, the
/// refusal that failed its deploy highlighted; the API serves the same calls (every one,
/// or the refusals alone) to its tenant and to no other, and `cfm participants calls`
/// prints them.
#[tokio::test]
async fn a_participants_page_lists_its_capability_calls_with_the_denials_highlighted() {
    let dir = tempfile::tempdir().unwrap();
    // The vault plugin told to issue its runtime access to the participant's secrets
    // folder, without the grant for it: the api key is written, the issue refused, and
    // the deploy fails there.
    let plugins = plugins_config_with(dir.path(), |plugin| {
        if plugin["name"].as_str() == Some("vault") {
            let settings = plugin["settings"].as_table_mut().unwrap();
            settings.insert("runtimeAccess".into(), true.into());
        }
    });
    let plugins = plugins.display().to_string();
    let server = Server::start(&["--no-seed", "--plugins", &plugins]).await;
    let api = server.client();
    vault_check_dns(&api).await;
    let env = api.dataspace_with_cell("cell-calls").await;
    let mut tenants = Vec::new();
    for name in ["A", "B"] {
        let tenant = api
            .post_ok("/tenants", json!({"properties": {"name": name}}), 201)
            .await;
        tenants.push(tenant["id"].as_str().unwrap().to_string());
    }
    let (tenant, other) = (&tenants[0], &tenants[1]);
    let onboarded = api
        .post_ok(
            &format!("/tenants/{tenant}/participant-profiles"),
            json!({"identifier": "did:web:calls.example", "dataspaceProfileIds": [env.dataspace_id]}),
            202,
        )
        .await;
    let id = onboarded["id"].as_str().unwrap().to_string();
    let profile = format!("/tenants/{tenant}/participant-profiles/{id}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while api.get_json(&profile).await["vpas"][0]["state"] != "error" {
        assert!(
            std::time::Instant::now() < deadline,
            "the deploy did not fail"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The API: the refusal (newest) and the write before it, in the vault step's attempt.
    let calls_path = format!("{profile}/capability-calls");
    let calls = api.get_json(&calls_path).await;
    let calls = calls.as_array().unwrap();
    let seen: Vec<(&str, &str, &str, Option<&str>)> = calls
        .iter()
        .map(|c| {
            (
                c["operation"].as_str().unwrap(),
                c["target"].as_str().unwrap(),
                c["decision"].as_str().unwrap(),
                c["effect"].as_str(),
            )
        })
        .collect();
    let folder = format!("participants/{id}");
    let key = format!("participants/{id}/api-key");
    assert_eq!(
        seen,
        [
            ("issue-access", folder.as_str(), "denied", None),
            ("put-if-absent", key.as_str(), "allowed", Some("created")),
        ],
        "{calls:?}"
    );
    for call in calls {
        assert_eq!(call["plugin"], "vault", "{call}");
        assert_eq!(call["capability"], "secrets", "{call}");
        assert_eq!(call["activityId"], "vault", "{call}");
        assert_eq!(call["attempt"], 1, "{call}");
    }
    let denied = api.get(&format!("{calls_path}?decision=denied")).await;
    assert_eq!(denied.headers()["x-total-count"], "1");
    let denied: Value = denied.json().await.unwrap();
    assert_eq!(denied.as_array().unwrap().len(), 1);
    assert_eq!(denied[0]["operation"], "issue-access");
    let (status, refused) = api
        .call(
            reqwest::Method::GET,
            &format!("{calls_path}?decision=maybe"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["code"], 400);

    // Its tenant sees them; another tenant's token finds no such participant.
    let own = tenant_token(&server, tenant);
    let theirs = tenant_token(&server, other);
    for (token, status) in [(&own, 200), (&theirs, 404)] {
        let answer = api
            .raw(reqwest::Method::GET, &calls_path, None, Some(token))
            .await;
        assert_eq!(answer.status(), status);
    }

    // The page: both calls, the refusal's row highlighted, the write's not.
    let browser = Browser::new(&server, dir.path());
    let view = format!("#/participant/{tenant}/{id}");
    let page = browser.dom(&view, &own);
    let admin = std::fs::read_to_string(server.data_dir().join("admin.token")).unwrap();
    browser.screenshot(
        &view,
        admin.trim(),
        &artifacts().join("capability-calls.png"),
    );
    let refusal = element(&page, "<tr class=\"call denied\" data-decision=\"denied\"");
    assert!(
        refusal.contains("issue-access") && refusal.contains(&folder),
        "{refusal}"
    );
    assert!(refusal.contains("class=\"error\">denied<"), "{refusal}");
    let write = element(&page, "<tr class=\"call\" data-decision=\"allowed\"");
    assert!(write.contains(&key) && write.contains("created"), "{write}");
    assert!(page.contains("2 recorded"), "{page}");
    // Denials only, from the page's own link.
    let only = browser.dom(&format!("{view}?calls=denied"), &own);
    assert!(only.contains("1 denied"), "{only}");
    assert!(!only.contains("data-decision=\"allowed\""), "{only}");
    let theirs_page = browser.dom(&view, &theirs);
    assert!(
        theirs_page.contains("404") && !theirs_page.contains("issue-access"),
        "{theirs_page}"
    );

    // The client prints them, the refusal in capitals.
    let cli = Client::new(&server, dir.path());
    let printed = cli.ok(&["participants", "calls", &id, "--denied"]);
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 2, "{printed}");
    assert!(
        lines[0].starts_with("TIME") && lines[0].contains("RESULT"),
        "{printed}"
    );
    assert!(
        lines[1].contains("secrets issue-access") && lines[1].contains("DENIED"),
        "{printed}"
    );
    let all = cli.ok(&["participants", "calls", &id]);
    assert!(
        all.contains("secrets put-if-absent") && all.contains("created"),
        "{all}"
    );
}

#[tokio::test]
async fn the_dashboard_assets_carry_a_content_security_policy() {
    let server = Server::start(&[]).await;
    let http = reqwest::Client::new();
    for path in ["/ui/", "/ui/app.js", "/ui/app.css"] {
        let response = http
            .get(format!("{}{path}", server.base()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let policy = response.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            policy.contains("script-src 'self'") && !policy.contains("unsafe-inline"),
            "{policy}"
        );
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    }
    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/ui", server.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.headers()["location"], "/ui/");
}

/// Debian's chromium, headless, one process per page.
struct Browser {
    base: String,
    profile: PathBuf,
    launches: std::sync::atomic::AtomicUsize,
}

impl Browser {
    fn new(server: &Server, dir: &Path) -> Browser {
        Browser {
            base: format!("{}/ui/", server.base()),
            profile: dir.join("chromium-profiles"),
            launches: Default::default(),
        }
    }

    /// The page's DOM once its scripts have run and its calls have answered: virtual
    /// time does not pass while a fetch is pending, so the budget is not a wait. It is
    /// shorter than the fleet's refresh, so no redraw is under way when the DOM is read.
    fn dom(&self, view: &str, token: &str) -> String {
        self.dom_of(&self.url(view, Some(token)))
    }

    fn dom_without_token(&self, view: &str) -> String {
        self.dom_of(&self.url(view, None))
    }

    fn screenshot(&self, view: &str, token: &str, path: &Path) {
        let output = self
            .chromium(&[
                &format!("--screenshot={}", path.display()),
                "--window-size=1280,860",
                &self.url(view, Some(token)),
            ])
            .output()
            .unwrap();
        assert!(
            path.exists(),
            "no screenshot: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A profile directory of the launch's own: a browser left behind by an earlier
    /// launch cannot hold its lock.
    fn profile(&self) -> PathBuf {
        let launch = self
            .launches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.profile.join(launch.to_string())
    }

    fn dom_of(&self, url: &str) -> String {
        let output = self.chromium(&["--dump-dom", url]).output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// The token goes in the address's fragment, which the browser never sends; the
    /// page moves it into the tab's session storage.
    fn url(&self, view: &str, token: Option<&str>) -> String {
        match token {
            None => format!("{}{view}", self.base),
            Some(token) => {
                let joiner = if view.contains('?') { '&' } else { '?' };
                format!("{}{view}{joiner}token={token}", self.base)
            }
        }
    }

    fn chromium(&self, args: &[&str]) -> Command {
        // coreutils' timeout: a browser that hangs fails the test instead of the run.
        let mut command = Command::new("timeout");
        command
            .args(["60", "chromium"])
            // The sandbox needs user namespaces a container or root may not have; the
            // page is this test's own, on loopback.
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--virtual-time-budget=5000",
            ])
            .arg(format!("--user-data-dir={}", self.profile().display()))
            .args(args);
        command
    }
}

/// Where screenshots are kept after the run: `target/tmp/dashboard/`.
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The text of the element that carries `marker`.
fn shown(dom: &str, marker: &str) -> String {
    let at = dom
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in {dom}"));
    let rest = &dom[at..];
    let start = rest.find('>').unwrap() + 1;
    let end = rest[start..].find('<').unwrap();
    rest[start..start + end].to_string()
}

/// The markup from `opening` to the end of that element's closing tag (elements of the
/// same tag are not nested in what the tests look at).
fn element(dom: &str, opening: &str) -> String {
    let at = dom
        .find(opening)
        .unwrap_or_else(|| panic!("no {opening} in {dom}"));
    let tag = opening[1..].split(' ').next().unwrap();
    let end = dom[at..].find(&format!("</{tag}>")).unwrap();
    dom[at..at + end].to_string()
}

/// The participants a page's table lists, sorted.
fn listed(dom: &str) -> Vec<String> {
    let mut ids: Vec<String> = dom
        .split("data-participant=\"")
        .skip(1)
        .map(|rest| rest[..rest.find('"').unwrap()].to_string())
        .collect();
    ids.sort();
    ids
}

fn sorted(ids: &[String]) -> Vec<String> {
    let mut ids = ids.to_vec();
    ids.sort();
    ids
}

async fn total(api: &Api, path: &str, predicate: &str) -> usize {
    let found = api
        .post_ok(path, json!({"predicate": predicate, "limit": 10000}), 200)
        .await;
    found.as_array().unwrap().len()
}

/// A token confined to `tenant`, from `cfm token`.
pub(super) fn tenant_token(server: &Server, tenant: &str) -> String {
    let output = Command::new(cfm_binary())
        .args([
            "token",
            "--data-dir",
            &server.data_dir().display().to_string(),
            "--tenant",
            tenant,
        ])
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}
