//! The source side's catalog (`<metadir>/catalog.sqlite`, see [`crate::metadir`]): the
//! destinations a volume is sent to besides the archives (stream chains now, tapes
//! later) and, per destination and volume, the chain of sessions sent there, so each
//! destination stays incremental on its own.
//!
//! It also remembers the identity of the archive this machine sends to at each
//! configured destination (table `archives`, keyed by `destdir` for the destination
//! `default` and by `dest:NAME` for the others: see
//! [`crate::archive::identity::key`]), so a send refuses to write where that archive is
//! missing (its disk not mounted) or where another archive is found.
//!
//! The schema is versioned in `meta.schema_version`; migrations run in one
//! transaction, and a catalog written by a newer version is refused rather than
//! misread. Version 3 adds the tapes: table `tapes` (one row per labelled tape: name,
//! barcode, pool, uuid, block size, full or appendable, last written, slot) and table
//! `tape_files` (one row per tape file: the destination, volume, session and part it
//! holds, its file number, first block and length on the tape, and the SHA-256 of its
//! bytes), so a session on tape is found by block position. Version 4 adds to each
//! tape file the stream it is a part of (its random id, written in the part headers and
//! trailers, and the length and SHA-256 of the whole stream), so the parts of a
//! session are read back and checked from the catalog alone. Version 5 marks the tapes
//! `prune` emptied (`tapes.recycle`): only those are labelled anew by a send; a tape
//! whose files the catalog does not know is never overwritten.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use sparsebak_format::info::SessionInfo;
use sparsebak_format::Hash;
use sparsebak_format::{layout, limits};

/// The schema this build writes.
pub const SCHEMA_VERSION: i64 = 5;

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
    #[error("catalog {path}: the chain of volume {volume} is damaged: {reason}")]
    Damaged {
        path: String,
        volume: String,
        reason: String,
    },
    #[error("catalog {path}: tape {tape}: {reason}")]
    DamagedTape {
        path: String,
        tape: String,
        reason: String,
    },
    #[error("catalog {path}: no tape with uuid {uuid}")]
    UnknownTape { path: String, uuid: String },
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

/// A labelled tape, as the catalog knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapeRecord {
    /// The uuid of its label (`8-4-4-4-12` hex): a new one each time it is labelled.
    pub uuid: String,
    /// The name on its label: the barcode, or a name given for a tape without one.
    pub name: String,
    pub barcode: Option<String>,
    pub pool: String,
    pub block_size: u64,
    /// No more tape files are appended (it reached its end, or was marked so).
    pub full: bool,
    /// When it was labelled, seconds since 1970 (UTC).
    pub labelled: i64,
    /// When a tape file was last recorded on it.
    pub last_written: Option<i64>,
    /// The library slot it was last seen in, if known.
    pub slot: Option<u32>,
}

/// One tape file: a volume session (or one part of it, when it spans tapes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapeFileRecord {
    /// The uuid of the tape it is on.
    pub tape: String,
    /// Its tape file number (the label is file 0).
    pub file_number: u64,
    /// The destination it was sent to.
    pub dest: String,
    pub volume: String,
    pub session: String,
    /// Part number from 0, for a session spanning several tapes.
    pub part: u32,
    /// Logical block position of its first block (`MTIOCPOS`), for LOCATE.
    pub first_block: u64,
    pub blocks: u64,
    /// Bytes of data it holds (its blocks are padded to the block size).
    pub bytes: u64,
    /// SHA-256 of those bytes.
    pub sha256: Hash,
    /// The id of the stream this part belongs to (in its part headers and trailers).
    pub stream_id: String,
    /// Bytes of the whole stream (all its parts) and their SHA-256.
    pub stream_bytes: u64,
    pub stream_sha256: Hash,
}

pub struct Catalog {
    conn: Connection,
    path: String,
}

/// Switch `conn` to WAL mode. Changing the journal mode needs a lock that SQLite does
/// not wait for through the busy timeout: two runs creating the catalog at the same
/// moment would see "database is locked" at once. Retry for up to 30 s instead.
fn set_wal(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// Insert the row of tape file `f` with `verb` (`INSERT`, or `INSERT OR IGNORE` to
/// leave a row already there); the rows changed.
fn insert_file_row(conn: &Connection, verb: &str, f: &TapeFileRecord) -> rusqlite::Result<usize> {
    conn.execute(
        &format!(
            "{verb} INTO tape_files (tape, file_number, dest, volume, session, part,
                 first_block, blocks, bytes, sha256, stream_id, stream_bytes, stream_sha256)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
        ),
        params![
            f.tape,
            f.file_number as i64,
            f.dest,
            f.volume,
            f.session,
            f.part,
            f.first_block as i64,
            f.blocks as i64,
            f.bytes as i64,
            hex::encode(f.sha256),
            f.stream_id,
            f.stream_bytes as i64,
            hex::encode(f.stream_sha256)
        ],
    )
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
        // Before anything else: runs that open the catalog at the same moment (two
        // first sends) wait for each other instead of failing with "database is
        // locked".
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(sql)?;
        set_wal(&conn).map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql)?;
        // Immediate: take the write lock before reading the version, so two runs never
        // both decide to migrate (a deferred transaction could not upgrade its lock).
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql)?;
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
        if version < 2 {
            tx.execute_batch(
                "CREATE TABLE archives (
                     path TEXT PRIMARY KEY,
                     id TEXT NOT NULL);
                 INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', '2');",
            )
            .map_err(sql)?;
        }
        if version < 3 {
            tx.execute_batch(
                "CREATE TABLE tapes (
                     uuid TEXT PRIMARY KEY,
                     name TEXT NOT NULL UNIQUE,
                     barcode TEXT,
                     pool TEXT NOT NULL,
                     block_size INTEGER NOT NULL,
                     full INTEGER NOT NULL DEFAULT 0,
                     labelled INTEGER NOT NULL,
                     last_written INTEGER,
                     slot INTEGER);
                 CREATE TABLE tape_files (
                     tape TEXT NOT NULL REFERENCES tapes(uuid) ON DELETE CASCADE,
                     file_number INTEGER NOT NULL,
                     dest TEXT NOT NULL,
                     volume TEXT NOT NULL,
                     session TEXT NOT NULL,
                     part INTEGER NOT NULL,
                     first_block INTEGER NOT NULL,
                     blocks INTEGER NOT NULL,
                     bytes INTEGER NOT NULL,
                     sha256 TEXT NOT NULL,
                     PRIMARY KEY (tape, file_number),
                     UNIQUE (dest, volume, session, part));
                 INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', '3');",
            )
            .map_err(sql)?;
        }
        if version < 4 {
            // Rows of version 3 (none was written by a release) get an empty stream
            // id: they are refused as damaged when read back.
            tx.execute_batch(
                "ALTER TABLE tape_files ADD COLUMN stream_id TEXT NOT NULL DEFAULT '';
                 ALTER TABLE tape_files ADD COLUMN stream_bytes INTEGER NOT NULL DEFAULT 0;
                 ALTER TABLE tape_files ADD COLUMN stream_sha256 TEXT NOT NULL DEFAULT '';
                 INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', '4');",
            )
            .map_err(sql)?;
        }
        if version < 5 {
            tx.execute_batch(
                "ALTER TABLE tapes ADD COLUMN recycle INTEGER NOT NULL DEFAULT 0;
                 INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', '5');",
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

    /// The sessions of `volume` sent to `dest`, oldest first. Every row is checked
    /// (the catalog is a file on disk like any other): sequence numbers from 0 without
    /// gaps, session IDs, each naming the one before it, a manifest hash, sizes that
    /// can be.
    pub fn chain(&self, dest: DestId, volume: &str) -> Result<Vec<SentSession>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT seq, session, previous, manifest_sha256, volsize, time, bytes
                 FROM sessions WHERE dest = ?1 AND volume = ?2 ORDER BY seq",
            )
            .map_err(self.sql())?;
        type Row = (i64, String, Option<String>, String, i64, i64, i64);
        let rows = st
            .query_map(params![dest.0, volume], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })
            .map_err(self.sql())?;
        let mut chain: Vec<SentSession> = Vec::new();
        for row in rows {
            let (seq, session, previous, hash, volsize, time, bytes): Row =
                row.map_err(self.sql())?;
            let damaged = |reason: String| CatalogError::Damaged {
                path: self.path.clone(),
                volume: volume.to_string(),
                reason,
            };
            if seq != chain.len() as i64 {
                return Err(damaged(format!(
                    "row seq={seq} where seq={} was due",
                    chain.len()
                )));
            }
            if !layout::is_session_id(&session) {
                return Err(damaged(format!(
                    "seq={seq}: session {session:?} is not a session ID"
                )));
            }
            let expect = chain.last().map(|s| s.session.as_str());
            if previous.as_deref() != expect {
                return Err(damaged(format!(
                    "seq={seq}: session {session} builds on {previous:?}, the row before is {expect:?}"
                )));
            }
            let mut manifest_sha256 = [0u8; 32];
            if hash.len() != 64
                || hash.bytes().any(|b| b.is_ascii_uppercase())
                || hex::decode_to_slice(&hash, &mut manifest_sha256).is_err()
            {
                return Err(damaged(format!(
                    "seq={seq}: manifest_sha256 {hash:?} is not a SHA-256"
                )));
            }
            let volsize = u64::try_from(volsize)
                .ok()
                .filter(|&v| v <= limits::MAX_VOLSIZE)
                .ok_or_else(|| damaged(format!("seq={seq}: volsize {volsize} is impossible")))?;
            let bytes = u64::try_from(bytes)
                .map_err(|_| damaged(format!("seq={seq}: bytes {bytes} is negative")))?;
            chain.push(SentSession {
                session,
                previous,
                manifest_sha256,
                volsize,
                time,
                bytes,
            });
        }
        Ok(chain)
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
        // Immediate: a read transaction that later writes cannot wait for another
        // writer in WAL mode (SQLITE_BUSY at once, whatever the busy timeout), so
        // take the write lock first.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql)?;
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

    /// The identity of the archive this machine sends to at `path`, if it knows one.
    pub fn archive_id(&self, path: &str) -> Result<Option<String>> {
        self.conn
            .query_row(
                "SELECT id FROM archives WHERE path = ?1",
                params![path],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql())
    }

    /// Record that the archive at `path` is `id` (replacing what was known).
    pub fn set_archive_id(&self, path: &str, id: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO archives (path, id) VALUES (?1, ?2)",
                params![path, id],
            )
            .map(drop)
            .map_err(self.sql())
    }

    /// Record a tape just labelled: any tape of the same name or uuid is replaced,
    /// with the files recorded on it (labelling cut them off).
    pub fn add_tape(&mut self, t: &TapeRecord) -> Result<()> {
        let sql = |source| CatalogError::Sql {
            path: self.path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sql)?;
        tx.execute(
            "DELETE FROM tapes WHERE name = ?1 OR uuid = ?2",
            params![t.name, t.uuid],
        )
        .map_err(sql)?;
        tx.execute(
            "INSERT INTO tapes (uuid, name, barcode, pool, block_size, full, labelled,
                 last_written, slot) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                t.uuid,
                t.name,
                t.barcode,
                t.pool,
                t.block_size as i64,
                t.full,
                t.labelled,
                t.last_written,
                t.slot
            ],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)
    }

    fn tape_row(&self, r: &rusqlite::Row) -> Result<TapeRecord> {
        let get = |e| CatalogError::Sql {
            path: self.path.clone(),
            source: e,
        };
        let name: String = r.get(1).map_err(get)?;
        let damaged = |reason: String| CatalogError::DamagedTape {
            path: self.path.clone(),
            tape: name.clone(),
            reason,
        };
        let block_size: i64 = r.get(4).map_err(get)?;
        if !(512..=1 << 20).contains(&block_size) {
            return Err(damaged(format!("block size {block_size} is impossible")));
        }
        let slot: Option<i64> = r.get(8).map_err(get)?;
        let slot = match slot {
            None => None,
            Some(n) => Some(
                u32::try_from(n)
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| damaged(format!("slot {n} is impossible")))?,
            ),
        };
        Ok(TapeRecord {
            uuid: r.get(0).map_err(get)?,
            name: name.clone(),
            barcode: r.get(2).map_err(get)?,
            pool: r.get(3).map_err(get)?,
            block_size: block_size as u64,
            full: r.get(5).map_err(get)?,
            labelled: r.get(6).map_err(get)?,
            last_written: r.get(7).map_err(get)?,
            slot,
        })
    }

    fn query_tapes(&self, filter: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<TapeRecord>> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT uuid, name, barcode, pool, block_size, full, labelled, last_written,
                     slot FROM tapes {filter} ORDER BY name"
            ))
            .map_err(self.sql())?;
        let mut rows = stmt.query(args).map_err(self.sql())?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(self.sql())? {
            out.push(self.tape_row(r)?);
        }
        Ok(out)
    }

    /// Every tape the catalog knows, by name.
    pub fn tapes(&self) -> Result<Vec<TapeRecord>> {
        self.query_tapes("", &[])
    }

    /// The tape labelled `name`.
    pub fn tape_by_name(&self, name: &str) -> Result<Option<TapeRecord>> {
        Ok(self
            .query_tapes("WHERE name = ?1", &[&name])?
            .into_iter()
            .next())
    }

    /// The tape whose label has `uuid`.
    pub fn tape(&self, uuid: &str) -> Result<Option<TapeRecord>> {
        Ok(self
            .query_tapes("WHERE uuid = ?1", &[&uuid])?
            .into_iter()
            .next())
    }

    /// The tapes of `pool` that take more tape files, by name.
    pub fn appendable_tapes(&self, pool: &str) -> Result<Vec<TapeRecord>> {
        self.query_tapes("WHERE pool = ?1 AND full = 0", &[&pool])
    }

    fn update_tape(&self, uuid: &str, set: &str, value: &dyn rusqlite::ToSql) -> Result<()> {
        let n = self
            .conn
            .execute(
                &format!("UPDATE tapes SET {set} = ?1 WHERE uuid = ?2"),
                params![value, uuid],
            )
            .map_err(self.sql())?;
        if n == 0 {
            return Err(CatalogError::UnknownTape {
                path: self.path.clone(),
                uuid: uuid.to_string(),
            });
        }
        Ok(())
    }

    /// Mark a tape full (no more appends) or appendable again.
    pub fn set_tape_full(&self, uuid: &str, full: bool) -> Result<()> {
        self.update_tape(uuid, "full", &full)
    }

    /// Mark a tape as emptied by `prune` (every tape file on it forgotten): the next
    /// send that takes it labels it anew. Labelling it (a new row) clears the mark.
    pub fn set_tape_recycle(&self, uuid: &str, on: bool) -> Result<()> {
        self.update_tape(uuid, "recycle", &on)
    }

    /// Whether `prune` emptied the tape `uuid` (see [`Catalog::set_tape_recycle`]).
    pub fn tape_recycle(&self, uuid: &str) -> Result<bool> {
        self.conn
            .query_row(
                "SELECT recycle FROM tapes WHERE uuid = ?1",
                params![uuid],
                |r| r.get::<_, bool>(0),
            )
            .optional()
            .map(|v| v.unwrap_or(false))
            .map_err(self.sql())
    }

    /// Record the slot a tape was seen in (`None`: unknown).
    pub fn set_tape_slot(&self, uuid: &str, slot: Option<u32>) -> Result<()> {
        self.update_tape(uuid, "slot", &slot)
    }

    /// Forget a tape and every tape file on it.
    pub fn forget_tape(&self, uuid: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM tapes WHERE uuid = ?1", params![uuid])
            .map(drop)
            .map_err(self.sql())
    }

    /// Record a tape file written on a known tape (which is then last written at
    /// `now`, seconds since 1970).
    pub fn add_tape_file(&mut self, f: &TapeFileRecord, now: i64) -> Result<()> {
        let path = self.path.clone();
        let sql = |source| CatalogError::Sql {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sql)?;
        let n = tx
            .execute(
                "UPDATE tapes SET last_written = ?1 WHERE uuid = ?2",
                params![now, f.tape],
            )
            .map_err(sql)?;
        if n == 0 {
            return Err(CatalogError::UnknownTape {
                path: self.path.clone(),
                uuid: f.tape.clone(),
            });
        }
        insert_file_row(&tx, "INSERT", f).map_err(sql)?;
        tx.commit().map_err(sql)
    }

    fn query_files(
        &self,
        filter: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<TapeFileRecord>> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT tape, file_number, dest, volume, session, part, first_block, blocks,
                     bytes, sha256, stream_id, stream_bytes, stream_sha256
                 FROM tape_files {filter}"
            ))
            .map_err(self.sql())?;
        let mut rows = stmt.query(args).map_err(self.sql())?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(self.sql())? {
            let get = self.sql();
            let tape: String = r.get(0).map_err(&get)?;
            let file_number: i64 = r.get(1).map_err(&get)?;
            let damaged = |reason: String| CatalogError::DamagedTape {
                path: self.path.clone(),
                tape: tape.clone(),
                reason: format!("file {file_number}: {reason}"),
            };
            let count = |i: usize, what: &str| -> Result<u64> {
                let v: i64 = r.get(i).map_err(self.sql())?;
                u64::try_from(v).map_err(|_| damaged(format!("{what} {v} is negative")))
            };
            let part: i64 = r.get(5).map_err(&get)?;
            let part =
                u32::try_from(part).map_err(|_| damaged(format!("part {part} is impossible")))?;
            let session: String = r.get(4).map_err(&get)?;
            if !layout::is_session_id(&session) {
                return Err(damaged(format!("session {session:?} is not a session ID")));
            }
            let hash = |i: usize, what: &str| -> Result<Hash> {
                let sum: String = r.get(i).map_err(self.sql())?;
                hex::decode(&sum)
                    .ok()
                    .and_then(|v| Hash::try_from(v).ok())
                    .ok_or_else(|| damaged(format!("{what} {sum:?} is not a SHA-256")))
            };
            let stream_id: String = r.get(10).map_err(&get)?;
            if stream_id.is_empty() || stream_id.len() > 255 {
                return Err(damaged(format!("stream id {stream_id:?} is impossible")));
            }
            let sha256 = hash(9, "sha256")?;
            let stream_sha256 = hash(12, "stream_sha256")?;
            out.push(TapeFileRecord {
                file_number: count(1, "file number")?,
                dest: r.get(2).map_err(&get)?,
                volume: r.get(3).map_err(&get)?,
                session,
                part,
                first_block: count(6, "first block")?,
                blocks: count(7, "blocks")?,
                bytes: count(8, "bytes")?,
                sha256,
                stream_id,
                stream_bytes: count(11, "stream bytes")?,
                stream_sha256,
                tape,
            });
        }
        Ok(out)
    }

    /// The tape files on the tape `uuid`, by file number.
    pub fn tape_files(&self, uuid: &str) -> Result<Vec<TapeFileRecord>> {
        self.query_files("WHERE tape = ?1 ORDER BY file_number", &[&uuid])
    }

    /// The parts of `session` of `volume` on the tape destination `dest`, in order.
    pub fn session_tape_files(
        &self,
        dest: &str,
        volume: &str,
        session: &str,
    ) -> Result<Vec<TapeFileRecord>> {
        self.query_files(
            "WHERE dest = ?1 AND volume = ?2 AND session = ?3 ORDER BY part",
            &[&dest, &volume, &session],
        )
    }

    /// Forget the tape files of a session (pruned); the tapes stay known.
    pub fn forget_session_tape_files(&self, dest: &str, volume: &str, session: &str) -> Result<()> {
        self.conn
            .execute(
                "DELETE FROM tape_files WHERE dest = ?1 AND volume = ?2 AND session = ?3",
                params![dest, volume, session],
            )
            .map(drop)
            .map_err(self.sql())
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

    /// Forget `volume`'s chain on the tape destination `dest` and the tape files of its
    /// sessions (the next stream there is full); returns those tape files.
    pub fn forget_tape_chain(&mut self, dest: &str, volume: &str) -> Result<Vec<TapeFileRecord>> {
        let id = self.destination("tape", dest)?;
        let files: Vec<TapeFileRecord> = self.query_files(
            "WHERE dest = ?1 AND volume = ?2 AND session IN
                     (SELECT session FROM sessions WHERE dest = ?3 AND volume = ?2)
                 ORDER BY tape, file_number",
            &[&dest, &volume, &id.0],
        )?;
        let sql = |source| CatalogError::Sql {
            path: self.path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sql)?;
        tx.execute(
            "DELETE FROM tape_files WHERE dest = ?1 AND volume = ?2 AND session IN
                 (SELECT session FROM sessions WHERE dest = ?3 AND volume = ?2)",
            params![dest, volume, id.0],
        )
        .map_err(sql)?;
        tx.execute(
            "DELETE FROM sessions WHERE dest = ?1 AND volume = ?2",
            params![id.0, volume],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(files)
    }

    /// The volumes with a chain on `dest`, by name.
    pub fn volumes(&self, dest: DestId) -> Result<Vec<String>> {
        let mut st = self
            .conn
            .prepare("SELECT DISTINCT volume FROM sessions WHERE dest = ?1 ORDER BY volume")
            .map_err(self.sql())?;
        let rows = st
            .query_map(params![dest.0], |r| r.get(0))
            .map_err(self.sql())?;
        rows.collect::<rusqlite::Result<Vec<String>>>()
            .map_err(self.sql())
    }

    /// Append a session known from elsewhere (a catalog copy) to `volume`'s chain on
    /// `dest`: as [`Catalog::record_session`], from what a chain row holds.
    pub fn record_sent(&mut self, dest: DestId, volume: &str, s: &SentSession) -> Result<()> {
        let info = SessionInfo {
            volume: volume.to_string(),
            session: s.session.clone(),
            previous: s.previous.clone(),
            time: s.time,
            volsize: s.volsize,
            manifest_sha256: s.manifest_sha256,
            // Not kept in a chain row, and not written by record_session.
            chunksize: 0,
            compression: sparsebak_format::chunk::Codec::None,
            changed: 0,
            chunks: 0,
            bytes_read: 0,
            bytes_stored: 0,
            volume_id: None,
        };
        self.record_session(dest, &info, s.bytes)
    }

    /// Record a tape file found on a tape (a scan), leaving the tape's `last_written`
    /// as it is. `false` when that tape file, or that part of the session, is already
    /// recorded (nothing is changed then).
    pub fn insert_tape_file(&self, f: &TapeFileRecord) -> Result<bool> {
        let n = insert_file_row(&self.conn, "INSERT OR IGNORE", f).map_err(self.sql())?;
        Ok(n == 1)
    }

    /// Set when a tape file was last recorded on the tape `uuid`.
    pub fn set_tape_last_written(&self, uuid: &str, when: Option<i64>) -> Result<()> {
        self.update_tape(uuid, "last_written", &when)
    }

    /// The tape files of the tape destination `dest` whose stream is `stream_id`.
    pub fn stream_tape_files(&self, dest: &str, stream_id: &str) -> Result<Vec<TapeFileRecord>> {
        self.query_files(
            "WHERE dest = ?1 AND stream_id = ?2 ORDER BY part",
            &[&dest, &stream_id],
        )
    }

    /// Every tape file of the tape destination `dest`, by tape and file number.
    pub fn dest_tape_files(&self, dest: &str) -> Result<Vec<TapeFileRecord>> {
        self.query_files("WHERE dest = ?1 ORDER BY tape, file_number", &[&dest])
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
            volume_id: None,
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
    fn archive_ids_persist_and_replace() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("catalog.sqlite");
        {
            let c = Catalog::open(&p).unwrap();
            assert_eq!(c.archive_id("/mnt/b/sb").unwrap(), None);
            c.set_archive_id("/mnt/b/sb", "a").unwrap();
        }
        let c = Catalog::open(&p).unwrap();
        assert_eq!(c.archive_id("/mnt/b/sb").unwrap().as_deref(), Some("a"));
        assert_eq!(c.archive_id("/mnt/c/sb").unwrap(), None);
        c.set_archive_id("/mnt/b/sb", "b").unwrap();
        assert_eq!(c.archive_id("/mnt/b/sb").unwrap().as_deref(), Some("b"));
    }

    #[test]
    fn forgetting_a_tape_chain_takes_its_sessions_tape_files_only() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(&d.path().join("catalog.sqlite")).unwrap();
        let lto = c.destination("tape", "lto").unwrap();
        c.record_session(lto, &info("20260101-000000", None), 10)
            .unwrap();
        c.add_tape(&tape("VT0001L8", "u1")).unwrap();
        c.add_tape_file(&tape_file("u1", 1, "20260101-000000", 0), 42)
            .unwrap();
        // A tape file of a session the chain never recorded (a run killed first).
        c.add_tape_file(&tape_file("u1", 2, "20260102-000000", 0), 43)
            .unwrap();
        let gone = c.forget_tape_chain("lto", "v").unwrap();
        assert_eq!(gone.iter().map(|f| f.file_number).collect::<Vec<_>>(), [1]);
        assert!(c.chain(lto, "v").unwrap().is_empty());
        let left = c.tape_files("u1").unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].session, "20260102-000000");
    }

    #[test]
    fn migrates_a_version_3_catalog_refusing_its_tape_files_without_a_stream() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("catalog.sqlite");
        drop(Catalog::open(&p).unwrap());
        let conn = Connection::open(&p).unwrap();
        conn.execute_batch(
            "DROP TABLE tape_files;
             ALTER TABLE tapes DROP COLUMN recycle;
             CREATE TABLE tape_files (
                 tape TEXT NOT NULL REFERENCES tapes(uuid) ON DELETE CASCADE,
                 file_number INTEGER NOT NULL, dest TEXT NOT NULL, volume TEXT NOT NULL,
                 session TEXT NOT NULL, part INTEGER NOT NULL, first_block INTEGER NOT NULL,
                 blocks INTEGER NOT NULL, bytes INTEGER NOT NULL, sha256 TEXT NOT NULL,
                 PRIMARY KEY (tape, file_number), UNIQUE (dest, volume, session, part));
             UPDATE meta SET value = '3' WHERE key = 'schema_version';
             INSERT INTO tapes (uuid, name, pool, block_size, labelled)
                 VALUES ('u1', 'T1', 'p', 65536, 1);
             INSERT INTO tape_files VALUES ('u1', 1, 'lto', 'v', '20260101-000000', 0, 2, 3,
                 100, '0303030303030303030303030303030303030303030303030303030303030303');",
        )
        .unwrap();
        drop(conn);
        let c = Catalog::open(&p).unwrap();
        assert_eq!(c.tapes().unwrap().len(), 1);
        let e = c.tape_files("u1").unwrap_err().to_string();
        assert!(
            e.contains("tape u1: file 1: stream id \"\" is impossible"),
            "{e}"
        );
    }

    #[test]
    fn migrates_a_version_1_catalog() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("catalog.sqlite");
        drop(Catalog::open(&p).unwrap());
        // Make it look like a catalog of the previous version, with a chain in it.
        let conn = Connection::open(&p).unwrap();
        conn.execute_batch(
            "DROP TABLE archives;
             DROP TABLE tape_files;
             DROP TABLE tapes;
             UPDATE meta SET value = '1' WHERE key = 'schema_version';
             INSERT INTO destinations (kind, name) VALUES ('stream', 'nightly');",
        )
        .unwrap();
        drop(conn);
        let c = Catalog::open(&p).unwrap();
        assert_eq!(c.destination("stream", "nightly").unwrap(), DestId(1));
        c.set_archive_id("/x", "a").unwrap();
        assert!(c.tapes().unwrap().is_empty());
        let v: String = c
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(v, "5");
    }

    /// A catalog exactly as a version-2 build wrote it, with a chain and an archive
    /// identity in it.
    fn write_v2(p: &Path) {
        let conn = Connection::open(p).unwrap();
        conn.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE destinations (
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
             INSERT INTO meta (key, value) VALUES ('schema_version', '1');
             CREATE TABLE archives (path TEXT PRIMARY KEY, id TEXT NOT NULL);
             INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', '2');
             INSERT INTO destinations (kind, name) VALUES ('stream', 'nightly');
             INSERT INTO sessions VALUES (1, 'v', 0, '20260101-000000', NULL,
                 '0303030303030303030303030303030303030303030303030303030303030303',
                 100, 1, 10);
             INSERT INTO archives VALUES ('/mnt/b/sb', 'abc');",
        )
        .unwrap();
    }

    fn tape(name: &str, uuid: &str) -> TapeRecord {
        TapeRecord {
            uuid: uuid.into(),
            name: name.into(),
            barcode: Some(name.into()),
            pool: "weekly".into(),
            block_size: 262144,
            full: false,
            labelled: 1_700_000_000,
            last_written: None,
            slot: Some(3),
        }
    }

    fn tape_file(tape: &str, n: u64, session: &str, part: u32) -> TapeFileRecord {
        TapeFileRecord {
            tape: tape.into(),
            file_number: n,
            dest: "lto".into(),
            volume: "v".into(),
            session: session.into(),
            part,
            first_block: 2 + 100 * (n - 1),
            blocks: 99,
            bytes: 99 * 262144 - 17,
            stream_id: format!("s-{session}"),
            stream_bytes: 1,
            stream_sha256: [9; 32],
            sha256: [n as u8; 32],
        }
    }

    #[test]
    fn migrates_a_version_2_catalog_keeping_everything() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("catalog.sqlite");
        write_v2(&p);
        let mut c = Catalog::open(&p).unwrap();
        let version: String = c
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(version, "5");
        // What version 2 held is still there.
        let s = c.destination("stream", "nightly").unwrap();
        assert_eq!(s, DestId(1));
        let chain = c.chain(s, "v").unwrap();
        assert_eq!(chain.len(), 1);
        assert_eq!(chain[0].session, "20260101-000000");
        assert_eq!(chain[0].manifest_sha256, [3; 32]);
        assert_eq!(c.archive_id("/mnt/b/sb").unwrap().as_deref(), Some("abc"));
        // And the tape tables work.
        assert!(c.tapes().unwrap().is_empty());
        c.add_tape(&tape("VT0001L8", "u1")).unwrap();
        c.add_tape_file(&tape_file("u1", 1, "20260101-000000", 0), 42)
            .unwrap();
        drop(c);
        // Opening again migrates nothing and keeps the rows.
        let c = Catalog::open(&p).unwrap();
        assert_eq!(c.tapes().unwrap().len(), 1);
        assert_eq!(c.tape_files("u1").unwrap().len(), 1);
    }

    #[test]
    fn tapes_and_tape_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("catalog.sqlite");
        let mut c = Catalog::open(&p).unwrap();
        c.add_tape(&tape("VT0002L8", "u2")).unwrap();
        c.add_tape(&tape("VT0001L8", "u1")).unwrap();
        let names: Vec<String> = c.tapes().unwrap().into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["VT0001L8", "VT0002L8"]);
        assert_eq!(c.tape("u1").unwrap(), Some(tape("VT0001L8", "u1")));
        assert_eq!(
            c.tape_by_name("VT0002L8").unwrap().map(|t| t.uuid),
            Some("u2".to_string())
        );
        // A session in two parts: the end of tape u1, then the start of u2.
        c.add_tape_file(&tape_file("u1", 1, "20260101-000000", 0), 100)
            .unwrap();
        c.add_tape_file(&tape_file("u1", 2, "20260102-000000", 0), 200)
            .unwrap();
        c.add_tape_file(&tape_file("u2", 1, "20260102-000000", 1), 300)
            .unwrap();
        assert_eq!(c.tape("u1").unwrap().unwrap().last_written, Some(200));
        assert_eq!(c.tape_files("u1").unwrap().len(), 2);
        assert_eq!(
            c.tape_files("u1").unwrap()[1],
            tape_file("u1", 2, "20260102-000000", 0)
        );
        let parts = c.session_tape_files("lto", "v", "20260102-000000").unwrap();
        assert_eq!(
            parts
                .iter()
                .map(|f| (f.tape.as_str(), f.part))
                .collect::<Vec<_>>(),
            [("u1", 0), ("u2", 1)]
        );
        // The same file number twice on a tape is refused.
        assert!(c
            .add_tape_file(&tape_file("u1", 2, "20260103-000000", 0), 1)
            .is_err());
        // A file on an unknown tape is refused, naming it.
        let e = c
            .add_tape_file(&tape_file("nope", 1, "20260103-000000", 0), 1)
            .unwrap_err();
        assert!(
            matches!(&e, CatalogError::UnknownTape { uuid, .. } if uuid == "nope"),
            "{e}"
        );
        // Full, slots, the pool's appendable tapes.
        c.set_tape_full("u1", true).unwrap();
        c.set_tape_slot("u2", None).unwrap();
        assert!(c.tape("u1").unwrap().unwrap().full);
        assert_eq!(c.tape("u2").unwrap().unwrap().slot, None);
        let app: Vec<String> = c
            .appendable_tapes("weekly")
            .unwrap()
            .into_iter()
            .map(|t| t.uuid)
            .collect();
        assert_eq!(app, ["u2"]);
        assert!(c.appendable_tapes("daily").unwrap().is_empty());
        assert!(matches!(
            c.set_tape_full("gone", true),
            Err(CatalogError::UnknownTape { .. })
        ));
        // Pruning a session forgets its files, not the tapes.
        c.forget_session_tape_files("lto", "v", "20260102-000000")
            .unwrap();
        assert_eq!(c.tape_files("u1").unwrap().len(), 1);
        assert!(c.tape_files("u2").unwrap().is_empty());
        // Labelling a tape again (same name, new uuid) forgets the old label's files.
        c.add_tape(&tape("VT0001L8", "u1b")).unwrap();
        assert_eq!(c.tape("u1").unwrap(), None);
        assert!(c.tape_files("u1").unwrap().is_empty());
        assert_eq!(c.tapes().unwrap().len(), 2);
        c.forget_tape("u2").unwrap();
        assert_eq!(c.tapes().unwrap().len(), 1);
    }

    #[test]
    fn damaged_tape_rows_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("catalog.sqlite");
        let mut c = Catalog::open(&p).unwrap();
        c.add_tape(&tape("VT0001L8", "u1")).unwrap();
        c.add_tape_file(&tape_file("u1", 1, "20260101-000000", 0), 1)
            .unwrap();
        let set = |c: &Catalog, sql: &str| {
            c.conn.execute(sql, []).unwrap();
        };
        let tape_err = |c: &Catalog| c.tapes().unwrap_err().to_string();
        let file_err = |c: &Catalog| c.tape_files("u1").unwrap_err().to_string();
        let at = p.display().to_string();
        set(&c, "UPDATE tapes SET block_size = 0");
        assert_eq!(
            tape_err(&c),
            format!("catalog {at}: tape VT0001L8: block size 0 is impossible")
        );
        set(&c, "UPDATE tapes SET block_size = 262144, slot = -2");
        assert_eq!(
            tape_err(&c),
            format!("catalog {at}: tape VT0001L8: slot -2 is impossible")
        );
        set(&c, "UPDATE tapes SET slot = NULL");
        assert_eq!(c.tapes().unwrap().len(), 1);
        set(&c, "UPDATE tape_files SET blocks = -1");
        assert_eq!(
            file_err(&c),
            format!("catalog {at}: tape u1: file 1: blocks -1 is negative")
        );
        set(&c, "UPDATE tape_files SET blocks = 1, sha256 = 'x'");
        assert_eq!(
            file_err(&c),
            format!("catalog {at}: tape u1: file 1: sha256 \"x\" is not a SHA-256")
        );
        set(
            &c,
            "UPDATE tape_files SET sha256 = printf('%064d', 0), session = '../x'",
        );
        assert_eq!(
            file_err(&c),
            format!("catalog {at}: tape u1: file 1: session \"../x\" is not a session ID")
        );
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

    #[test]
    fn damaged_rows_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("catalog.sqlite");
        let mut c = Catalog::open(&p).unwrap();
        let s = c.destination("stream", "nightly").unwrap();
        c.record_session(s, &info("20260101-000000", None), 10)
            .unwrap();
        c.record_session(s, &info("20260102-000000", Some("20260101-000000")), 5)
            .unwrap();
        let reason = |c: &Catalog| match c.chain(s, "v") {
            Err(CatalogError::Damaged {
                path,
                volume,
                reason,
            }) => {
                assert_eq!(path, p.display().to_string());
                assert_eq!(volume, "v");
                reason
            }
            other => panic!("{other:?}"),
        };
        let set = |c: &Catalog, sql: &str| {
            c.conn.execute(sql, []).unwrap();
        };
        set(&c, "UPDATE sessions SET volsize = -1 WHERE seq = 1");
        assert_eq!(reason(&c), "seq=1: volsize -1 is impossible");
        set(
            &c,
            "UPDATE sessions SET volsize = 9223372036854775807 WHERE seq = 1",
        );
        assert_eq!(
            reason(&c),
            "seq=1: volsize 9223372036854775807 is impossible"
        );
        set(
            &c,
            "UPDATE sessions SET volsize = 100, bytes = -5 WHERE seq = 1",
        );
        assert_eq!(reason(&c), "seq=1: bytes -5 is negative");
        set(
            &c,
            "UPDATE sessions SET bytes = 5, manifest_sha256 = 'zz' WHERE seq = 1",
        );
        assert_eq!(reason(&c), "seq=1: manifest_sha256 \"zz\" is not a SHA-256");
        set(
            &c,
            "UPDATE sessions SET manifest_sha256 = (SELECT manifest_sha256 FROM sessions WHERE seq = 0) WHERE seq = 1",
        );
        assert_eq!(c.chain(s, "v").unwrap().len(), 2);
        set(&c, "UPDATE sessions SET previous = NULL WHERE seq = 1");
        assert_eq!(
            reason(&c),
            "seq=1: session 20260102-000000 builds on None, the row before is Some(\"20260101-000000\")"
        );
        set(
            &c,
            "UPDATE sessions SET previous = '20260101-000000', session = '../x' WHERE seq = 1",
        );
        assert_eq!(reason(&c), "seq=1: session \"../x\" is not a session ID");
        set(
            &c,
            "UPDATE sessions SET session = '20260102-000000', seq = 5 WHERE seq = 1",
        );
        assert_eq!(reason(&c), "row seq=5 where seq=1 was due");
        // The row's type itself can be wrong: an SQL error naming the catalog.
        set(
            &c,
            "UPDATE sessions SET seq = 1, volsize = 'big' WHERE seq = 5",
        );
        let e = c.chain(s, "v").unwrap_err();
        assert!(
            matches!(&e, CatalogError::Sql { path, .. } if *path == p.display().to_string()),
            "{e}"
        );
    }
}
