//! Lifecycle states of orchestrations, their steps and participants' VPAs, and the one
//! place each state's transitions are decided.
//!
//! States are stored as text (steps) or inside JSON documents (VPAs) with the names
//! upstream CFM uses; the enums map to those names through `serde` and `sqlx`, so a
//! misspelt state cannot compile and a stored one that no release wrote fails to read.

use std::fmt;

use cfm_protocol::orchestration_types;
use serde::{Deserialize, Serialize};

/// Orchestration states, numbered as upstream numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrchestrationState {
    /// Upstream's state before an orchestration runs; cfm starts every one `Running`.
    Initialized = 0,
    /// Activities are being dispatched and their outcomes applied.
    Running = 1,
    /// Every activity completed.
    Completed = 2,
    /// An activity failed, or the orchestration was cancelled.
    Errored = 3,
}

impl OrchestrationState {
    /// Upstream's number, as stored and as the API shows it.
    pub const fn code(self) -> i64 {
        self as i64
    }
}

/// Where one step of an orchestration is.
///
/// `pending` → `dispatched` once every dependency is `completed` (a retry or a reschedule
/// stays `dispatched`, with a new attempt) → `completed` or `failed`. Cancelling the
/// orchestration moves its `pending` and `dispatched` steps to `cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    /// Waiting for its dependencies to complete.
    Pending,
    /// An attempt is queued or running.
    Dispatched,
    /// An attempt completed; its output is in the processing data.
    Completed,
    /// It failed for good: a fatal outcome, or out of retries.
    Failed,
    /// Its orchestration ended (cancelled, or another step failed) before it finished.
    Cancelled,
}

impl StepState {
    /// Steps a cancel stops: not yet finished.
    pub const UNFINISHED: [StepState; 2] = [StepState::Pending, StepState::Dispatched];
}

/// Where a participant's VPAs are; all four move together.
///
/// `pending` (deploying) → `active`, or on a failed deploy `disposing` (its compensation
/// runs) or `error` (nothing to compensate); `active` or `error` → `disposing` when the
/// participant is decommissioned → `disposed`; a failed dispose ends in `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VpaState {
    /// The deploy orchestration is running.
    Pending,
    /// The deploy completed; the profile's `cfm.vpa.state` holds its output.
    Active,
    /// A dispose orchestration is running: a decommission, or a failed deploy's compensation.
    Disposing,
    /// Disposed of; the profile no longer blocks deleting its tenant, cell or dataspace
    /// profile.
    Disposed,
    /// A deploy failed with no dispose template to compensate it, or a dispose failed.
    Error,
}

/// What a participant's VPAs do when one of its orchestrations ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VpaTransition {
    /// They move to this state.
    To(VpaState),
    /// A deploy failed: its compensation (the dispose template) starts, and they go
    /// `disposing`, or `error` when the template disposes nothing.
    Compensate,
    /// The orchestration is not one the VPAs follow.
    Unchanged,
}

impl VpaState {
    /// The VPA transitions caused by orchestrations, in one table.
    pub fn after(orchestration_type: &str, end: OrchestrationState) -> VpaTransition {
        use OrchestrationState::{Completed, Errored};
        use orchestration_types::{VPA_DEPLOY, VPA_DISPOSE};
        // A participant stays active while it migrates, is upgraded, verified, reconciled
        // or has its VPA properties changed (a failed one leaves it as it was), and keypair
        // events change its services, not its VPAs.
        if orchestration_type.starts_with(orchestration_types::KEYPAIR_PREFIX)
            || orchestration_type.starts_with(orchestration_types::VPA_MIGRATE)
            || orchestration_type == orchestration_types::VPA_UPGRADE
            || orchestration_type == orchestration_types::VPA_UPDATE
            || orchestration_type == orchestration_types::VPA_VERIFY
            || orchestration_type == orchestration_types::VPA_RECONCILE
        {
            return VpaTransition::Unchanged;
        }
        match (orchestration_type, end) {
            (VPA_DEPLOY, Completed) => VpaTransition::To(VpaState::Active),
            (VPA_DISPOSE, Completed) => VpaTransition::To(VpaState::Disposed),
            (VPA_DEPLOY, Errored) => VpaTransition::Compensate,
            (_, Errored) => VpaTransition::To(VpaState::Error),
            _ => VpaTransition::Unchanged,
        }
    }

    /// Whether a dispose has begun (or ended): asking for another changes nothing.
    pub fn is_disposing_or_gone(self) -> bool {
        matches!(self, VpaState::Disposing | VpaState::Disposed)
    }
}

/// The text form and the `sqlx` mapping of a state stored as text.
/// Where a participant's move between cells stands.
///
/// `provisioning` (the target is being provisioned) → `switched` (the participant now
/// lives in the target; the source is being cleaned up) → `completed`; or, when
/// provisioning fails, `rolling-back` → `rolled-back` (the participant never left its
/// source). `failed`: the rollback itself failed and left objects in the target;
/// `cleanup-failed`: the participant moved but its source still holds objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationState {
    /// The target cell is being provisioned.
    Provisioning,
    /// Routing and the VPAs point at the target; the source is being disposed of.
    Switched,
    /// The participant lives in the target alone.
    Completed,
    /// Provisioning failed; what it made in the target is being disposed of.
    RollingBack,
    /// The participant stayed in its source; the target holds nothing of it.
    RolledBack,
    /// The rollback failed: the target may hold objects of the participant.
    Failed,
    /// The participant moved, but disposing of its source failed.
    CleanupFailed,
}

impl MigrationState {
    /// States in which a migration is under way (at most one per participant), in SQL.
    pub const UNFINISHED_SQL: &str = "'provisioning', 'switched', 'rolling-back'";
    /// States in which a migration holds a place in its target cell, in SQL.
    pub const RESERVING_SQL: &str = "'provisioning', 'rolling-back'";
    /// States in which a migration failed to move its participant, in SQL.
    pub const UNMOVED_SQL: &str = "'rolled-back', 'failed'";
}

/// Where the draining of a cell stands: `running` ⇄ `paused`, then `completed` (the
/// cell is `drained`), `cancelled` (the cell is `cordoned`) or `stalled` (participants
/// are left that cannot move; resuming tries again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DrainState {
    /// Migrations are being started.
    Running,
    /// No new migrations start; those under way finish.
    Paused,
    /// Every participant has left the cell.
    Completed,
    /// Stopped by the operator.
    Cancelled,
    /// Participants remain that could not be moved.
    Stalled,
}

/// Where a rebalance plan stands: `planned` (a dry run to read) → `running` (executing)
/// → `completed`; `cancelled` by the operator; `stale` when execution was asked after
/// the fleet changed under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PlanState {
    /// Computed, not executed.
    Planned,
    /// Its moves are being started.
    Running,
    /// Every move was started and has finished.
    Completed,
    /// Stopped by the operator: no further moves start.
    Cancelled,
    /// Refused at execution: the cells or participants it was computed from changed.
    Stale,
}

/// Where a rollout stands: `running` ⇄ `paused` (by the operator, or by itself when its
/// failure budget is spent), then `completed` (every selected participant was tried) or
/// `aborted` (by the operator; upgrades under way finish, no further ones start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RolloutState {
    /// Upgrades are being started, batch after batch.
    Running,
    /// No new upgrades start; those under way finish.
    Paused,
    /// Every selected participant was upgraded, failed within the budget, or skipped.
    Completed,
    /// More upgrades failed than the budget allows and they could not be retried.
    Failed,
    /// Stopped for good by the operator.
    Aborted,
}

/// Where one participant of a rollout stands: `pending` → `upgrading` → `upgraded` or
/// `failed` (a resume makes failed ones pending again); `skipped` when it no longer
/// qualifies (disposed, on the target version already) or the rollout was aborted first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RolloutTargetState {
    /// Not started yet.
    Pending,
    /// Its upgrade orchestration runs.
    Upgrading,
    /// On the target version.
    Upgraded,
    /// Its upgrade failed; it stays on its old version.
    Failed,
    /// Not upgraded, and not to be (detail says why).
    Skipped,
}

/// Where decommissioning a tenant stands: `running` (its participants are being
/// disposed), then `completed` (the tenant is deleted) or `failed` (a participant could not
/// be disposed; the tenant stays, and asking again tries again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DecommissionState {
    /// Participants are being disposed.
    Running,
    /// Every participant was disposed and the tenant deleted.
    Completed,
    /// A participant's dispose failed; the tenant is kept.
    Failed,
}

macro_rules! stored_as_text {
    ($state:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $state {
            /// The stored and wire name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($state::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $state {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $state {
            type Err = UnknownState;

            fn from_str(text: &str) -> Result<Self, UnknownState> {
                match text {
                    $($text => Ok($state::$variant),)+
                    _ => Err(UnknownState {
                        kind: stringify!($state),
                        text: text.to_string(),
                    }),
                }
            }
        }

        impl sqlx::Type<sqlx::Any> for $state {
            fn type_info() -> sqlx::any::AnyTypeInfo {
                <str as sqlx::Type<sqlx::Any>>::type_info()
            }
        }

        impl<'q> sqlx::Encode<'q, sqlx::Any> for $state {
            fn encode_by_ref(
                &self,
                buf: &mut <sqlx::Any as sqlx::Database>::ArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<'q, sqlx::Any>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Any> for $state {
            fn decode(
                value: <sqlx::Any as sqlx::Database>::ValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&str as sqlx::Decode<'r, sqlx::Any>>::decode(value)?;
                Ok(text.parse::<$state>()?)
            }
        }
    };
}

stored_as_text!(StepState {
    Pending => "pending",
    Dispatched => "dispatched",
    Completed => "completed",
    Failed => "failed",
    Cancelled => "cancelled",
});

stored_as_text!(MigrationState {
    Provisioning => "provisioning",
    Switched => "switched",
    Completed => "completed",
    RollingBack => "rolling-back",
    RolledBack => "rolled-back",
    Failed => "failed",
    CleanupFailed => "cleanup-failed",
});

stored_as_text!(DrainState {
    Running => "running",
    Paused => "paused",
    Completed => "completed",
    Cancelled => "cancelled",
    Stalled => "stalled",
});

stored_as_text!(PlanState {
    Planned => "planned",
    Running => "running",
    Completed => "completed",
    Cancelled => "cancelled",
    Stale => "stale",
});

stored_as_text!(DecommissionState {
    Running => "running",
    Completed => "completed",
    Failed => "failed",
});

stored_as_text!(RolloutState {
    Running => "running",
    Paused => "paused",
    Completed => "completed",
    Failed => "failed",
    Aborted => "aborted",
});

stored_as_text!(RolloutTargetState {
    Pending => "pending",
    Upgrading => "upgrading",
    Upgraded => "upgraded",
    Failed => "failed",
    Skipped => "skipped",
});

stored_as_text!(VpaState {
    Pending => "pending",
    Active => "active",
    Disposing => "disposing",
    Disposed => "disposed",
    Error => "error",
});

/// A stored state no release of cfm writes.
#[derive(Debug, thiserror::Error)]
#[error("unknown {kind} '{text}'")]
pub struct UnknownState {
    kind: &'static str,
    text: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_serde_names_agree() {
        for state in [
            StepState::Pending,
            StepState::Dispatched,
            StepState::Completed,
            StepState::Failed,
            StepState::Cancelled,
        ] {
            let json = serde_json::to_value(state).unwrap();
            assert_eq!(json, state.as_str());
            assert_eq!(state.as_str().parse::<StepState>().unwrap(), state);
        }
        for state in [
            VpaState::Pending,
            VpaState::Active,
            VpaState::Disposing,
            VpaState::Disposed,
            VpaState::Error,
        ] {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
            assert_eq!(state.as_str().parse::<VpaState>().unwrap(), state);
        }
        for state in [
            PlanState::Planned,
            PlanState::Running,
            PlanState::Completed,
            PlanState::Cancelled,
            PlanState::Stale,
        ] {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
            assert_eq!(state.as_str().parse::<PlanState>().unwrap(), state);
        }
        assert!("canceled".parse::<StepState>().is_err());
    }

    #[test]
    fn vpas_follow_their_orchestrations() {
        use OrchestrationState::*;
        use orchestration_types::{VPA_DEPLOY, VPA_DISPOSE};
        let to = VpaTransition::To;
        assert_eq!(VpaState::after(VPA_DEPLOY, Completed), to(VpaState::Active));
        assert_eq!(
            VpaState::after(VPA_DISPOSE, Completed),
            to(VpaState::Disposed)
        );
        assert_eq!(
            VpaState::after(VPA_DEPLOY, Errored),
            VpaTransition::Compensate
        );
        assert_eq!(VpaState::after(VPA_DISPOSE, Errored), to(VpaState::Error));
        assert_eq!(
            VpaState::after("other", Completed),
            VpaTransition::Unchanged
        );
        assert_eq!(
            VpaState::after(VPA_DEPLOY, Running),
            VpaTransition::Unchanged
        );
    }
}
