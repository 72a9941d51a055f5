//! The Tenant Manager: tenants, cells, dataspace profiles and participant profiles.
//!
//! It is the metadata control point. Deploying a participant profile writes the profile
//! and starts its orchestration in one transaction; the engine reports back through the
//! hooks the tenant manager gives it ([`profiles::ProfileLifecycle`]), in the transaction
//! that finishes the orchestration.

pub mod cells;
pub mod dataspaces;
pub mod decommissions;
pub mod drains;
pub mod keypairs;
pub mod migrations;
pub mod operations;
mod placement;
pub mod profiles;
pub mod rebalance;
pub mod reconciles;
pub mod rollouts;
pub mod tenants;
pub mod updates;
