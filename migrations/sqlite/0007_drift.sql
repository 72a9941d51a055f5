-- Drift repair: what the last verify of a participant found, how often verifies found
-- drift, and when the participant was last checked (what the periodic reconciler orders by).
ALTER TABLE participant_profiles ADD COLUMN drift TEXT;
ALTER TABLE participant_profiles ADD COLUMN drift_state TEXT;
ALTER TABLE participant_profiles ADD COLUMN drift_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE participant_profiles ADD COLUMN drift_checked_at TEXT;
CREATE INDEX participant_profiles_drift_checked ON participant_profiles (drift_checked_at);
