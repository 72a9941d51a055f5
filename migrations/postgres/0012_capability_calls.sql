-- What plugins did through their capabilities for each participant: every refusal and
-- every write the agent hosts audited, reported with each attempt's outcome and kept for
-- the API (`/tenants/{tid}/participant-profiles/{pid}/capability-calls`). A report sent
-- twice is one run: (run_id, seq) keeps its calls once.
CREATE TABLE capability_calls (
    run_id                 TEXT NOT NULL,
    seq                    BIGINT NOT NULL,
    participant_context_id TEXT NOT NULL,
    orchestration_id       TEXT NOT NULL,
    activity_id            TEXT NOT NULL,
    activity_type          TEXT NOT NULL,
    attempt                BIGINT NOT NULL,
    plugin                 TEXT NOT NULL,
    capability             TEXT NOT NULL,
    operation              TEXT NOT NULL,
    target                 TEXT NOT NULL,
    decision               TEXT NOT NULL,
    effect                 TEXT,
    dry_run                BIGINT NOT NULL DEFAULT 0,
    -- When the agent host decided (its clock): what listings are ordered by.
    at                     TEXT NOT NULL,
    -- When the report was applied (the managers' clock): what the retention counts from.
    recorded_at            TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX capability_calls_participant ON capability_calls (participant_context_id, at);
CREATE INDEX capability_calls_recorded_at ON capability_calls (recorded_at);
