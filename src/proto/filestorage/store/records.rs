//! The JSON files of the store (spec 7.1): `partial/<fid>/state.json` ([`PartialState`]) and
//! `records/<id>.json` ([`Record`]). Internal, not wire format, but read back after crashes, so
//! decoding is as strict as for messages (the checked parser of [`json`])
//! and checks the values against each other (ids, ranges within the files).

use super::missing::{chunk_count, MissingSet};
use crate::proto::filestorage::ids::{store_id, Uuid};
use crate::proto::filestorage::json::{
    self, as_int, file_specs, parse_object, put_files, put_str, put_tags, put_uint, put_uuid,
    ChunkRange, FileSpec, Value, MAX_CHUNK_SIZE, MAX_INT, MIN_CHUNK_SIZE,
};

/// `state.json`'s version.
pub const STATE_VERSION: u64 = 1;

/// A stored file that does not decode; `what` names the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadStoreJson {
    pub what: &'static str,
}

impl std::fmt::Display for BadStoreJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "store json: bad {}", self.what)
    }
}

impl std::error::Error for BadStoreJson {}

/// `partial/<fid>/state.json`:
/// `{"version":1,"uid","files","tags","chunk-size","missing","touched"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartialState {
    pub uid: u32,
    pub files: Vec<FileSpec>,
    /// The tag set: sorted, no duplicates.
    pub tags: Vec<String>,
    pub chunk_size: u32,
    pub missing: MissingSet,
    /// Unix seconds of the last accepted chunk or AUTHENTICATION folded into this state.
    pub touched: u64,
}

impl PartialState {
    /// Chunk counts of the files.
    pub fn chunk_counts(&self) -> Vec<u64> {
        self.files
            .iter()
            .map(|f| chunk_count(f.size, self.chunk_size))
            .collect()
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"version\":1,\"uid\":");
        put_uint(out, u64::from(self.uid));
        out.extend_from_slice(b",\"files\":");
        put_files(out, &self.files);
        out.extend_from_slice(b",\"tags\":");
        put_tags(out, &self.tags);
        out.extend_from_slice(b",\"chunk-size\":");
        put_uint(out, u64::from(self.chunk_size));
        out.extend_from_slice(b",\"missing\":[");
        for (i, r) in self.missing.ranges().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'[');
            put_uint(out, u64::from(r.file));
            out.push(b',');
            put_uint(out, r.first);
            out.push(b',');
            put_uint(out, r.end);
            out.push(b']');
        }
        out.extend_from_slice(b"],\"touched\":");
        put_uint(out, self.touched);
        out.push(b'}');
    }

    pub fn decode(bytes: &[u8]) -> Result<PartialState, BadStoreJson> {
        let bad = |what| BadStoreJson { what };
        let o = parse_object(bytes).map_err(|_| bad("json"))?;
        if o.int("version", MAX_INT).map_err(bad)? != STATE_VERSION {
            return Err(bad("version"));
        }
        let uid = o.int("uid", (1 << 31) - 1).map_err(bad)? as u32;
        let files = file_specs(o.array("files").map_err(bad)?).map_err(bad)?;
        if files.is_empty() {
            return Err(bad("files"));
        }
        let tags = o.strings("tags").map_err(bad)?;
        if !tags.windows(2).all(|w| w[0] < w[1]) {
            return Err(bad("tags"));
        }
        let chunk_size = o
            .int("chunk-size", u64::from(MAX_CHUNK_SIZE))
            .map_err(bad)?;
        if chunk_size < u64::from(MIN_CHUNK_SIZE) {
            return Err(bad("chunk-size"));
        }
        let chunk_size = chunk_size as u32;
        let ranges = o
            .array("missing")
            .map_err(bad)?
            .iter()
            .map(|r| match r {
                Value::Array(t) if t.len() == 3 => Some(ChunkRange {
                    file: as_int(&t[0], u64::from(u32::MAX))? as u32,
                    first: as_int(&t[1], MAX_INT)?,
                    end: as_int(&t[2], MAX_INT)?,
                }),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or(bad("missing"))?;
        let counts: Vec<u64> = files
            .iter()
            .map(|f| chunk_count(f.size, chunk_size))
            .collect();
        let missing = MissingSet::from_ranges(&counts, &ranges).map_err(|_| bad("missing"))?;
        Ok(PartialState {
            uid,
            files,
            tags,
            chunk_size,
            missing,
            touched: o.int("touched", MAX_INT).map_err(bad)?,
        })
    }
}

/// `records/<id>.json`: the commit point of a stored file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// `UUIDv5(fid, "<file>")`.
    pub id: Uuid,
    pub owner: u32,
    pub name: String,
    pub size: u64,
    pub sha256: [u8; 32],
    /// Sorted, no duplicates.
    pub tags: Vec<String>,
    pub fid: Uuid,
    pub file: u32,
    /// Unix seconds.
    pub created: u64,
    /// The name it was published under in the served folder, if it was.
    pub published: Option<String>,
}

impl Record {
    /// `{"id","owner","name","size","sha256","tags","fid","file","created","published"?}`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"id\":");
        put_uuid(out, &self.id);
        out.extend_from_slice(b",\"owner\":");
        put_uint(out, u64::from(self.owner));
        out.extend_from_slice(b",\"name\":");
        put_str(out, &self.name);
        out.extend_from_slice(b",\"size\":");
        put_uint(out, self.size);
        out.extend_from_slice(b",\"sha256\":\"");
        out.extend_from_slice(crate::wire::hex::encode(&self.sha256).as_bytes());
        out.extend_from_slice(b"\",\"tags\":");
        put_tags(out, &self.tags);
        out.extend_from_slice(b",\"fid\":");
        put_uuid(out, &self.fid);
        out.extend_from_slice(b",\"file\":");
        put_uint(out, u64::from(self.file));
        out.extend_from_slice(b",\"created\":");
        put_uint(out, self.created);
        if let Some(p) = &self.published {
            out.extend_from_slice(b",\"published\":");
            put_str(out, p);
        }
        out.push(b'}');
    }

    pub fn decode(bytes: &[u8]) -> Result<Record, BadStoreJson> {
        let bad = |what| BadStoreJson { what };
        let o = parse_object(bytes).map_err(|_| bad("json"))?;
        let r = Record {
            id: o.uuid("id").map_err(bad)?,
            owner: o.int("owner", (1 << 31) - 1).map_err(bad)? as u32,
            name: o.str("name").map_err(bad)?.to_string(),
            size: o.int("size", MAX_INT).map_err(bad)?,
            sha256: json::sha256_text(o.str("sha256").map_err(bad)?).ok_or(bad("sha256"))?,
            tags: o.strings("tags").map_err(bad)?,
            fid: o.uuid("fid").map_err(bad)?,
            file: o.int("file", u64::from(u32::MAX)).map_err(bad)? as u32,
            created: o.int("created", MAX_INT).map_err(bad)?,
            published: o.opt_str("published").map_err(bad)?.map(|s| s.to_string()),
        };
        if r.id != store_id(&r.fid, u64::from(r.file)) {
            return Err(bad("id"));
        }
        if !r.tags.windows(2).all(|w| w[0] < w[1]) {
            return Err(bad("tags"));
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::filestorage::testdata::{FID, NOTES_ID, NOTES_SHA};

    fn state() -> PartialState {
        let mut missing = MissingSet::all(&[3, 0]);
        missing.remove(0, 1);
        PartialState {
            uid: 1002,
            files: vec![
                FileSpec {
                    name: "notes.txt".into(),
                    size: 2500,
                    sha256: crate::wire::hex::parse_sha256(NOTES_SHA),
                },
                FileSpec {
                    name: "e".into(),
                    size: 0,
                    sha256: None,
                },
            ],
            tags: vec!["2024".into(), "work".into()],
            chunk_size: 1000,
            missing,
            touched: 1_750_000_000,
        }
    }

    #[test]
    fn state_json_round_trips_with_exact_bytes() {
        let s = state();
        let mut out = Vec::new();
        s.encode(&mut out);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            format!(
                r#"{{"version":1,"uid":1002,"files":[{{"name":"notes.txt","size":2500,"sha256":"{NOTES_SHA}"}},{{"name":"e","size":0}}],"tags":["2024","work"],"chunk-size":1000,"missing":[[0,0,1],[0,2,3]],"touched":1750000000}}"#
            )
        );
        assert_eq!(PartialState::decode(&out), Ok(s.clone()));
        assert_eq!(s.chunk_counts(), [3, 0]);
        let text = String::from_utf8(out).unwrap();
        for (from, to, what) in [
            (r#""version":1"#, r#""version":2"#, "version"),
            (
                r#""missing":[[0,0,1],[0,2,3]]"#,
                r#""missing":[[0,2,3],[0,0,1]]"#,
                "missing",
            ),
            (
                r#""missing":[[0,0,1],[0,2,3]]"#,
                r#""missing":[[0,0,4]]"#,
                "missing",
            ),
            (
                r#""missing":[[0,0,1],[0,2,3]]"#,
                r#""missing":[[1,0,1]]"#,
                "missing",
            ),
            (
                r#""tags":["2024","work"]"#,
                r#""tags":["work","2024"]"#,
                "tags",
            ),
            (r#""chunk-size":1000"#, r#""chunk-size":999"#, "chunk-size"),
            (r#""uid":1002"#, r#""uid":2147483648"#, "uid"),
            (
                r#""tags":["2024","work"]"#,
                r#""tags":["work","work"]"#,
                "tags",
            ),
            (
                r#""missing":[[0,0,1],[0,2,3]]"#,
                r#""missing":[[0,0,1,7],[0,2,3]]"#,
                "missing",
            ),
            (r#""uid":1002"#, r#""uid":1002,"uid":1003"#, "json"),
            (r#""touched":1750000000"#, r#""touched":1.5"#, "touched"),
        ] {
            let t = text.replace(from, to);
            assert_eq!(
                PartialState::decode(t.as_bytes()),
                Err(BadStoreJson { what }),
                "{to}"
            );
        }
        let top = text.replace(r#""uid":1002"#, r#""uid":2147483647"#);
        assert_eq!(
            PartialState::decode(top.as_bytes()).unwrap().uid,
            (1 << 31) - 1
        );
    }

    #[test]
    fn record_json_round_trips_and_checks_its_id() {
        let fid: Uuid = FID.parse().unwrap();
        let mut r = Record {
            id: NOTES_ID.parse().unwrap(),
            owner: 1002,
            name: "notes \"1\".txt".into(),
            size: 2500,
            sha256: crate::wire::hex::parse_sha256(NOTES_SHA).unwrap(),
            tags: vec!["2024".into(), "public".into()],
            fid,
            file: 0,
            created: 1_750_000_000,
            published: None,
        };
        let mut out = Vec::new();
        r.encode(&mut out);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            format!(
                r#"{{"id":"{NOTES_ID}","owner":1002,"name":"notes \"1\".txt","size":2500,"sha256":"{NOTES_SHA}","tags":["2024","public"],"fid":"{FID}","file":0,"created":1750000000}}"#
            )
        );
        assert_eq!(Record::decode(&out), Ok(r.clone()));
        r.published = Some("notes.ed40853e.txt".into());
        out.clear();
        r.encode(&mut out);
        assert!(out.ends_with(br#","published":"notes.ed40853e.txt"}"#));
        assert_eq!(Record::decode(&out), Ok(r.clone()));
        r.file = 1;
        out.clear();
        r.encode(&mut out);
        assert_eq!(Record::decode(&out), Err(BadStoreJson { what: "id" }));
        assert_eq!(Record::decode(b"{}"), Err(BadStoreJson { what: "id" }));
        // The largest owner (2^31 - 1) is read, one more is not; tags must be strictly sorted.
        r.file = 0;
        out.clear();
        r.encode(&mut out);
        let text = String::from_utf8(out.clone()).unwrap();
        let top = text.replace(r#""owner":1002"#, r#""owner":2147483647"#);
        assert_eq!(Record::decode(top.as_bytes()).unwrap().owner, (1 << 31) - 1);
        for (from, to, what) in [
            (r#""owner":1002"#, r#""owner":2147483648"#, "owner"),
            (r#"["2024","public"]"#, r#"["2024","2024"]"#, "tags"),
        ] {
            let t = text.replace(from, to);
            assert_eq!(
                Record::decode(t.as_bytes()),
                Err(BadStoreJson { what }),
                "{to}"
            );
        }
        assert_eq!(
            BadStoreJson { what: "id" }.to_string(),
            "store json: bad id"
        );
    }
}
