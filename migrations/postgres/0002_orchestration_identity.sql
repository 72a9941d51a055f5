-- Whom an orchestration works for, fixed when it starts. Every task is addressed from
-- these columns, never from the processing data that activity outputs merge into.
-- `json`, not `jsonb`: it reads documents holding U+0000, which older outputs may.
-- Rows a manager of the release before leaves empty fall back to their base keys.
ALTER TABLE orchestrations ADD COLUMN participant_id TEXT NOT NULL DEFAULT '';
ALTER TABLE orchestrations ADD COLUMN participant_context_id TEXT NOT NULL DEFAULT '';
UPDATE orchestrations SET
    participant_id = COALESCE(processing_data::json ->> 'cfm.participant.id', ''),
    participant_context_id = COALESCE(processing_data::json ->> 'cfm.participant.contextId', '');
