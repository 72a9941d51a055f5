//! The Tenant Manager: tenants, cells, dataspace profiles and participant profiles.
//!
//! It is the metadata control point. Deploying a participant profile writes the profile
//! and starts its orchestration in one transaction; the engine reports back through
//! [`profiles::on_orchestration_finished`] in the transaction that finishes it.

pub mod cells;
pub mod dataspaces;
pub mod profiles;
pub mod tenants;
