//! The stream's own vocabulary: what ferry writes into the source's command stream (`ECHO`
//! arguments that `MONITOR` shows in order with every write) and the typed [`Marker`] the
//! journal carries for them. Every spelling of these strings lives here and nowhere else.
//!
//! ## Behavior
//! - On the source, ferry's clients send `ECHO ferry:<id>` (a [`Marker`]), `ECHO
//!   ferry-read:<id>` (the opening of a fenced read inside its `MULTI`) and `ECHO
//!   ferry-recopy:<db>:<hex key>` / `ECHO ferry-recopy:*` (a replay worker's re-copy request;
//!   any process may send it). `ECHO` writes nothing, and `MONITOR` shows it at the position
//!   where it ran (docs/redis-behaviour.md §6).
//! - One marker has no `ECHO` of its own: capture makes [`Marker::Functions`] from the `FUNCTION
//!   DUMP` line inside a fenced read, the point where the source's function libraries were read.
//! - In the journal a marker is stored by its id ([`Marker::id`]), so the on-disk and SQS
//!   formats stay plain text; [`Marker::parse`] is its exact inverse.
//! - Keys inside ids are `<db>:<hex key>` ([`key_id`]): binary-safe and free of the
//!   separators around them.

use std::fmt::Write as _;

/// `ECHO` prefix of a marker placed by ferry's control connection.
const ECHO_MARKER: &[u8] = b"ferry:";

/// `ECHO` prefix that opens a fenced read inside its `MULTI`: `ferry-read:<id>`. The reads that
/// follow are numbered from 0 within that id, so payloads and fences match by `(id, index)`
/// whatever was lost around them.
const ECHO_READ: &[u8] = b"ferry-read:";

/// `ECHO` prefix of a replay worker's re-copy request.
const ECHO_RECOPY: &[u8] = b"ferry-recopy:";

/// Id prefix of [`Marker::Dirty`].
const DIRTY: &str = "dirty:";
/// Id prefix of [`Marker::Recopy`]; `recopy:*` is [`Marker::RecopyAll`].
const RECOPY: &str = "recopy:";
const RECOPY_ALL: &str = "recopy:*";
/// Id prefix of [`Marker::SnapshotDone`].
const SNAPSHOT_DONE: &str = "snapshot-done-";
/// Id prefix of [`Marker::Functions`].
const FUNCTIONS: &str = "functions:";

/// Name prefix of the position marker placed at a cutover's switch, while source writes are
/// paused: every write after it in the stream reached the old source after the switch.
const SWITCH: &str = "switch-";

/// Read ids of fenced verification reads start with this; snapshot reads never do.
const CHECK_READ: &str = "v";

/// A position ferry placed in the source's stream, and what replay does when it gets there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Marker {
    /// A named position the coordinator waits for on the target (`tick-3`, `lag-7`,
    /// `final-9`…): replay reports when everything before it is applied.
    Position(String),
    /// Snapshot (or resync) `epoch` has read every key: plain replay is exact from here.
    SnapshotDone(u64),
    /// Re-copy this source key from here: a change the stream does not show (a blocked pop
    /// served invisibly, an eviction).
    Dirty { db: u32, key: Vec<u8> },
    /// A replay worker asks for a re-copy of the source key(s) behind this target key (a batch
    /// in doubt, a write that failed only on the target, a key expired during replay lag).
    Recopy { db: u32, key: Vec<u8> },
    /// A replay worker lost entries it cannot name: resync everything.
    RecopyAll,
    /// The source's function libraries were read here: the `FUNCTION DUMP` of fenced read
    /// `read_id`. Replay restores that dump on the target at this position, so the libraries
    /// that `FUNCTION` commands before it changed are in it, and none after it.
    Functions { read_id: String },
}

impl Marker {
    /// The id the journal stores.
    pub fn id(&self) -> String {
        match self {
            Marker::Position(name) => name.clone(),
            Marker::SnapshotDone(epoch) => format!("{SNAPSHOT_DONE}{epoch}"),
            Marker::Dirty { db, key } => format!("{DIRTY}{}", key_id(*db, key)),
            Marker::Recopy { db, key } => format!("{RECOPY}{}", key_id(*db, key)),
            Marker::RecopyAll => RECOPY_ALL.to_string(),
            Marker::Functions { read_id } => format!("{FUNCTIONS}{read_id}"),
        }
    }

    /// The marker an id names. A malformed key id (which ferry never writes) stays a
    /// position, so nothing acts on a key it cannot name.
    pub fn parse(id: &str) -> Marker {
        if id == RECOPY_ALL {
            return Marker::RecopyAll;
        }
        if let Some((db, key)) = id.strip_prefix(DIRTY).and_then(parse_key_id) {
            return Marker::Dirty { db, key };
        }
        if let Some((db, key)) = id.strip_prefix(RECOPY).and_then(parse_key_id) {
            return Marker::Recopy { db, key };
        }
        if let Some(epoch) = id.strip_prefix(SNAPSHOT_DONE).and_then(|e| e.parse().ok()) {
            return Marker::SnapshotDone(epoch);
        }
        if let Some(read_id) = id.strip_prefix(FUNCTIONS).filter(|r| !r.is_empty()) {
            return Marker::Functions {
                read_id: read_id.to_string(),
            };
        }
        Marker::Position(id.to_string())
    }

    /// The `ECHO` argument that places this marker on the source. Re-copy requests use their
    /// own prefix, since any process (a `ferry replay` worker) may send them.
    pub fn echo(&self) -> Vec<u8> {
        match self {
            Marker::Recopy { db, key } => [ECHO_RECOPY, key_id(*db, key).as_bytes()].concat(),
            Marker::RecopyAll => [ECHO_RECOPY, b"*"].concat(),
            other => [ECHO_MARKER, other.id().as_bytes()].concat(),
        }
    }

    /// The switch marker of a cutover, numbered `n`.
    pub fn switch(n: u64) -> Marker {
        Marker::Position(format!("{SWITCH}{n}"))
    }

    /// True for a cutover's switch marker.
    pub fn is_switch(&self) -> bool {
        matches!(self, Marker::Position(name) if name.starts_with(SWITCH))
    }

    /// The marker an `ECHO` argument from ferry's own control connection places.
    pub fn from_control_echo(arg: &[u8]) -> Option<Marker> {
        let id = arg.strip_prefix(ECHO_MARKER)?;
        Some(Marker::parse(&String::from_utf8_lossy(id)))
    }

    /// The re-copy request an `ECHO` argument from any client carries.
    pub fn from_recopy_echo(arg: &[u8]) -> Option<Marker> {
        let rest = arg.strip_prefix(ECHO_RECOPY)?;
        let id = format!("{RECOPY}{}", String::from_utf8_lossy(rest));
        match Marker::parse(&id) {
            m @ (Marker::Recopy { .. } | Marker::RecopyAll) => Some(m),
            // Ill-formed: still a position in the stream, but one nothing waits for.
            _ => Some(Marker::Position(id)),
        }
    }
}

/// The `ECHO` argument that opens fenced read `read_id`.
pub fn read_echo(read_id: &str) -> Vec<u8> {
    [ECHO_READ, read_id.as_bytes()].concat()
}

/// The read id an `ECHO` argument opens, when it opens a fenced read.
pub fn parse_read_echo(arg: &[u8]) -> Option<String> {
    arg.strip_prefix(ECHO_READ)
        .map(|id| String::from_utf8_lossy(id).into_owned())
}

/// The read id of a fenced verification read made from a fresh read id (`v<id>`): replay tells
/// them apart from snapshot reads, whose ids never start with `v`.
pub fn check_read_id(read_id: &str) -> String {
    format!("{CHECK_READ}{read_id}")
}

/// True when `read_id` is a fenced verification read's.
pub fn is_check_read(read_id: &str) -> bool {
    read_id.starts_with(CHECK_READ)
}

/// `<db>:<hex key>`: a key named inside a marker id.
pub fn key_id(db: u32, key: &[u8]) -> String {
    let mut s = format!("{db}:");
    for b in key {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The inverse of [`key_id`].
pub fn parse_key_id(id: &str) -> Option<(u32, Vec<u8>)> {
    let (db, hex) = id.split_once(':')?;
    let db = db.parse().ok()?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let key = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some((db, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_marker() -> Vec<Marker> {
        vec![
            Marker::Position("final-3".into()),
            Marker::Position("tick-1".into()),
            Marker::SnapshotDone(0),
            Marker::SnapshotDone(17),
            Marker::Dirty {
                db: 3,
                key: b"\x00\xff:k *".to_vec(),
            },
            Marker::Dirty { db: 0, key: vec![] },
            Marker::Recopy {
                db: 15,
                key: b"user:1".to_vec(),
            },
            Marker::RecopyAll,
            Marker::Functions {
                read_id: "1f-3".into(),
            },
        ]
    }

    #[test]
    fn ids_parse_back_to_the_same_marker() {
        for m in every_marker() {
            assert_eq!(Marker::parse(&m.id()), m, "{}", m.id());
        }
    }

    #[test]
    fn echoes_parse_back_to_the_same_marker() {
        for m in every_marker() {
            let echo = m.echo();
            let back = match m {
                Marker::Recopy { .. } | Marker::RecopyAll => Marker::from_recopy_echo(&echo),
                _ => Marker::from_control_echo(&echo),
            };
            assert_eq!(back, Some(m));
        }
    }

    #[test]
    fn wire_spellings_are_stable() {
        // Journals and SQS messages written by earlier runs hold these spellings.
        let m = Marker::Dirty {
            db: 2,
            key: b"ab".to_vec(),
        };
        assert_eq!(m.id(), "dirty:2:6162");
        assert_eq!(m.echo(), b"ferry:dirty:2:6162");
        let r = Marker::Recopy {
            db: 0,
            key: b"k".to_vec(),
        };
        assert_eq!(r.echo(), b"ferry-recopy:0:6b");
        assert_eq!(r.id(), "recopy:0:6b");
        assert_eq!(Marker::RecopyAll.echo(), b"ferry-recopy:*");
        assert_eq!(Marker::SnapshotDone(4).id(), "snapshot-done-4");
        let f = Marker::Functions {
            read_id: "1f-3".into(),
        };
        assert_eq!(f.id(), "functions:1f-3");
        assert_eq!(read_echo("r1"), b"ferry-read:r1");
        assert_eq!(parse_read_echo(b"ferry-read:r1").as_deref(), Some("r1"));
        assert_eq!(parse_read_echo(b"ferry:r1"), None);
        assert!(is_check_read(&check_read_id("1f-2")));
        assert!(!is_check_read("1f-2"));
    }

    #[test]
    fn malformed_key_ids_stay_positions() {
        assert_eq!(
            Marker::parse("dirty:x:zz"),
            Marker::Position("dirty:x:zz".into())
        );
        assert_eq!(
            Marker::from_recopy_echo(b"ferry-recopy:1:abc"),
            Some(Marker::Position("recopy:1:abc".into()))
        );
        assert_eq!(Marker::from_control_echo(b"other"), None);
    }

    #[test]
    fn key_ids_round_trip() {
        assert_eq!(
            parse_key_id(&key_id(7, b"\x00\xffk")),
            Some((7, b"\x00\xffk".to_vec()))
        );
        assert_eq!(parse_key_id("7:0"), None);
    }
}
