-- A tenant's profiles are listed in id order, a page at a time: with the id in the index,
-- a page is read in order and stops at its limit, and the total is counted from the index
-- alone. On the tenant id only, a million profiles made a page cost a sort of the tenant's
-- rows or a walk of the whole table in id order.
CREATE INDEX participant_profiles_tenant_id ON participant_profiles (tenant_id, id);
DROP INDEX participant_profiles_tenant;
