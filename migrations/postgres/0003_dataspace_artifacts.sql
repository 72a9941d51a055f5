-- Upstream's dataspace profiles carry `artifacts` (a list of strings): kept as given.
ALTER TABLE dataspace_profiles ADD COLUMN artifacts TEXT NOT NULL DEFAULT '[]';
