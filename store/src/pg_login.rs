//! Who a runtime process logs in as. The owner of the event store's tables
//! (or a superuser) can disable the append-only triggers, rewrite a stream
//! and recompute its hashes so that `audit verify` says intact; a process
//! that holds those credentials on every worker host hands that power to
//! whoever gets into any of them. So migrations run as their own step with
//! the owner's credentials (`slipway db migrate`), and every runtime process
//! logs in as a role that has the writer grants and owns nothing: it is
//! refused here, at connect, with what to do instead.

use sqlx::{PgPool, Row};

use crate::event_store::StoreError;

/// The migrations this build applies (`slipway db migrate`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// What the login role is, for the event store in the current schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub role: String,
    pub superuser: bool,
    /// The owner of the `events` table; `None` when it does not exist (not migrated).
    pub events_owner: Option<String>,
    /// The login role is the owner, or a member of it.
    pub owns_events: bool,
    /// The highest migration applied; `None` when it cannot be read.
    pub migration: Option<i64>,
}

/// Why a runtime process may not run with this login, if it may not.
pub fn refusal(login: &Login, schema: &str, latest: i64) -> Option<String> {
    let fix = "run migrations with the owner's credentials (`slipway db migrate --grant-to ROLE`), \
               then run Slipway as ROLE, a login role that owns nothing and is a member of slipway_writer";
    if login.superuser {
        return Some(format!("the database login `{}` is a superuser: a runtime process must not hold those rights; {fix}", login.role));
    }
    let Some(owner) = &login.events_owner else {
        return Some(format!("schema `{schema}` has no event store yet: run `slipway db migrate` with the owner's credentials first"));
    };
    if login.owns_events {
        return Some(format!(
            "the database login `{}` owns the event store (as `{owner}`) and could rewrite its history; {fix}",
            login.role
        ));
    }
    match login.migration {
        Some(level) if level < latest => Some(format!(
            "the database is at migration {level} and this Slipway needs {latest}: run `slipway db migrate` with the owner's credentials"
        )),
        Some(level) if level > latest => {
            Some(format!("the database is at migration {level}, newer than this Slipway ({latest}): upgrade Slipway on this host"))
        }
        Some(_) => None,
        None => Some(format!(
            "the database login `{}` cannot read the migration level (_sqlx_migrations): run `slipway db migrate --grant-to {}`",
            login.role, login.role
        )),
    }
}

/// Reads what the session's login role is (before any `SET ROLE`).
pub async fn login(pool: &PgPool) -> Result<Login, StoreError> {
    let db = |context: &'static str| move |source| StoreError::Database { backend: "postgres", context: context.into(), source };
    let row = sqlx::query(
        "SELECT session_user::text AS role, r.rolsuper,
                t.tableowner::text AS owner,
                COALESCE(t.tableowner IS NOT NULL AND pg_has_role(session_user, t.tableowner, 'MEMBER'), false) AS owns,
                to_regclass('_sqlx_migrations') IS NOT NULL
                    AND has_table_privilege(to_regclass('_sqlx_migrations'), 'SELECT') AS readable
         FROM pg_roles r
         LEFT JOIN pg_tables t ON t.schemaname = current_schema() AND t.tablename = 'events'
         WHERE r.rolname = session_user",
    )
    .fetch_one(pool)
    .await
    .map_err(db("reading the login role"))?;
    let readable: bool = row.try_get("readable").unwrap_or(false);
    let migration = if readable {
        sqlx::query_scalar::<_, Option<i64>>("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await
            .map_err(db("reading the migration level"))?
    } else {
        None
    };
    Ok(Login {
        role: row.try_get("role").unwrap_or_default(),
        superuser: row.try_get("rolsuper").unwrap_or(false),
        events_owner: row.try_get("owner").ok().flatten(),
        owns_events: row.try_get("owns").unwrap_or(false),
        migration,
    })
}

/// The latest migration of this build.
pub fn latest() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> Login {
        Login { role: "slipway_app".into(), superuser: false, events_owner: Some("slipway".into()), owns_events: false, migration: Some(8) }
    }

    #[test]
    fn a_role_with_the_writer_grants_only_at_the_right_level_runs() {
        assert_eq!(refusal(&runtime(), "public", 8), None);
    }

    #[test]
    fn owners_superusers_and_unmigrated_or_stale_schemas_are_refused_with_the_fix() {
        let owner = Login { owns_events: true, role: "slipway".into(), ..runtime() };
        assert!(refusal(&owner, "public", 8).unwrap().contains("owns the event store"));
        let root = Login { superuser: true, ..runtime() };
        assert!(refusal(&root, "public", 8).unwrap().contains("superuser"));
        let empty = Login { events_owner: None, migration: None, ..runtime() };
        assert!(refusal(&empty, "s1", 8).unwrap().contains("schema `s1` has no event store yet"));
        assert!(refusal(&runtime(), "public", 9).unwrap().contains("run `slipway db migrate`"));
        assert!(refusal(&runtime(), "public", 7).unwrap().contains("upgrade Slipway"));
        let blind = Login { migration: None, ..runtime() };
        assert!(refusal(&blind, "public", 8).unwrap().contains("--grant-to slipway_app"));
    }
}
