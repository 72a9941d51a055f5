-- Versioned templates, what provisioned each participant, rollouts of new versions, and
-- decommissioning tenants.

-- A definition's row is its newest version; every version stays here, so participants
-- on an older one keep disposing and migrating with what deployed them.
ALTER TABLE orchestration_definitions ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
CREATE TABLE orchestration_definition_versions (
    id          TEXT NOT NULL,
    version     BIGINT NOT NULL,
    description TEXT NOT NULL,
    schema      TEXT NOT NULL,
    activities  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (id, version)
);
INSERT INTO orchestration_definition_versions (id, version, description, schema, activities, created_at)
    SELECT id, 1, description, schema, activities, created_at FROM orchestration_definitions;

ALTER TABLE orchestrations ADD COLUMN definition_version BIGINT NOT NULL DEFAULT 1;
-- The sha256 of the plugin that completed the step.
ALTER TABLE orchestration_steps ADD COLUMN plugin_digest TEXT;

-- The template (and version) a participant was last provisioned with, and the plugins
-- ([{activityType, sha256}]) that ran it: what rollouts select on.
ALTER TABLE participant_profiles ADD COLUMN template_id TEXT;
ALTER TABLE participant_profiles ADD COLUMN template_version BIGINT;
ALTER TABLE participant_profiles ADD COLUMN plugin_digests TEXT NOT NULL DEFAULT '[]';
UPDATE participant_profiles SET template_version = 1, template_id = (
    SELECT o.definition_id FROM orchestrations o
    WHERE o.correlation_id = participant_profiles.id AND o.orchestration_type = 'cfm.orchestration.vpa.deploy'
    ORDER BY o.created_timestamp DESC LIMIT 1);
CREATE INDEX participant_profiles_template ON participant_profiles (template_id, template_version);

-- Bringing the participants a selector picks to another version of their template.
CREATE TABLE rollouts (
    id               TEXT PRIMARY KEY,
    version          BIGINT NOT NULL,
    template_id      TEXT NOT NULL,
    target_version   BIGINT NOT NULL,
    selector         TEXT NOT NULL,
    batch_size       BIGINT NOT NULL,
    max_parallel     BIGINT NOT NULL,
    -- As asked ({"count": n} or {"percent": p}), and in participants.
    failure_budget   TEXT NOT NULL,
    max_failures     BIGINT NOT NULL,
    pause_ms         BIGINT NOT NULL,
    state            TEXT NOT NULL,
    total            BIGINT NOT NULL,
    -- The batch being worked on, and when a pause before it ends.
    batch            BIGINT NOT NULL,
    batch_not_before TEXT,
    -- Failed upgrades since the rollout started or was last resumed.
    failures         BIGINT NOT NULL,
    detail           TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);
CREATE INDEX rollouts_state ON rollouts (state);
-- One rollout of a template at a time.
CREATE UNIQUE INDEX rollouts_one_per_template ON rollouts (template_id) WHERE state IN ('running', 'paused');

-- A rollout's participants, in the order they are upgraded.
CREATE TABLE rollout_targets (
    rollout_id       TEXT NOT NULL,
    position         BIGINT NOT NULL,
    batch            BIGINT NOT NULL,
    profile_id       TEXT NOT NULL,
    tenant_id        TEXT NOT NULL,
    -- pending, upgrading, upgraded, failed or skipped (detail says why).
    state            TEXT NOT NULL,
    from_version     BIGINT,
    orchestration_id TEXT,
    attempts         BIGINT NOT NULL DEFAULT 0,
    detail           TEXT,
    updated_at       TEXT NOT NULL,
    PRIMARY KEY (rollout_id, position)
);
CREATE UNIQUE INDEX rollout_targets_profile ON rollout_targets (rollout_id, profile_id);
CREATE INDEX rollout_targets_state ON rollout_targets (rollout_id, state, batch);
-- No participant is upgraded twice at once, whichever rollout or replica asks.
CREATE UNIQUE INDEX rollout_targets_one_upgrade ON rollout_targets (profile_id) WHERE state = 'upgrading';

-- Decommissioning a tenant: disposing every participant, then deleting it.
CREATE TABLE tenant_decommissions (
    id          TEXT PRIMARY KEY,
    version     BIGINT NOT NULL,
    tenant_id   TEXT NOT NULL,
    state       TEXT NOT NULL,
    parallelism BIGINT NOT NULL,
    total       BIGINT NOT NULL,
    detail      TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX tenant_decommissions_tenant ON tenant_decommissions (tenant_id, created_at);
CREATE UNIQUE INDEX tenant_decommissions_one_running ON tenant_decommissions (tenant_id) WHERE state = 'running';

-- Lifecycle events (orchestration and fleet-operation state changes), written in the
-- transaction that makes the change and served in seq order.
CREATE TABLE events (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    at        TEXT NOT NULL,
    kind      TEXT NOT NULL,
    -- NULL for operator-wide events (a rollout's).
    tenant_id TEXT,
    subject   TEXT NOT NULL,
    data      TEXT NOT NULL
);
CREATE INDEX events_at ON events (at);

-- A change of a participant's VPA properties asked for and not yet applied (VPA type ->
-- the properties it will have); NULL when none is under way.
ALTER TABLE participant_profiles ADD COLUMN pending_vpa_properties TEXT;
