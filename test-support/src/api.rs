//! An HTTP client of the REST API with the helpers the suites share.

use crate::*;

/// A client of one server's REST API (`.../api/v1alpha1`), sending the admin token unless
/// made with another.
#[derive(Clone)]
pub struct Api {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    pub(crate) token: String,
}

/// A cell with an active deployment of a fresh dataspace profile.
pub struct Environment {
    /// The cell's id.
    pub cell_id: String,
    /// The dataspace profile's id.
    pub dataspace_id: String,
}

impl Api {
    /// `token`: None sends the admin token, `Some("")` none at all, `Some(t)` that one.
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        match token.unwrap_or(&self.token) {
            "" => request,
            token => request.bearer_auth(token),
        }
        .send()
        .await
        .unwrap()
    }

    /// The status of a POST the server refuses before reading it all. The server then
    /// closes the connection, so each try uses a connection of its own, and a reset seen
    /// while the body is still being sent is retried, never counted as an answer.
    pub async fn status_of_large_post(&self, path: &str, body: &str) -> u16 {
        for _ in 0..5 {
            let sent = reqwest::Client::new()
                .post(format!("{}{path}", self.base))
                .bearer_auth(&self.token)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await;
            if let Ok(response) = sent {
                return response.status().as_u16();
            }
        }
        panic!("POST {path} never got an answer");
    }

    /// Any request with an optional JSON body and `If-Match`; the status and the JSON
    /// answer (null when the body is empty).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        if_match: Option<&str>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        if let Some(version) = if_match {
            request = request.header("if-match", version);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
        };
        (status, value)
    }

    /// `GET path` with the client's token, whatever the answer.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.raw(reqwest::Method::GET, path, None, None).await
    }

    /// `GET path`, which must answer 200; its JSON body.
    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.get(path).await;
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    /// `POST path` with `body`, which must answer `status`; the JSON answer.
    pub async fn post_ok(&self, path: &str, body: Value, status: u16) -> Value {
        let response = self
            .raw(reqwest::Method::POST, path, Some(&body.to_string()), None)
            .await;
        let got = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert_eq!(got, status, "POST {path}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// The orchestrations of `orchestration_type` (`deploy` or `dispose`, short for
    /// `cfm.orchestration.vpa.*`) correlated with a participant profile.
    pub async fn orchestrations_of(&self, profile_id: &str, orchestration_type: &str) -> Value {
        let predicate = format!(
            "correlationId = '{profile_id}' AND orchestrationType = 'cfm.orchestration.vpa.{orchestration_type}'"
        );
        self.post_ok(
            "/orchestrations/query",
            json!({ "predicate": predicate }),
            200,
        )
        .await
    }

    /// Creates a cell with `external_id` and a dataspace profile (one membership
    /// credential) deployed to it, so participants can be placed there.
    pub async fn dataspace_with_cell(&self, external_id: &str) -> Environment {
        let cell = self
            .post_ok("/cells", json!({"externalId": external_id}), 201)
            .await;
        let dataspace = self
            .post_ok(
                "/dataspace-profiles",
                json!({"dataspaceSpec": {"protocolStack": ["dsp-2025-1", "dcp-2025-1"],
                       "credentialSpecs": [{"id": "membership", "type": "MembershipCredential",
                                            "issuer": "did:web:issuer.example", "format": "vc20-bssl/jwt"}]}}),
                201,
            )
            .await;
        let env = Environment {
            cell_id: cell["id"].as_str().unwrap().into(),
            dataspace_id: dataspace["id"].as_str().unwrap().into(),
        };
        self.post_ok(
            &format!("/dataspace-profiles/{}/deployments", env.dataspace_id),
            json!({"profileId": env.dataspace_id, "cellId": external_id}),
            202,
        )
        .await;
        env
    }

    /// Another cell, `external_id`, with an active deployment of `dataspace_id`: a place
    /// its participants can move to. The cell as created.
    pub async fn cell_serving(&self, dataspace_id: &str, external_id: &str) -> Value {
        let cell = self
            .post_ok("/cells", json!({"externalId": external_id}), 201)
            .await;
        self.post_ok(
            &format!("/dataspace-profiles/{dataspace_id}/deployments"),
            json!({"profileId": dataspace_id, "cellId": external_id}),
            202,
        )
        .await;
        cell
    }

    /// Creates an activity definition (no schemas) for each of `types`.
    pub async fn define_activities(&self, types: &[&str]) {
        for activity_type in types {
            self.post_ok(
                "/activity-definitions",
                json!({"type": activity_type, "description": "test"}),
                201,
            )
            .await;
        }
    }

    /// Definitions for crash tests (on a server started with `--no-seed`): the built-in
    /// activity types plus `example.slow` (200 ms) between vault and k8s, so every
    /// onboarding has work in flight long enough to be interrupted. `dispose` adds a
    /// dispose template.
    pub async fn slow_template(&self, dispose: bool) {
        self.define_activities(&[
            "cfm.vault.credentials",
            "cfm.k8s.runtime",
            "cfm.dns.routing",
            "example.slow",
        ])
        .await;
        let mut activities = json!({"cfm.orchestration.vpa.deploy": [
            {"id": "vault", "type": "cfm.vault.credentials"},
            {"id": "slow", "type": "example.slow", "dependsOn": ["vault"]},
            {"id": "k8s", "type": "cfm.k8s.runtime", "dependsOn": ["slow"]},
            {"id": "dns", "type": "cfm.dns.routing"}]});
        if dispose {
            activities["cfm.orchestration.vpa.dispose"] = json!([
                {"id": "dns", "type": "cfm.dns.routing"},
                {"id": "k8s", "type": "cfm.k8s.runtime"},
                {"id": "slow", "type": "example.slow"},
                {"id": "vault", "type": "cfm.vault.credentials", "dependsOn": ["k8s", "slow"]}]);
        }
        self.post_ok(
            "/orchestration-definitions",
            json!({"activities": activities}),
            201,
        )
        .await;
    }

    /// Decommissions a participant (DELETE answered 202) and waits until its VPAs are
    /// disposed.
    pub async fn dispose(&self, tenant_id: &str, profile_id: &str) {
        let path = format!("/tenants/{tenant_id}/participant-profiles/{profile_id}");
        let disposing = self.raw(reqwest::Method::DELETE, &path, None, None).await;
        assert_eq!(disposing.status(), 202);
        self.wait_vpas(tenant_id, profile_id, "disposed", Duration::from_secs(30))
            .await;
    }

    /// Onboards `did:web:<name>.example` for each name into `dataspace_id` and waits until
    /// each is active; returns their profile ids in the order of `names`.
    pub async fn onboard_active(
        &self,
        tenant_id: &str,
        dataspace_id: &str,
        names: &[&str],
    ) -> Vec<String> {
        let mut ids = Vec::new();
        for name in names {
            let profile = self
                .post_ok(
                    &format!("/tenants/{tenant_id}/participant-profiles"),
                    json!({"identifier": format!("did:web:{name}.example"),
                           "dataspaceProfileIds": [dataspace_id]}),
                    202,
                )
                .await;
            ids.push(profile["id"].as_str().unwrap().to_string());
        }
        for id in &ids {
            self.wait_active(tenant_id, id, Duration::from_secs(30))
                .await;
        }
        ids
    }

    /// The ids of the participant profiles `predicate` matches, in the order answered (by id).
    pub async fn profile_ids_matching(&self, predicate: &str) -> Vec<String> {
        let found = self
            .post_ok(
                "/participant-profiles/query",
                json!({"predicate": predicate}),
                200,
            )
            .await;
        found
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// Polls a profile until its four VPAs are active; fails on error or timeout.
    pub async fn wait_active(&self, tenant_id: &str, profile_id: &str, timeout: Duration) -> Value {
        self.wait_vpas(tenant_id, profile_id, "active", timeout)
            .await
    }

    /// Polls a profile until its four VPAs are in `state`; fails on error or timeout.
    pub async fn wait_vpas(
        &self,
        tenant_id: &str,
        profile_id: &str,
        state: &str,
        timeout: Duration,
    ) -> Value {
        let started = Instant::now();
        loop {
            let profile = self
                .get_json(&format!(
                    "/tenants/{tenant_id}/participant-profiles/{profile_id}"
                ))
                .await;
            assert_eq!(profile["error"], false, "{profile}");
            let vpas = profile["vpas"].as_array().unwrap();
            if vpas.len() == 4 && vpas.iter().all(|v| v["state"] == state) {
                return profile;
            }
            assert!(
                started.elapsed() < timeout,
                "not {state} after {timeout:?}: {profile}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How many participant profiles of the tenant have a VPA that is not active.
    pub async fn count_not_active(&self, tenant_id: &str) -> usize {
        let profiles = self
            .get_json(&format!("/tenants/{tenant_id}/participant-profiles"))
            .await;
        profiles
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| {
                p["vpas"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|v| v["state"] != "active")
            })
            .count()
    }
}

/// Why a request got no answer.
#[derive(Debug)]
pub enum CallError {
    /// No connection: the request never reached a server.
    Unreachable(String),
    /// No answer in time: the server may still act on it.
    TimedOut(String),
    /// The connection broke after the request went out: it may have been acted on.
    Broken(String),
}

impl Api {
    /// A request that fails (Err) rather than panics when the server cannot be reached or
    /// does not answer within `timeout`: the status and the JSON answer (null when empty
    /// or not JSON).
    pub async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<(u16, Value), CallError> {
        let failed = |e: reqwest::Error| {
            let what = format!("{method} {path}: {e}");
            if e.is_connect() {
                CallError::Unreachable(what)
            } else if e.is_timeout() {
                CallError::TimedOut(what)
            } else {
                CallError::Broken(what)
            }
        };
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(timeout);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(failed)?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(failed)?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }
}
