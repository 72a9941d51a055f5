//! Tenants: the organisations participants belong to.

use sqlx::Row;

use crate::error::{ManagerError, Result};
use crate::model::{Properties, Tenant, new_id, now};
use crate::store::{Conn, Db, Page, Paged, from_json, to_json};

pub async fn create(db: &Db, properties: Properties) -> Result<Tenant> {
    let tenant = Tenant {
        id: new_id(),
        version: 0,
        properties,
    };
    sqlx::query("INSERT INTO tenants (id, version, properties, created_at) VALUES ($1, $2, $3, $4)")
        .bind(&tenant.id)
        .bind(tenant.version)
        .bind(to_json(&tenant.properties))
        .bind(now())
        .execute(db.writer())
        .await?;
    Ok(tenant)
}

pub async fn get(conn: &mut Conn, id: &str) -> Result<Tenant> {
    let row = sqlx::query("SELECT id, version, properties FROM tenants WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| ManagerError::not_found(format!("tenant '{id}' not found")))?;
    read(&row)
}

pub async fn list(db: &Db, page: Page) -> Result<Paged<Tenant>> {
    let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tenants")
        .fetch_one(db.read())
        .await?;
    let rows =
        sqlx::query("SELECT id, version, properties FROM tenants ORDER BY id LIMIT $1 OFFSET $2")
            .bind(page.limit)
            .bind(page.offset)
            .fetch_all(db.read())
            .await?;
    let items = rows.iter().map(read).collect::<Result<_>>()?;
    Ok(Paged { items, total, page })
}

fn read(row: &crate::store::Row) -> Result<Tenant> {
    Ok(Tenant {
        id: row.get("id"),
        version: row.get("version"),
        properties: from_json(row.get("properties"), "tenant properties")?,
    })
}
