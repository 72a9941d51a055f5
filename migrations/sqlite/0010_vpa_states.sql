-- The states each profile's VPAs are in, one row per distinct state: `vpas.state = 'error'`
-- reads the matching profiles in id order from (state, profile_id) and stops at the page's
-- end, instead of walking every profile's VPAs through json_each.
--
-- Kept by triggers rather than by each statement that writes vpas, so no write path (nor a
-- bulk load straight into the table) can leave it stale.
CREATE TABLE participant_vpa_states (
    state      TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    PRIMARY KEY (state, profile_id)
) WITHOUT ROWID;
CREATE INDEX participant_vpa_states_profile ON participant_vpa_states (profile_id);

CREATE TRIGGER participant_vpa_states_insert AFTER INSERT ON participant_profiles
BEGIN
    INSERT OR IGNORE INTO participant_vpa_states (state, profile_id)
    SELECT json_extract(value, '$.state'), NEW.id FROM json_each(NEW.vpas)
    WHERE json_type(NEW.vpas) = 'array' AND json_type(value, '$.state') = 'text';
END;
CREATE TRIGGER participant_vpa_states_update AFTER UPDATE OF vpas ON participant_profiles
    WHEN OLD.vpas IS NOT NEW.vpas
BEGIN
    DELETE FROM participant_vpa_states WHERE profile_id = OLD.id;
    INSERT OR IGNORE INTO participant_vpa_states (state, profile_id)
    SELECT json_extract(value, '$.state'), NEW.id FROM json_each(NEW.vpas)
    WHERE json_type(NEW.vpas) = 'array' AND json_type(value, '$.state') = 'text';
END;
CREATE TRIGGER participant_vpa_states_delete AFTER DELETE ON participant_profiles
BEGIN
    DELETE FROM participant_vpa_states WHERE profile_id = OLD.id;
END;

INSERT OR IGNORE INTO participant_vpa_states (state, profile_id)
SELECT json_extract(state.value, '$.state'), profile.id
FROM participant_profiles AS profile, json_each(profile.vpas) AS state
WHERE json_type(profile.vpas) = 'array' AND json_type(state.value, '$.state') = 'text';
