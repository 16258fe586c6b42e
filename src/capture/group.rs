//! Turns parsed `MONITOR` lines into capture units, in the source's order: single writes, atomic
//! groups (MULTI/EXEC blocks and scripts' `[db lua]` effects), ferry's own key reads (fences)
//! and markers. Reads, ferry's other traffic and framing lines are dropped here.
//!
//! ## Behavior
//! - `MULTI` opens a buffer for its client; the queued commands are logged at `EXEC` time, just
//!   before the `EXEC` line (docs/redis-behaviour.md §2), so they go into the buffer and `EXEC` emits it as
//!   one atomic group. `DISCARD` drops it; an aborted `EXEC` emits nothing.
//! - A script line (`EVAL`…) is followed by its `[db lua]` lines (§3); their writes form one
//!   atomic group, inside the caller's `MULTI` buffer when there is one.
//! - Lines from a registered fence connection: inside a fenced read (opened by
//!   `ECHO ferry-read:<id>`), `DUMP k` / `TYPE k` are key reads numbered within the read, and
//!   `FUNCTION DUMP` is a [`Marker::Functions`] (the function libraries read there);
//!   `ECHO ferry:<id>` is a marker.
//! - A write that may have served a blocked client (see [`super::blocked`]) is followed by a
//!   marker `dirty:<db>:<hex key>` for each key the invisible pop changed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use super::blocked::BlockedLedger;
use super::late::LateWrites;
use super::parse::{MonitorLine, Peer};
use crate::command::{Argv, Class, CommandTable};
use crate::journal::{EntryKind, Marker, parse_read_echo};

/// What ferry's own connections to the source are, by the server they reach and the address
/// that server sees. The server is part of the key: one client port can reach several nodes of
/// a cluster source at once (the kernel reuses it toward different servers), and each node's
/// capture must know only the connections to that node.
#[derive(Debug, Default)]
pub struct PeerRegistry {
    /// By server, then by client address: a line's lookup borrows both, allocating nothing.
    roles: RwLock<HashMap<String, HashMap<SocketAddr, Role>>>,
}

/// How a server is named in the registry: its address as ferry connects to it.
fn server_key(server: &crate::net::Endpoint) -> String {
    server.addr().to_string()
}

/// A ferry connection's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads keys for the snapshot and re-copies: its `DUMP`/`TYPE` lines are fences.
    Fence,
    /// Control traffic: ignored, except markers.
    Control,
    /// Another ferry's replay into this server (a reverse sync's): its writes are dropped.
    Replay,
}

impl PeerRegistry {
    /// A shared, empty registry.
    pub fn new() -> Arc<PeerRegistry> {
        Arc::new(PeerRegistry::default())
    }

    /// Registers a connection to `server` by its `CLIENT INFO` address.
    pub fn register(&self, server: &crate::net::Endpoint, addr: &str, role: Role) {
        self.insert(server_key(server), addr, role);
    }

    fn insert(&self, server: String, addr: &str, role: Role) {
        if let (Ok(a), Ok(mut roles)) = (addr.parse(), self.roles.write()) {
            roles.entry(server).or_default().insert(a, role);
        }
    }

    fn role(&self, server: &str, addr: &SocketAddr) -> Option<Role> {
        self.roles.read().ok()?.get(server)?.get(addr).copied()
    }
}

/// The grouping state machine for one `MONITOR` connection.
#[derive(Debug)]
pub struct Grouper {
    table: Arc<CommandTable>,
    peers: Arc<PeerRegistry>,
    /// The server this stream is from, as [`PeerRegistry`] names it.
    server: String,
    /// Open transactions, by client.
    multi: HashMap<Peer, Vec<(u32, Argv)>>,
    /// The client of the last non-`lua` line: `lua` lines belong to its script.
    last: Option<Peer>,
    /// Writes of the script being logged, when it runs outside a transaction.
    script: Option<Vec<(u32, Argv)>>,
    /// The open fenced read per fence connection, and how many keys it has read.
    reads: HashMap<SocketAddr, (String, u64)>,
    /// Clients that may be blocked on keys. It describes the server, not the stream, so it
    /// survives [`Grouper::reset`].
    blocked: BlockedLedger,
    /// Stream time of the last line.
    ts_us: u64,
    /// Writes after the switch's fence, per client (armed by the switch marker).
    late: Option<Arc<LateWrites>>,
}

impl Grouper {
    /// A grouper classifying with `table`.
    pub fn new(table: Arc<CommandTable>, peers: Arc<PeerRegistry>) -> Grouper {
        Grouper {
            table,
            peers,
            server: String::new(),
            multi: HashMap::new(),
            last: None,
            script: None,
            reads: HashMap::new(),
            blocked: BlockedLedger::default(),
            ts_us: 0,
            late: None,
        }
    }

    /// The stream is `server`'s: only ferry's connections to it are its own.
    pub fn on_server(mut self, server: &crate::net::Endpoint) -> Grouper {
        self.server = server_key(server);
        self
    }

    /// Counts writes after the switch marker in `late`.
    pub fn with_late(mut self, late: Arc<LateWrites>) -> Grouper {
        self.late = Some(late);
        self
    }

    /// True when a script's effects may still be arriving; the caller flushes after a short
    /// quiet period, since a script's lines are written in one go.
    pub fn script_open(&self) -> bool {
        self.script.is_some()
    }

    /// Ends the current script's group, if any.
    pub fn flush_script(&mut self, out: &mut Vec<EntryKind>) {
        if let Some(writes) = self.script.take() {
            let start = out.len();
            emit_group(writes, out);
            if let (Some(late), Some(peer)) = (&self.late, &self.last) {
                late.record(&self.table, peer, self.ts_us, &out[start..]);
            }
            self.mark_served(start, out);
        }
    }

    /// Follows each write in `out[start..]` that may have served a blocked client with markers
    /// for the keys the invisible pops changed.
    fn mark_served(&mut self, start: usize, out: &mut Vec<EntryKind>) {
        if self.blocked.is_empty() || out.len() == start {
            return;
        }
        let mut keys = Vec::new();
        for unit in &out[start..] {
            match unit {
                EntryKind::Write { db, argv } => {
                    self.blocked
                        .served(&self.table, *db, argv, self.ts_us, &mut keys)
                }
                EntryKind::Atomic(writes) => {
                    for (db, argv) in writes {
                        self.blocked
                            .served(&self.table, *db, argv, self.ts_us, &mut keys);
                    }
                }
                _ => {}
            }
        }
        out.extend(
            keys.into_iter()
                .map(|(db, key)| EntryKind::Marker(Marker::Dirty { db, key })),
        );
    }

    /// Forgets open transactions and scripts, after the stream broke.
    pub fn reset(&mut self) {
        self.multi.clear();
        self.script = None;
        self.last = None;
        self.reads.clear();
    }

    /// Consumes one line, appending what it produces to `out`.
    pub fn push(&mut self, line: &MonitorLine, out: &mut Vec<EntryKind>) {
        self.ts_us = line.ts_us;
        if line.peer != Peer::Lua {
            // A script's effects end at the next line that is not one of them.
            self.flush_script(out);
        }
        let start = out.len();
        let top_level_write = self.push_line(line, out);
        if let Some(late) = &self.late {
            late.record(&self.table, &line.peer, line.ts_us, &out[start..]);
        }
        self.mark_served(start, out);
        if top_level_write {
            // Entered after its own write was checked: a pop does not serve itself.
            self.blocked
                .block(&self.table, &line.peer, line.db, &line.argv, line.ts_us);
        }
    }

    /// True when the line was a write outside any transaction or script (one that may block).
    fn push_line(&mut self, line: &MonitorLine, out: &mut Vec<EntryKind>) -> bool {
        if line.peer == Peer::Lua {
            self.push_lua(line);
            return false;
        }
        if let Peer::Tcp(addr) = &line.peer
            && let Some(role) = self.peers.role(&self.server, addr)
            && (role == Role::Replay || !self.writes(&line.argv))
        {
            self.push_own(*addr, role, line, out);
            return false;
        }
        self.blocked.active(&line.peer);
        let class = self.table.classify(&line.argv);
        let name = line.argv.name();
        if name == b"ECHO"
            && let Some(marker) = line.argv.get(1).and_then(Marker::from_recopy_echo)
        {
            out.push(EntryKind::Marker(marker));
            return false;
        }
        if let Some(buf) = self.multi.get_mut(&line.peer) {
            match name {
                b"EXEC" => {
                    if let Some(writes) = self.multi.remove(&line.peer) {
                        emit_group(writes, out);
                    }
                }
                b"DISCARD" => {
                    self.multi.remove(&line.peer);
                }
                _ if is_replayed(class) => buf.push((line.db, line.argv.clone())),
                _ => {}
            }
            self.last = Some(line.peer.clone());
            return false;
        }
        match class {
            _ if name == b"MULTI" => {
                self.multi.insert(line.peer.clone(), Vec::new());
            }
            Class::Script => self.script = Some(Vec::new()),
            c if is_replayed(c) => {
                out.push(EntryKind::Write {
                    db: line.db,
                    argv: line.argv.clone(),
                });
                self.last = Some(line.peer.clone());
                return true;
            }
            _ => {}
        }
        self.last = Some(line.peer.clone());
        false
    }

    fn push_lua(&mut self, line: &MonitorLine) {
        if !is_replayed(self.table.classify(&line.argv)) {
            return;
        }
        let entry = (line.db, line.argv.clone());
        if let Some(peer) = &self.last
            && let Some(buf) = self.multi.get_mut(peer)
        {
            buf.push(entry);
            return;
        }
        // A lua line outside a known script (the EVAL line was before capture started) still
        // took effect; keep it.
        self.script.get_or_insert_with(Vec::new).push(entry);
    }

    /// True for a command the stream must replay. ferry's fence and control connections never
    /// send one, so such a line from their address is an application's: a client that reuses
    /// the port of a connection ferry closed (on loopback the kernel hands ports in TIME_WAIT
    /// out again at once).
    fn writes(&self, argv: &Argv) -> bool {
        matches!(
            self.table.classify(argv),
            Class::Write | Class::Script | Class::ScriptCache
        )
    }

    fn push_own(
        &mut self,
        addr: SocketAddr,
        role: Role,
        line: &MonitorLine,
        out: &mut Vec<EntryKind>,
    ) {
        let name = line.argv.name();
        let arg1 = line.argv.get(1).unwrap_or_default();
        if name == b"ECHO" {
            if let Some(id) = parse_read_echo(arg1) {
                self.reads.insert(addr, (id, 0));
            } else if let Some(marker) = Marker::from_control_echo(arg1) {
                if marker.is_switch()
                    && let Some(late) = &self.late
                {
                    late.arm();
                }
                out.push(EntryKind::Marker(marker));
            }
            return;
        }
        if name == b"EXEC" {
            self.reads.remove(&addr);
            return;
        }
        if role == Role::Fence
            && name == b"FUNCTION"
            && line.argv.len() == 2
            && arg1.eq_ignore_ascii_case(b"DUMP")
            && let Some((id, _)) = self.reads.get(&addr)
        {
            out.push(EntryKind::Marker(Marker::Functions {
                read_id: id.clone(),
            }));
            return;
        }
        if role == Role::Fence
            && (name == b"DUMP" || name == b"TYPE")
            && line.argv.len() == 2
            && let Some((id, next)) = self.reads.get_mut(&addr)
        {
            out.push(EntryKind::KeyFence {
                db: line.db,
                key: arg1.to_vec(),
                read_id: id.clone(),
                ordinal: *next,
            });
            *next += 1;
        }
    }
}

fn is_replayed(class: Class) -> bool {
    matches!(class, Class::Write | Class::ScriptCache | Class::Unknown)
}

fn emit_group(mut writes: Vec<(u32, Argv)>, out: &mut Vec<EntryKind>) {
    match writes.len() {
        0 => {}
        1 => {
            let (db, argv) = writes.pop().unwrap_or_default();
            out.push(EntryKind::Write { db, argv });
        }
        _ => out.push(EntryKind::Atomic(writes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::parse_line;

    fn run(lines: &[&str], peers: &[(&str, Role)]) -> Vec<EntryKind> {
        let reg = PeerRegistry::new();
        for (a, r) in peers {
            reg.insert(String::new(), a, *r);
        }
        let table = Arc::new(CommandTable::from_specs(
            CommandTable::builtin().iter().cloned().collect(),
            crate::command::TableOrigin::Builtin,
        ));
        let mut g = Grouper::new(table, reg);
        let mut out = Vec::new();
        for l in lines {
            g.push(&parse_line(l.as_bytes()).unwrap(), &mut out);
        }
        g.flush_script(&mut out);
        out
    }

    fn w(db: u32, args: &[&str]) -> (u32, Argv) {
        (db, Argv::from_args(args))
    }

    #[test]
    fn groups_transactions_and_scripts() {
        let out = run(
            &[
                r#"+1.000001 [0 127.0.0.1:1] "MULTI""#,
                r#"+1.000002 [0 127.0.0.1:2] "SET" "x" "1""#,
                r#"+1.000003 [0 127.0.0.1:1] "SET" "a" "1""#,
                r#"+1.000004 [0 127.0.0.1:1] "GET" "a""#,
                r#"+1.000005 [2 127.0.0.1:1] "SELECT" "2""#,
                r#"+1.000006 [2 127.0.0.1:1] "EVAL" "..." "0""#,
                r#"+1.000007 [2 lua] "INCR" "c""#,
                r#"+1.000008 [2 127.0.0.1:1] "EXEC""#,
                r#"+1.000009 [0 127.0.0.1:3] "EVAL" "..." "0""#,
                r#"+1.000010 [0 lua] "GET" "k""#,
                r#"+1.000011 [4 lua] "SET" "k" "v""#,
                r#"+1.000012 [0 lua] "LPUSH" "l" "x""#,
                r#"+1.000013 [0 127.0.0.1:4] "MULTI""#,
                r#"+1.000014 [0 127.0.0.1:4] "EXEC""#,
                r#"+1.000015 [0 127.0.0.1:5] "MULTI""#,
                r#"+1.000016 [0 127.0.0.1:5] "DISCARD""#,
                r#"+1.000017 [0 127.0.0.1:6] "EVAL" "..." "0""#,
                r#"+1.000018 [0 lua] "DEL" "only""#,
            ],
            &[],
        );
        assert_eq!(
            out,
            vec![
                EntryKind::Write {
                    db: 0,
                    argv: Argv::from_args(["SET", "x", "1"])
                },
                EntryKind::Atomic(vec![w(0, &["SET", "a", "1"]), w(2, &["INCR", "c"])]),
                EntryKind::Atomic(vec![w(4, &["SET", "k", "v"]), w(0, &["LPUSH", "l", "x"])]),
                EntryKind::Write {
                    db: 0,
                    argv: Argv::from_args(["DEL", "only"])
                },
            ]
        );
    }

    #[test]
    fn pushes_that_may_serve_a_blocked_client_are_followed_by_served_markers() {
        let out = run(
            &[
                // Client 1 blocks on q (or pops at once: the stream cannot tell).
                r#"+1.000001 [0 127.0.0.1:1] "BRPOP" "q" "5""#,
                r#"+1.000002 [0 127.0.0.1:2] "LPUSH" "other" "x""#,
                r#"+1.000003 [0 127.0.0.1:2] "LPUSH" "q" "j1""#,
                // Client 3 blocks with BLMOVE; a transaction and a script push to its source.
                r#"+1.000004 [0 127.0.0.1:3] "BLMOVE" "src" "dst" "RIGHT" "LEFT" "0""#,
                r#"+1.000005 [0 127.0.0.1:2] "MULTI""#,
                r#"+1.000006 [0 127.0.0.1:2] "RPUSH" "src" "j2""#,
                r#"+1.000007 [0 127.0.0.1:2] "EXEC""#,
                r#"+1.000008 [0 127.0.0.1:4] "EVAL" "..." "0""#,
                r#"+1.000009 [0 lua] "RPUSH" "src" "j3""#,
                // Client 1 speaks again: it is not blocked any more.
                r#"+1.000010 [0 127.0.0.1:1] "GET" "q""#,
                r#"+1.000011 [0 127.0.0.1:2] "LPUSH" "q" "j4""#,
                // Client 3's next command ends its entry too.
                r#"+1.000012 [0 127.0.0.1:3] "PING""#,
                r#"+1.000013 [0 127.0.0.1:2] "RPUSH" "src" "j5""#,
            ],
            &[],
        );
        let served = |key: &str| {
            EntryKind::Marker(Marker::Dirty {
                db: 0,
                key: key.as_bytes().to_vec(),
            })
        };
        let write = |args: &[&str]| EntryKind::Write {
            db: 0,
            argv: Argv::from_args(args),
        };
        assert_eq!(
            out,
            vec![
                write(&["BRPOP", "q", "5"]),
                write(&["LPUSH", "other", "x"]),
                write(&["LPUSH", "q", "j1"]),
                served("q"),
                write(&["BLMOVE", "src", "dst", "RIGHT", "LEFT", "0"]),
                write(&["RPUSH", "src", "j2"]),
                served("src"),
                served("dst"),
                write(&["RPUSH", "src", "j3"]),
                served("src"),
                served("dst"),
                write(&["LPUSH", "q", "j4"]),
                write(&["RPUSH", "src", "j5"]),
            ]
        );
    }

    #[test]
    fn own_connections_give_fences_and_markers_only_and_never_writes() {
        let out = run(
            &[
                r#"+1.000001 [0 127.0.0.1:9] "MULTI""#,
                r#"+1.000001 [0 127.0.0.1:9] "ECHO" "ferry-read:r1""#,
                r#"+1.000002 [3 127.0.0.1:9] "DUMP" "k1""#,
                r#"+1.000003 [3 127.0.0.1:9] "PEXPIRETIME" "k1""#,
                r#"+1.000004 [3 127.0.0.1:9] "DUMP" "k2""#,
                r#"+1.000005 [3 127.0.0.1:9] "EXEC""#,
                r#"+1.000006 [0 127.0.0.1:8] "ECHO" "ferry:final-1""#,
                // ferry's control connections never write: a write from their address is an
                // application's that reuses a closed connection's port. A reverse sync's
                // replay connection writes, and is dropped.
                r#"+1.000007 [0 127.0.0.1:8] "SET" "reused-port" "x""#,
                r#"+1.000007 [0 127.0.0.1:6] "SET" "ignored" "x""#,
                r#"+1.000008 [0 127.0.0.1:9] "TYPE" "outside-a-read""#,
                r#"+1.000009 [0 127.0.0.1:9] "MULTI""#,
                r#"+1.000009 [0 127.0.0.1:9] "ECHO" "ferry-read:r2""#,
                r#"+1.000009 [0 127.0.0.1:9] "TYPE" "big""#,
                r#"+1.000009 [0 127.0.0.1:9] "EXEC""#,
                // The function libraries, read inside a fenced read; outside one, nothing.
                r#"+1.000010 [0 127.0.0.1:9] "FUNCTION" "DUMP""#,
                r#"+1.000011 [0 127.0.0.1:9] "MULTI""#,
                r#"+1.000011 [0 127.0.0.1:9] "ECHO" "ferry-read:r3""#,
                r#"+1.000011 [0 127.0.0.1:9] "FUNCTION" "DUMP""#,
                r#"+1.000011 [0 127.0.0.1:9] "EXEC""#,
                // A client's own FUNCTION DUMP is a read like any other.
                r#"+1.000012 [0 127.0.0.1:7] "FUNCTION" "DUMP""#,
                r##"+1.000013 [0 127.0.0.1:7] "FUNCTION" "LOAD" "#!lua name=l\n""##,
            ],
            &[
                ("127.0.0.1:9", Role::Fence),
                ("127.0.0.1:8", Role::Control),
                ("127.0.0.1:6", Role::Replay),
            ],
        );
        let read = |db, key: &str, id: &str, ordinal| EntryKind::KeyFence {
            db,
            key: key.as_bytes().to_vec(),
            read_id: id.into(),
            ordinal,
        };
        assert_eq!(
            out,
            vec![
                read(3, "k1", "r1", 0),
                read(3, "k2", "r1", 1),
                EntryKind::Marker(Marker::Position("final-1".into())),
                EntryKind::Write {
                    db: 0,
                    argv: Argv::from_args(["SET", "reused-port", "x"]),
                },
                read(0, "big", "r2", 0),
                EntryKind::Marker(Marker::Functions {
                    read_id: "r3".into()
                }),
                EntryKind::Write {
                    db: 0,
                    argv: Argv::from_args(["FUNCTION", "LOAD", "#!lua name=l\n"]),
                },
            ]
        );
    }
}
