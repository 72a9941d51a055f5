//! The EDC-V plugin: one component serving the activity types of upstream CFM's EDC-V
//! agents, chosen by the request's activity type, each in its own module.
//!
//! | activity type | module | deploy | dispose |
//! | --- | --- | --- | --- |
//! | `jwtlet-activity` | `jwtlet` | jwtlet resource mappings of the agents, the Control Plane and the Identity Hub; checks the token exchange; outputs `participantContextId` | removes the mappings |
//! | `identityhub-activity` | `identity_hub` | Identity Hub participant (DID, key, endpoints, Vault folder) | deletes it |
//! | `edcv-activity` | `control_plane` | Control Plane participant context and its configuration | deletes it |
//! | `registration-activity` | `registration` | Issuer Service holder | removes it |
//! | `onboarding-activity` | `onboarding` | credential request, polled until issued; outputs `holderPid`, `credentialRequest`, `participantContextId` | revokes the issued credentials |
//! | `siglet-activity` | `siglet` | Siglet transfer type mapping, Siglet registered as the data plane | removes both |
//! | `keymanagement-activity` | `keys` | (key pair events `cfm.orchestration.keypair.*`) Siglet key mapping and STS signature key | |
//!
//! Settings (`[plugin.settings]`, one table for all; an activity type fails, naming the
//! setting, only when one it uses is empty):
//!
//! | setting | used by |
//! | --- | --- |
//! | `jwtletUrl`, `serviceAccountNamespace` (`edc-v`) | jwtlet |
//! | `audience` (`edcv`) | all |
//! | `identityHubUrl` | identityhub, onboarding (deploy) |
//! | `vaultUrl` | identityhub, edcv (deploy) |
//! | `credentialServiceUrl`, `protocolServiceUrl`, `dataServiceUrl` | identityhub (deploy; else the processing data's `cfm.participant.credentialservice`, ...) |
//! | `controlPlaneUrl` | edcv, siglet, keymanagement (activated) |
//! | `issuerUrl`, `issuerId` | registration, onboarding (dispose) |
//! | `sigletUrl` | siglet, keymanagement |
//! | `sigletSignalingUrl` | siglet (deploy) |
//! | `pollIntervalMs` (5000) | onboarding |
//!
//! A cell overrides a URL setting for its participants with its property
//! `cfm.edc.<setting>`.
//!
//! The participant context is always the request's, which cfm assigns. Every call to an
//! EDC-V service or Siglet carries a bearer token the host exchanges at the deployment's
//! token service for that participant context ([`cfm_plugin_sdk::tokens`]); calls to
//! jwtlet's management API carry none, as the host adds its own for that origin.
//!
//! Every activity may be delivered again after a crash: a create answered 409 was done by
//! an earlier delivery (and is replaced where the service allows), a delete answered 404
//! was too. Transport failures, 5xx, 408 and 429 are retried; other unexpected statuses
//! fail the activity, naming the call.

mod common;
mod control_plane;
mod identity_hub;
mod jwtlet;
mod keys;
mod onboarding;
mod registration;
mod siglet;

use cfm_plugin_sdk::{Activity, Error, Operation, Outcome, Plugin, log};

use crate::common::Settings;

/// The upstream agent an activity type stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Agent {
    Jwtlet,
    IdentityHub,
    ControlPlane,
    Registration,
    Onboarding,
    Siglet,
    KeyManagement,
}

impl Agent {
    /// The services holding what this agent's dispose removes.
    fn holders(self, settings: &Settings) -> Vec<&str> {
        match self {
            Agent::Jwtlet => vec![&settings.jwtlet_url],
            Agent::IdentityHub => vec![&settings.identity_hub_url],
            Agent::ControlPlane => vec![&settings.control_plane_url],
            // Holders and credentials are the issuer's; revoking them there would revoke
            // what the participant uses in its new cell too.
            Agent::Registration | Agent::Onboarding => vec![&settings.issuer_url],
            Agent::Siglet => vec![&settings.siglet_url, &settings.control_plane_url],
            Agent::KeyManagement => Vec::new(),
        }
    }

    fn of(activity: &Activity<Settings>) -> Result<Self, Error> {
        Ok(match activity.request().activity_type.as_str() {
            jwtlet::ACTIVITY_TYPE => Agent::Jwtlet,
            identity_hub::ACTIVITY_TYPE => Agent::IdentityHub,
            control_plane::ACTIVITY_TYPE => Agent::ControlPlane,
            registration::ACTIVITY_TYPE => Agent::Registration,
            onboarding::ACTIVITY_TYPE => Agent::Onboarding,
            siglet::ACTIVITY_TYPE => Agent::Siglet,
            keys::ACTIVITY_TYPE => Agent::KeyManagement,
            other => {
                return Err(Error::Fatal(format!(
                    "the edc-v plugin serves no activity type '{other}'"
                )));
            }
        })
    }
}

struct EdcV;

impl Plugin for EdcV {
    type Settings = Settings;

    fn deploy(activity: &Activity<Settings>) -> Result<Outcome, Error> {
        let settings = &Settings::for_activity(activity)?;
        match Agent::of(activity)? {
            Agent::Jwtlet => jwtlet::deploy(activity, settings),
            Agent::IdentityHub => identity_hub::deploy(activity, settings),
            Agent::ControlPlane => control_plane::deploy(activity, settings),
            Agent::Registration => registration::deploy(activity, settings),
            Agent::Onboarding => onboarding::deploy(activity, settings),
            Agent::Siglet => siglet::deploy(activity, settings),
            Agent::KeyManagement => Err(key_events_only(activity)),
        }
    }

    fn dispose(activity: &Activity<Settings>) -> Result<Outcome, Error> {
        let settings = &Settings::for_activity(activity)?;
        let agent = Agent::of(activity)?;
        if let Some(migration) = activity.migration()? {
            // Leaving a cell, or rolling back a move into one, removes only what lives in a
            // service of that cell alone: a service both cells use holds the participant's
            // state wherever it lives now.
            let other = Settings::for_cell(activity, migration.other());
            if agent.holders(settings) == agent.holders(&other) {
                log::info(&format!(
                    "migration {} ({:?}): {} is shared by both cells; nothing removed",
                    migration.id,
                    migration.phase,
                    agent.holders(settings).join(", ")
                ));
                return Ok(Outcome::empty());
            }
        }
        match agent {
            Agent::Jwtlet => jwtlet::dispose(activity, settings),
            Agent::IdentityHub => identity_hub::dispose(activity, settings),
            Agent::ControlPlane => control_plane::dispose(activity, settings),
            Agent::Registration => registration::dispose(activity, settings),
            Agent::Onboarding => onboarding::dispose(activity, settings),
            Agent::Siglet => siglet::dispose(activity, settings),
            Agent::KeyManagement => Err(key_events_only(activity)),
        }
    }

    /// The services' management APIs answer a create with 409 when it was done, but a
    /// verify may not create: until each service's read-only checks are written, these
    /// activities are reported unverifiable rather than guessed in sync.
    fn verify(activity: &Activity<Settings>) -> Result<Outcome, Error> {
        Ok(Outcome::unverifiable(&format!(
            "{} has no read-only check of what its deploy made yet",
            activity.request().activity_type
        )))
    }

    fn other(activity: &Activity<Settings>) -> Result<Outcome, Error> {
        match Agent::of(activity)? {
            Agent::KeyManagement => keys::handle(activity, &Settings::for_activity(activity)?),
            _ => Err(Operation::unsupported(&activity.request().discriminator)),
        }
    }
}

/// `keymanagement-activity` follows key pair events, not VPA orchestrations.
fn key_events_only(activity: &Activity<Settings>) -> Error {
    Error::Fatal(format!(
        "{} serves key pair events (cfm.orchestration.keypair.*), not '{}'",
        keys::ACTIVITY_TYPE,
        activity.request().discriminator
    ))
}

cfm_plugin_sdk::export_plugin!(EdcV);
