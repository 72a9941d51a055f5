-- The states each profile's VPAs are in, one row per distinct state: `vpas.state = 'error'`
-- reads the matching profiles in id order from (state, profile_id) and stops at the page's
-- end. From the GIN index on vpas_doc the same page cost a fetch and a sort of every
-- match: at a million profiles, 10,000 rows for 100.
--
-- Kept by triggers rather than by each statement that writes vpas, so no write path (nor a
-- bulk load straight into the table) can leave it stale.
CREATE TABLE participant_vpa_states (
    state      TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    PRIMARY KEY (state, profile_id)
);
CREATE INDEX participant_vpa_states_profile ON participant_vpa_states (profile_id);

CREATE FUNCTION participant_vpa_states_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        DELETE FROM participant_vpa_states WHERE profile_id = OLD.id;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO participant_vpa_states (state, profile_id)
        SELECT DISTINCT state #>> '{}', NEW.id
        FROM jsonb_path_query(NEW.vpas_doc, 'lax $[*].state ? (@.type() == "string")') AS state;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER participant_vpa_states_insert AFTER INSERT ON participant_profiles
    FOR EACH ROW EXECUTE FUNCTION participant_vpa_states_write();
CREATE TRIGGER participant_vpa_states_update AFTER UPDATE OF vpas ON participant_profiles
    FOR EACH ROW WHEN (OLD.vpas IS DISTINCT FROM NEW.vpas)
    EXECUTE FUNCTION participant_vpa_states_write();
CREATE TRIGGER participant_vpa_states_delete AFTER DELETE ON participant_profiles
    FOR EACH ROW EXECUTE FUNCTION participant_vpa_states_write();

INSERT INTO participant_vpa_states (state, profile_id)
SELECT DISTINCT state #>> '{}', id
FROM participant_profiles,
     jsonb_path_query(vpas_doc, 'lax $[*].state ? (@.type() == "string")') AS state;
