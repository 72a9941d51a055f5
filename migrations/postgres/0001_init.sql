-- cfm metadata and orchestration state (PostgreSQL).
-- The same tables as the SQLite schema, statement for statement, so one set of queries
-- serves both. JSON documents are stored as the TEXT the application writes; the ones
-- the predicate language reaches into also have a generated JSONB copy (`*_doc`), parsed
-- once on write, with GIN indexes for containment.

CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE tenants (
    id             TEXT PRIMARY KEY,
    version        BIGINT NOT NULL,
    properties     TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    properties_doc JSONB GENERATED ALWAYS AS (properties::jsonb) STORED
);

CREATE TABLE cells (
    id              TEXT PRIMARY KEY,
    version         BIGINT NOT NULL,
    external_id     TEXT NOT NULL,
    state           TEXT NOT NULL,
    state_timestamp TEXT NOT NULL,
    properties      TEXT NOT NULL,
    properties_doc  JSONB GENERATED ALWAYS AS (properties::jsonb) STORED
);
CREATE UNIQUE INDEX cells_external_id ON cells (external_id) WHERE external_id <> '';

CREATE TABLE dataspace_profiles (
    id             TEXT PRIMARY KEY,
    version        BIGINT NOT NULL,
    dataspace_spec TEXT NOT NULL,
    properties     TEXT NOT NULL
);

CREATE TABLE dataspace_deployments (
    id              TEXT PRIMARY KEY,
    version         BIGINT NOT NULL,
    profile_id      TEXT NOT NULL REFERENCES dataspace_profiles (id),
    cell_id         TEXT NOT NULL REFERENCES cells (id),
    state           TEXT NOT NULL,
    state_timestamp TEXT NOT NULL,
    UNIQUE (profile_id, cell_id)
);

CREATE TABLE participant_profiles (
    id                        TEXT PRIMARY KEY,
    version                   BIGINT NOT NULL,
    tenant_id                 TEXT NOT NULL REFERENCES tenants (id),
    identifier                TEXT NOT NULL,
    cell_id                   TEXT NOT NULL REFERENCES cells (id),
    dataspace_profile_ids     TEXT NOT NULL,
    participant_roles         TEXT NOT NULL,
    vpas                      TEXT NOT NULL,
    properties                TEXT NOT NULL,
    error                     BIGINT NOT NULL DEFAULT 0,
    error_detail              TEXT,
    dataspace_profile_ids_doc JSONB GENERATED ALWAYS AS (dataspace_profile_ids::jsonb) STORED,
    participant_roles_doc     JSONB GENERATED ALWAYS AS (participant_roles::jsonb) STORED,
    vpas_doc                  JSONB GENERATED ALWAYS AS (vpas::jsonb) STORED,
    properties_doc            JSONB GENERATED ALWAYS AS (properties::jsonb) STORED
);
CREATE INDEX participant_profiles_tenant ON participant_profiles (tenant_id);
CREATE INDEX participant_profiles_cell ON participant_profiles (cell_id);
CREATE INDEX participant_profiles_identifier ON participant_profiles USING GIN (identifier gin_trgm_ops);
CREATE INDEX participant_profiles_vpas ON participant_profiles USING GIN (vpas_doc jsonb_path_ops);
CREATE INDEX participant_profiles_properties ON participant_profiles USING GIN (properties_doc jsonb_path_ops);

CREATE TABLE activity_definitions (
    type          TEXT PRIMARY KEY,
    description   TEXT NOT NULL,
    input_schema  TEXT NOT NULL,
    output_schema TEXT NOT NULL
);

CREATE TABLE orchestration_definitions (
    id          TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    schema      TEXT NOT NULL,
    activities  TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE orchestrations (
    id                 TEXT PRIMARY KEY,
    version            BIGINT NOT NULL,
    correlation_id     TEXT NOT NULL,
    definition_id      TEXT NOT NULL,
    orchestration_type TEXT NOT NULL,
    state              BIGINT NOT NULL,
    state_timestamp    TEXT NOT NULL,
    created_timestamp  TEXT NOT NULL,
    processing_data    TEXT NOT NULL,
    output_data        TEXT NOT NULL,
    error_detail       TEXT
);
CREATE INDEX orchestrations_correlation ON orchestrations (correlation_id);

-- One row per activity of an orchestration; `state` is pending | dispatched | completed | failed.
CREATE TABLE orchestration_steps (
    orchestration_id   TEXT NOT NULL REFERENCES orchestrations (id),
    activity_id        TEXT NOT NULL,
    position           BIGINT NOT NULL,
    activity_type      TEXT NOT NULL,
    depends_on         TEXT NOT NULL,
    state              TEXT NOT NULL,
    attempt            BIGINT NOT NULL DEFAULT 0,
    retries            BIGINT NOT NULL DEFAULT 0,
    last_error         TEXT,
    started_at         TEXT,
    completed_at       TEXT,
    output             TEXT,
    PRIMARY KEY (orchestration_id, activity_id)
);

-- The embedded queue and transactional outbox: a row is written in the same transaction
-- as the state change that causes it and deleted in the transaction that applies its result.
CREATE TABLE queue (
    id           TEXT PRIMARY KEY,
    topic        TEXT NOT NULL,
    payload      TEXT NOT NULL,
    available_at BIGINT NOT NULL,
    leased_until BIGINT,
    deliveries   BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX queue_available ON queue (topic, available_at);
