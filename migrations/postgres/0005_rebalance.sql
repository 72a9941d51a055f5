-- Rebalancing: a plan of moves that brings every cell within a utilisation band.
CREATE TABLE rebalance_plans (
    id          TEXT PRIMARY KEY,
    version     BIGINT NOT NULL,
    state       TEXT NOT NULL,
    band_min    DOUBLE PRECISION NOT NULL,
    band_max    DOUBLE PRECISION NOT NULL,
    parallelism BIGINT NOT NULL,
    -- What the plan was computed from and leaves (PlannedCell list), and the cells left
    -- out or left outside the band: written once, read whole.
    cells       TEXT NOT NULL,
    excluded    TEXT NOT NULL,
    unresolved  TEXT NOT NULL,
    detail      TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL
);
CREATE INDEX rebalance_plans_state ON rebalance_plans (state);

-- A plan's moves, in the order they start.
CREATE TABLE rebalance_moves (
    plan_id        TEXT NOT NULL,
    position       BIGINT NOT NULL,
    profile_id     TEXT NOT NULL,
    tenant_id      TEXT NOT NULL,
    source_cell_id TEXT NOT NULL,
    target_cell_id TEXT NOT NULL,
    -- planned, started (migration_id says how it went) or skipped (detail says why).
    state          TEXT NOT NULL,
    migration_id   TEXT,
    detail         TEXT,
    PRIMARY KEY (plan_id, position)
);
