//! The `tokens` capability: bearer tokens for the participant being processed, obtained
//! by OAuth 2.0 token exchange (RFC 8693) with the agent host's own subject token.
//!
//! The plugin names an audience and a scope, both checked against its grant; the resource
//! is always the invocation's participant context, so no plugin can ask for another
//! participant's token. The subject token never reaches a plugin: the exchange happens
//! here, and where a service wants the subject token itself (jwtlet's management API) the
//! http capability attaches it for the one origin the grant names. No token appears in an
//! audit record, a log line or an error.

pub mod exchange;

use async_trait::async_trait;

use super::context::Audited;
use super::{BackendError, Capabilities};
use crate::audit::Effect;
use crate::bindings::cfm::plugin::tokens::Host;
use crate::bindings::cfm::plugin::types::CapabilityError;
use crate::grants::Capability;

/// Where exchanged tokens come from.
#[async_trait]
pub trait TokenBackend: Send + Sync {
    /// An access token for `resource` (a participant context), `audience` and `scope`
    /// (space-separated scopes).
    async fn exchange(
        &self,
        resource: &str,
        audience: &str,
        scope: &str,
    ) -> Result<String, BackendError>;

    /// The host's own subject token, for the one origin an http grant presents it to.
    async fn subject_token(&self) -> Result<String, BackendError>;
}

/// The backend of a host started without a token service: every call says how to
/// configure one.
pub struct Unconfigured;

const UNCONFIGURED: &str = "token exchange is not configured on this agent host: start it with --token-exchange-url and --subject-token-file";

#[async_trait]
impl TokenBackend for Unconfigured {
    async fn exchange(&self, _: &str, _: &str, _: &str) -> Result<String, BackendError> {
        Err(BackendError::Invalid(UNCONFIGURED.into()))
    }

    async fn subject_token(&self) -> Result<String, BackendError> {
        Err(BackendError::Invalid(UNCONFIGURED.into()))
    }
}

/// An exchanged token on its way to the plugin: audited as issued, never shown.
struct Issued(String);

impl Audited for Issued {
    fn effect(&self) -> Option<Effect> {
        Some(Effect::Issued)
    }
}

impl Host for Capabilities {
    async fn exchange(
        &mut self,
        audience: String,
        scope: String,
    ) -> Result<String, CapabilityError> {
        let calls = &self.calls;
        // One form per set of scopes, so reordering or repeating them cannot mint cache
        // entries (and exchanges) without end.
        let scope = canonical(&scope);
        let target = format!("audience={audience} scope={scope}");
        let allowed = scope.len() <= MAX_SCOPE_LEN && calls.grants.allows_token(&audience, &scope);
        let backend = calls.backends.tokens.clone();
        let resource = calls.participant_context_id.as_str();
        let token = calls
            .guarded(Capability::Tokens, "exchange", &target, allowed, async {
                backend
                    .exchange(resource, &audience, &scope)
                    .await
                    .map(Issued)
            })
            .await?
            .0;
        self.calls.used(&token);
        Ok(token)
    }
}

/// Longest scope list a plugin may ask for, in bytes.
const MAX_SCOPE_LEN: usize = 1024;

/// The scopes of `scope` (whitespace-separated) once each, sorted, space-joined.
fn canonical(scope: &str) -> String {
    let mut scopes: Vec<&str> = scope.split_whitespace().collect();
    scopes.sort_unstable();
    scopes.dedup();
    scopes.join(" ")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::Mutex;

    use super::*;
    use crate::capability::fixture::{Fixture, PARTICIPANT};
    use crate::grants::{Grants, TokenGrant};

    /// Answers `token-for:<resource>:<audience>:<scope>` and remembers what it was asked.
    #[derive(Default)]
    struct Recording(Mutex<Vec<String>>);

    #[async_trait]
    impl TokenBackend for Recording {
        async fn exchange(&self, r: &str, a: &str, s: &str) -> Result<String, BackendError> {
            self.0.lock().unwrap().push(format!("{r}|{a}|{s}"));
            Ok(format!("token-for:{r}:{a}:{s}"))
        }

        async fn subject_token(&self) -> Result<String, BackendError> {
            Ok("subject".into())
        }
    }

    fn granted(backend: Arc<Recording>) -> Fixture {
        let grants = Grants {
            tokens: Some(TokenGrant {
                audiences: vec!["edcv".into()],
                scopes: vec!["identity-api:admin".into(), "read".into()],
            }),
            ..Default::default()
        };
        Fixture::with_backends(grants, |backends| backends.with_tokens(backend))
    }

    #[tokio::test]
    async fn a_granted_exchange_is_for_the_participant_being_processed() {
        let backend = Arc::new(Recording::default());
        let mut fixture = granted(backend.clone());
        let pc = PARTICIPANT;
        let token = fixture
            .capabilities
            .exchange("edcv".into(), "identity-api:admin read".into())
            .await
            .unwrap();
        assert_eq!(
            token,
            format!("token-for:{pc}:edcv:identity-api:admin read")
        );
        assert_eq!(
            *backend.0.lock().unwrap(),
            [format!("{pc}|edcv|identity-api:admin read")]
        );
        // Reordered and repeated, the same scopes are the same request.
        fixture
            .capabilities
            .exchange("edcv".into(), " read identity-api:admin read ".into())
            .await
            .unwrap();
        assert_eq!(
            backend.0.lock().unwrap().last().unwrap(),
            &format!("{pc}|edcv|identity-api:admin read")
        );
        let record = fixture.last_audit();
        assert_eq!(record["capability"], "tokens");
        assert_eq!(record["effect"], "issued");
        assert_eq!(
            record["target"],
            "audience=edcv scope=identity-api:admin read"
        );
        assert!(!record.to_string().contains("token-for"));
    }

    #[tokio::test]
    async fn an_ungranted_scope_or_audience_is_denied_and_audited() {
        let backend = Arc::new(Recording::default());
        let mut fixture = granted(backend.clone());
        for (audience, scope) in [
            ("edcv", "management-api:admin"),
            ("edcv", "management-api:admin read"),
            ("other", "read"),
            ("edcv", ""),
        ] {
            let refused = fixture
                .capabilities
                .exchange(audience.into(), scope.into())
                .await
                .unwrap_err();
            let target = format!("audience={audience} scope={scope}");
            fixture.assert_denied(refused, "tokens", "exchange", &target);
        }
        assert!(
            backend.0.lock().unwrap().is_empty(),
            "a refused call reached the backend"
        );
    }

    #[tokio::test]
    async fn without_a_configured_token_service_the_error_says_how_to_configure_one() {
        let mut fixture = Fixture::new(Grants {
            tokens: Some(TokenGrant {
                audiences: vec!["edcv".into()],
                scopes: vec!["read".into()],
            }),
            ..Default::default()
        });
        let Err(CapabilityError::Invalid(message)) = fixture
            .capabilities
            .exchange("edcv".into(), "read".into())
            .await
        else {
            panic!("an unconfigured host handed out a token");
        };
        assert!(message.contains("--token-exchange-url"), "{message}");
    }
}
