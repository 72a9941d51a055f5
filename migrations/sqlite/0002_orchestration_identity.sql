-- Whom an orchestration works for, fixed when it starts. Every task is addressed from
-- these columns, never from the processing data that activity outputs merge into.
-- Rows a manager of the release before leaves empty fall back to their base keys.
ALTER TABLE orchestrations ADD COLUMN participant_id TEXT NOT NULL DEFAULT '';
ALTER TABLE orchestrations ADD COLUMN participant_context_id TEXT NOT NULL DEFAULT '';
UPDATE orchestrations SET
    participant_id = COALESCE(json_extract(processing_data, '$."cfm.participant.id"'), ''),
    participant_context_id = COALESCE(json_extract(processing_data, '$."cfm.participant.contextId"'), '');
