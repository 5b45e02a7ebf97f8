//! The plain data of the destination seam on the wire: each type's fields in order,
//! with the primitives of [`super::proto`]. Infos travel as their text (the format of
//! the `info` file), bounded and parsed like a file read from an archive.

use std::path::Path;

use sparsebak_format::chunk::Codec;
use sparsebak_format::info::SessionInfo;
use sparsebak_format::limits::MAX_INFO_BYTES;

use super::proto::{Dec, Enc, WireError};
use crate::destination::{FoldPlan, Mode, NewSession, SessionFile, SessionKind};

pub fn put_info(e: &mut Enc, i: &SessionInfo) {
    e.str(&i.to_text());
}

pub fn get_info(d: &mut Dec, label: &Path) -> Result<SessionInfo, WireError> {
    let text = d.str()?;
    if text.len() as u64 > MAX_INFO_BYTES {
        return Err(WireError::Malformed(format!(
            "an info of {} bytes (at most {MAX_INFO_BYTES})",
            text.len()
        )));
    }
    SessionInfo::parse(&text, label).map_err(|e| WireError::Malformed(e.to_string()))
}

pub fn put_opt_info(e: &mut Enc, i: Option<&SessionInfo>) {
    match i {
        None => {
            e.u8(0);
        }
        Some(i) => {
            e.u8(1);
            put_info(e, i);
        }
    }
}

pub fn get_opt_info(d: &mut Dec, label: &Path) -> Result<Option<SessionInfo>, WireError> {
    Ok(if d.bool()? {
        Some(get_info(d, label)?)
    } else {
        None
    })
}

pub fn put_codec(e: &mut Enc, c: Codec) {
    e.u8(match c {
        Codec::None => 0,
        Codec::Zstd => 1,
    });
}

pub fn get_codec(d: &mut Dec) -> Result<Codec, WireError> {
    match d.u8()? {
        0 => Ok(Codec::None),
        1 => Ok(Codec::Zstd),
        b => Err(WireError::Malformed(format!("compression code {b}"))),
    }
}

pub fn put_new_session(e: &mut Enc, n: &NewSession) {
    e.str(&n.volume)
        .str(&n.session)
        .opt_str(n.previous.as_deref())
        .u64(n.time as u64)
        .u64(n.volsize)
        .u64(n.chunksize);
    put_codec(e, n.compression);
    e.u64(n.chunks)
        .u64(n.bytes_read)
        .opt_str(n.volume_id.as_deref());
}

pub fn get_new_session(d: &mut Dec) -> Result<NewSession, WireError> {
    Ok(NewSession {
        volume: d.str()?,
        session: d.str()?,
        previous: d.opt_str()?,
        time: d.u64()? as i64,
        volsize: d.u64()?,
        chunksize: d.u64()?,
        compression: get_codec(d)?,
        chunks: d.u64()?,
        bytes_read: d.u64()?,
        volume_id: d.opt_str()?,
    })
}

pub fn put_kind(e: &mut Enc, k: SessionKind) {
    e.u8(match k {
        SessionKind::Folder => 0,
        SessionKind::Tar => 1,
    });
}

pub fn get_kind(d: &mut Dec) -> Result<SessionKind, WireError> {
    match d.u8()? {
        0 => Ok(SessionKind::Folder),
        1 => Ok(SessionKind::Tar),
        b => Err(WireError::Malformed(format!("session kind {b}"))),
    }
}

pub fn put_mode(e: &mut Enc, m: Mode) {
    e.bool(m == Mode::Exclusive);
}

pub fn get_mode(d: &mut Dec) -> Result<Mode, WireError> {
    Ok(if d.bool()? {
        Mode::Exclusive
    } else {
        Mode::Shared
    })
}

pub fn put_plan(e: &mut Enc, p: &FoldPlan) {
    e.str(&p.removed)
        .str(&p.into)
        .u64(p.moved)
        .u64(p.deleted)
        .u64(p.freed_bytes)
        .strs(&p.missing)
        .u64(p.missing_count);
}

pub fn get_plan(d: &mut Dec) -> Result<FoldPlan, WireError> {
    Ok(FoldPlan {
        removed: d.str()?,
        into: d.str()?,
        moved: d.u64()?,
        deleted: d.u64()?,
        freed_bytes: d.u64()?,
        missing: d.strs()?,
        missing_count: d.u64()?,
    })
}

pub fn put_file(e: &mut Enc, f: SessionFile) {
    match f {
        SessionFile::Info => e.u8(0),
        SessionFile::Manifest => e.u8(1),
        SessionFile::Chunk(a) => e.u8(2).u64(a),
    };
}

pub fn get_file(d: &mut Dec) -> Result<SessionFile, WireError> {
    match d.u8()? {
        0 => Ok(SessionFile::Info),
        1 => Ok(SessionFile::Manifest),
        2 => Ok(SessionFile::Chunk(d.u64()?)),
        b => Err(WireError::Malformed(format!("session file code {b}"))),
    }
}

pub fn put_opt_pair(e: &mut Enc, p: Option<&(String, String)>) {
    match p {
        None => {
            e.u8(0);
        }
        Some((a, b)) => {
            e.u8(1).str(a).str(b);
        }
    }
}

pub fn get_opt_pair(d: &mut Dec) -> Result<Option<(String, String)>, WireError> {
    Ok(if d.bool()? {
        Some((d.str()?, d.str()?))
    } else {
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_data_round_trips() {
        let n = NewSession {
            volume: "v".into(),
            session: "20260101-000000".into(),
            previous: Some("20251231-000000".into()),
            time: 1_767_225_600,
            volsize: 1 << 30,
            chunksize: 65536,
            compression: Codec::Zstd,
            chunks: 7,
            bytes_read: 99,
            volume_id: Some("0f8b8d3e-5c1a-4a7e-9b2d-3c4d5e6f7a8b".into()),
        };
        let p = FoldPlan {
            removed: "a".into(),
            into: "b".into(),
            moved: 1,
            deleted: 2,
            freed_bytes: 3,
            missing: vec!["x".into()],
            missing_count: 4,
        };
        let mut e = Enc::new();
        put_new_session(&mut e, &n);
        put_plan(&mut e, &p);
        put_file(&mut e, SessionFile::Chunk(65536));
        put_opt_pair(&mut e, Some(&("a".into(), "b".into())));
        put_kind(&mut e, SessionKind::Tar);
        put_mode(&mut e, Mode::Exclusive);
        let mut d = Dec::new(&e.0);
        assert_eq!(get_new_session(&mut d).unwrap(), n);
        assert_eq!(get_plan(&mut d).unwrap(), p);
        assert_eq!(get_file(&mut d).unwrap(), SessionFile::Chunk(65536));
        assert_eq!(
            get_opt_pair(&mut d).unwrap(),
            Some(("a".into(), "b".into()))
        );
        assert_eq!(get_kind(&mut d).unwrap(), SessionKind::Tar);
        assert_eq!(get_mode(&mut d).unwrap(), Mode::Exclusive);
        d.end().unwrap();
    }
}
