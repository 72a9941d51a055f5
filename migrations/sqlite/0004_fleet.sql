-- Fleet operations: cells carry capacity and labels, participants move between cells.
ALTER TABLE cells ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
-- NULL: no limit.
ALTER TABLE cells ADD COLUMN max_participants BIGINT;
-- Set when a profile's VPAs are disposed: placement and usage count the others.
ALTER TABLE participant_profiles ADD COLUMN disposed BIGINT NOT NULL DEFAULT 0;
UPDATE participant_profiles SET disposed = 1 WHERE vpas LIKE '%"state":"disposed"%';
CREATE INDEX participant_profiles_cell_live ON participant_profiles (cell_id, disposed);

-- One row per move of a participant between cells; its history stays.
CREATE TABLE migrations (
    id             TEXT PRIMARY KEY,
    profile_id     TEXT NOT NULL,
    tenant_id      TEXT NOT NULL,
    source_cell_id TEXT NOT NULL,
    target_cell_id TEXT NOT NULL,
    -- What provisioned the participant in its source: the source's dispose runs from it.
    source_orchestration_id TEXT NOT NULL,
    state          TEXT NOT NULL,
    drain_id       TEXT,
    error_detail   TEXT,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);
-- A participant is migrated once at a time, whichever replica or drain asks.
CREATE UNIQUE INDEX migrations_one_at_a_time ON migrations (profile_id)
    WHERE state IN ('provisioning', 'switched', 'rolling-back');
CREATE INDEX migrations_profile ON migrations (profile_id, created_at);
CREATE INDEX migrations_target ON migrations (target_cell_id, state);
CREATE INDEX migrations_drain ON migrations (drain_id, state);

-- Moving every participant out of a cell.
CREATE TABLE drains (
    id          TEXT PRIMARY KEY,
    version     BIGINT NOT NULL,
    cell_id     TEXT NOT NULL,
    state       TEXT NOT NULL,
    parallelism BIGINT NOT NULL,
    total       BIGINT NOT NULL,
    detail      TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE UNIQUE INDEX drains_one_per_cell ON drains (cell_id) WHERE state IN ('running', 'paused');
