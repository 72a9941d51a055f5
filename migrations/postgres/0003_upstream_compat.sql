-- Upstream's dataspace profiles carry `artifacts` (a list of strings): kept as given.
ALTER TABLE dataspace_profiles ADD COLUMN artifacts TEXT NOT NULL DEFAULT '[]';
-- A DID is deployed once: each deploy looks for a live profile with the same identifier.
CREATE INDEX participant_profiles_identifier_eq ON participant_profiles (identifier);
