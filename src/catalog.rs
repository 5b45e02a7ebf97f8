//! The source side's catalog (`<metadir>/catalog.sqlite`): the destinations a volume is
//! sent to besides the archive (stream chains now, tapes later) and, per destination
//! and volume, the chain of sessions sent there, so each destination stays incremental
//! on its own.
//!
//! The schema is versioned in `meta.schema_version`; migrations run in one
//! transaction, and a catalog written by a newer version is refused rather than
//! misread. Adding tapes later means migration 2: tables `tapes` and `tape_positions`
//! referencing `sessions`, and a `kind = 'tape'` destination.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use sparsebak_format::info::SessionInfo;
use sparsebak_format::Hash;

/// The schema this build writes.
pub const SCHEMA_VERSION: i64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog {path}: {source}")]
    Sql {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("catalog {path} has schema version {found}, newer than this sparsebak ({SCHEMA_VERSION}); upgrade sparsebak")]
    TooNew { path: String, found: i64 },
    #[error("volume {volume} on {dest}: session {session} builds on {previous:?}, but the chain ends at {base:?}")]
    BrokenChain {
        dest: String,
        volume: String,
        session: String,
        previous: Option<String>,
        base: Option<String>,
    },
}

type Result<T> = std::result::Result<T, CatalogError>;

/// A destination's row id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DestId(pub i64);

/// One session sent to a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentSession {
    pub session: String,
    pub previous: Option<String>,
    pub manifest_sha256: Hash,
    pub volsize: u64,
    pub time: i64,
    pub bytes: u64,
}

pub struct Catalog {
    conn: Connection,
    path: String,
}

impl Catalog {
    /// Open (creating or migrating) the catalog at `path`.
    pub fn open(path: &Path) -> Result<Catalog> {
        let p = path.display().to_string();
        let sql = |source| CatalogError::Sql {
            path: p.clone(),
            source,
        };
        let mut conn = Connection::open(path).map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(sql)?;
        let tx = conn.transaction().map_err(sql)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        )
        .map_err(sql)?;
        let version: i64 = tx
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map_err(sql)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if version > SCHEMA_VERSION {
            return Err(CatalogError::TooNew {
                path: p,
                found: version,
            });
        }
        if version < 1 {
            tx.execute_batch(
                "CREATE TABLE destinations (
                     id INTEGER PRIMARY KEY,
                     kind TEXT NOT NULL CHECK (kind IN ('archive', 'stream', 'tape')),
                     name TEXT NOT NULL,
                     UNIQUE (kind, name));
                 CREATE TABLE sessions (
                     dest INTEGER NOT NULL REFERENCES destinations(id) ON DELETE CASCADE,
                     volume TEXT NOT NULL,
                     seq INTEGER NOT NULL,
                     session TEXT NOT NULL,
                     previous TEXT,
                     manifest_sha256 TEXT NOT NULL,
                     volsize INTEGER NOT NULL,
                     time INTEGER NOT NULL,
                     bytes INTEGER NOT NULL,
                     PRIMARY KEY (dest, volume, seq),
                     UNIQUE (dest, volume, session));
                 INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', '1');",
            )
            .map_err(sql)?;
        }
        tx.commit().map_err(sql)?;
        Ok(Catalog { conn, path: p })
    }

    fn sql(&self) -> impl Fn(rusqlite::Error) -> CatalogError + '_ {
        move |source| CatalogError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    /// The destination `kind`/`name`, created if new.
    pub fn destination(&self, kind: &str, name: &str) -> Result<DestId> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO destinations (kind, name) VALUES (?1, ?2)",
                params![kind, name],
            )
            .map_err(self.sql())?;
        self.conn
            .query_row(
                "SELECT id FROM destinations WHERE kind = ?1 AND name = ?2",
                params![kind, name],
                |r| r.get(0),
            )
            .map(DestId)
            .map_err(self.sql())
    }

    /// The sessions of `volume` sent to `dest`, oldest first.
    pub fn chain(&self, dest: DestId, volume: &str) -> Result<Vec<SentSession>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT session, previous, manifest_sha256, volsize, time, bytes FROM sessions
                 WHERE dest = ?1 AND volume = ?2 ORDER BY seq",
            )
            .map_err(self.sql())?;
        let rows = st
            .query_map(params![dest.0, volume], |r| {
                let h: String = r.get(2)?;
                let mut manifest_sha256 = [0u8; 32];
                let _ = hex::decode_to_slice(h, &mut manifest_sha256);
                Ok(SentSession {
                    session: r.get(0)?,
                    previous: r.get(1)?,
                    manifest_sha256,
                    volsize: r.get::<_, i64>(3)? as u64,
                    time: r.get(4)?,
                    bytes: r.get::<_, i64>(5)? as u64,
                })
            })
            .map_err(self.sql())?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(self.sql())
    }

    /// The last session of `volume` sent to `dest`.
    pub fn base(&self, dest: DestId, volume: &str) -> Result<Option<SentSession>> {
        Ok(self.chain(dest, volume)?.pop())
    }

    /// Record that `info` was sent to `dest` (`bytes` long); it must extend the chain.
    pub fn record_session(&mut self, dest: DestId, info: &SessionInfo, bytes: u64) -> Result<()> {
        let path = self.path.clone();
        let sql = |source| CatalogError::Sql {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sql)?;
        let last: Option<(i64, String)> = tx
            .query_row(
                "SELECT seq, session FROM sessions WHERE dest = ?1 AND volume = ?2
                 ORDER BY seq DESC LIMIT 1",
                params![dest.0, info.volume],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql)?;
        let base = last.as_ref().map(|l| l.1.clone());
        if base != info.previous {
            let name: String = tx
                .query_row(
                    "SELECT kind || ' ' || name FROM destinations WHERE id = ?1",
                    params![dest.0],
                    |r| r.get(0),
                )
                .map_err(sql)?;
            return Err(CatalogError::BrokenChain {
                dest: name,
                volume: info.volume.clone(),
                session: info.session.clone(),
                previous: info.previous.clone(),
                base,
            });
        }
        tx.execute(
            "INSERT INTO sessions (dest, volume, seq, session, previous, manifest_sha256, volsize, time, bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                dest.0,
                info.volume,
                last.map(|l| l.0 + 1).unwrap_or(0),
                info.session,
                info.previous,
                hex::encode(info.manifest_sha256),
                info.volsize as i64,
                info.time,
                bytes as i64
            ],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)
    }

    /// Forget `volume`'s chains on every destination (`rename`: the next stream of the
    /// new name is full).
    pub fn forget_volume(&self, volume: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM sessions WHERE volume = ?1", params![volume])
            .map(drop)
            .map_err(self.sql())
    }

    /// Forget `volume`'s chain on `dest` (the next stream there is full).
    pub fn forget(&self, dest: DestId, volume: &str) -> Result<()> {
        self.conn
            .execute(
                "DELETE FROM sessions WHERE dest = ?1 AND volume = ?2",
                params![dest.0, volume],
            )
            .map(drop)
            .map_err(self.sql())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sparsebak_format::chunk::Codec;

    fn info(session: &str, previous: Option<&str>) -> SessionInfo {
        SessionInfo {
            volume: "v".into(),
            session: session.into(),
            previous: previous.map(str::to_string),
            time: 1,
            volsize: 100,
            chunksize: 65536,
            compression: Codec::Zstd,
            changed: 1,
            chunks: 1,
            bytes_read: 1,
            bytes_stored: 1,
            manifest_sha256: [3; 32],
        }
    }

    #[test]
    fn chains_persist_and_must_link() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("catalog.sqlite");
        {
            let mut c = Catalog::open(&p).unwrap();
            let s = c.destination("stream", "nightly").unwrap();
            assert_eq!(c.destination("stream", "nightly").unwrap(), s);
            c.record_session(s, &info("20260101-000000", None), 10)
                .unwrap();
            c.record_session(s, &info("20260102-000000", Some("20260101-000000")), 5)
                .unwrap();
            // Out of order: refused, nothing changes.
            let e = c
                .record_session(s, &info("20260103-000000", Some("20260101-000000")), 5)
                .unwrap_err();
            assert!(matches!(e, CatalogError::BrokenChain { .. }), "{e}");
        }
        let c = Catalog::open(&p).unwrap();
        let s = c.destination("stream", "nightly").unwrap();
        let chain = c.chain(s, "v").unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(c.base(s, "v").unwrap().unwrap().session, "20260102-000000");
        let other = c.destination("stream", "weekly").unwrap();
        assert_eq!(c.base(other, "v").unwrap(), None);
        c.forget(s, "v").unwrap();
        assert_eq!(c.base(s, "v").unwrap(), None);
    }

    #[test]
    fn refuses_newer_schema() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("catalog.sqlite");
        drop(Catalog::open(&p).unwrap());
        let conn = Connection::open(&p).unwrap();
        conn.execute(
            "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
            [],
        )
        .unwrap();
        drop(conn);
        assert!(matches!(
            Catalog::open(&p),
            Err(CatalogError::TooNew { found: 99, .. })
        ));
    }
}
