//! Tenants: the organisations participants belong to.

use sqlx::{AssertSqlSafe, Row};

use crate::error::{ManagerError, Result};
use crate::model::{Properties, Tenant, new_id, now};
use crate::query::{Field, JsonColumn, Predicate};
use crate::store::{self, Conn, Db, Page, Paged, Table, from_json, to_json};
use crate::tenant::profiles;

/// A change to a tenant's properties: keys to set, then keys to remove.
#[derive(Debug, Clone, Default)]
pub struct Patch {
    /// Keys to set, replacing their values.
    pub properties: Properties,
    /// Keys to remove, after the ones set.
    pub removed: Vec<String>,
}

/// Creates a tenant with `properties`, at version 0.
pub async fn create(db: &Db, properties: Properties) -> Result<Tenant> {
    let tenant = Tenant {
        id: new_id(),
        version: 0,
        properties,
    };
    sqlx::query(
        "INSERT INTO tenants (id, version, properties, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(&tenant.id)
    .bind(tenant.version)
    .bind(to_json(&tenant.properties)?)
    .bind(now())
    .execute(db.writer())
    .await?;
    Ok(tenant)
}

/// Merges `patch` into a tenant's properties. With `expected_version`, a tenant changed
/// since the client read it is a conflict; without, concurrent patches all apply, one
/// after the other, and none loses a key.
pub async fn patch(
    db: &Db,
    id: &str,
    patch: Patch,
    expected_version: Option<i64>,
) -> Result<Tenant> {
    let mut tx = store::write(db).await?;
    let mut tenant = lock_checked(&mut tx, id, expected_version).await?;
    tenant.properties.extend(patch.properties);
    for key in &patch.removed {
        tenant.properties.remove(key);
    }
    tenant.version += 1;
    sqlx::query("UPDATE tenants SET properties = $1, version = $2 WHERE id = $3")
        .bind(to_json(&tenant.properties)?)
        .bind(tenant.version)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(tenant)
}

/// Deletes a tenant with its decommissioned participants. Refused while any of its
/// participants is not yet `disposed`: their resources would be orphaned.
pub async fn delete(db: &Db, id: &str, expected_version: Option<i64>) -> Result<()> {
    let mut tx = store::write(db).await?;
    delete_in(&mut tx, id, expected_version).await?;
    tx.commit().await?;
    Ok(())
}

/// [`delete`] inside the caller's transaction.
pub(crate) async fn delete_in(
    tx: &mut Conn,
    id: &str,
    expected_version: Option<i64>,
) -> Result<()> {
    lock_checked(tx, id, expected_version).await?;
    profiles::refuse_while_participants_live(tx, profiles::Owner::Tenant(id)).await?;
    for statement in [
        "DELETE FROM capability_calls WHERE participant_context_id IN (SELECT id FROM participant_profiles WHERE tenant_id = $1)",
        "DELETE FROM participant_profiles WHERE tenant_id = $1",
        "DELETE FROM tenants WHERE id = $1",
    ] {
        sqlx::query(statement).bind(id).execute(&mut *tx).await?;
    }
    Ok(())
}

/// Locks the tenant's row for the rest of the transaction; "not found" when it does not
/// exist, a conflict when `expected_version` is stale.
pub(crate) async fn lock_checked(
    tx: &mut Conn,
    id: &str,
    expected_version: Option<i64>,
) -> Result<Tenant> {
    if !store::lock_row(tx, Table::Tenants, id).await? {
        return Err(not_found(id));
    }
    let tenant = get(tx, id).await?;
    check_version("tenant", id, tenant.version, expected_version)?;
    Ok(tenant)
}

/// Tenants matching a predicate, sorted by id.
pub async fn query(db: &Db, predicate: &Predicate, page: Page) -> Result<Vec<Tenant>> {
    let rows = predicate
        .select_page(SELECT, &tenant_field, db.backend(), page)?
        .fetch_all(db.queries())
        .await?;
    rows.iter().map(read).collect()
}

/// How many tenants match a predicate in all, counted up to [`store::COUNT_LIMIT`] + 1 (see
/// [`store::Total::counted`]).
pub async fn count(db: &Db, predicate: &Predicate) -> Result<i64> {
    let count = predicate.select_count_capped(SELECT, &tenant_field, db.backend())?;
    store::count(db.queries(), count).await
}

/// A stale `expected` version is a conflict naming both versions.
pub fn check_version(what: &str, id: &str, current: i64, expected: Option<i64>) -> Result<()> {
    match expected {
        Some(expected) if expected != current => Err(ManagerError::conflict(format!(
            "{what} '{id}' is at version {current}, not {expected}: it changed since it was read"
        ))),
        _ => Ok(()),
    }
}

/// The tenant `id`; a missing one is "not found".
pub async fn get(conn: &mut Conn, id: &str) -> Result<Tenant> {
    read_one(conn, id, "").await
}

/// [`get`], share-locking the tenant for the rest of the transaction, so it cannot be
/// deleted before what is being created for it commits.
pub(crate) async fn share(conn: &mut Conn, id: &str) -> Result<Tenant> {
    let lock = store::for_share(conn);
    read_one(conn, id, lock).await
}

async fn read_one(conn: &mut Conn, id: &str, lock: &str) -> Result<Tenant> {
    let row = sqlx::query(AssertSqlSafe(format!("{SELECT} WHERE id = $1{lock}")))
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| not_found(id))?;
    read(&row)
}

/// A page of tenants; only `only` when given (a token confined to one tenant).
pub async fn list(db: &Db, only: Option<&str>, page: Page) -> Result<Paged<Tenant>> {
    let filter = only.map(|id| ("id", id));
    let (rows, total) = store::paged(db, SELECT, filter, page).await?;
    let items = rows.iter().map(read).collect::<Result<_>>()?;
    Ok(Paged { items, total, page })
}

const SELECT: &str = "SELECT id, version, properties FROM tenants";

fn read(row: &crate::store::Row) -> Result<Tenant> {
    Ok(Tenant {
        id: row.get("id"),
        version: row.get("version"),
        properties: from_json(row.get("properties"), "tenant properties")?,
    })
}

fn not_found(id: &str) -> ManagerError {
    ManagerError::not_found(format!("tenant '{id}' not found"))
}

fn tenant_field(field: &str) -> Option<Field> {
    Some(match field {
        "id" => Field::Text("id"),
        "version" => Field::Integer("version"),
        "properties" => Field::Json(JsonColumn {
            column: "properties",
            scalar_keys: &[],
            key_tables: &[],
        }),
        _ => return None,
    })
}
