//! The trailing window after a cutover's switch: clients move to the target over seconds or
//! minutes, so capture and replay go on from the old source until it is quiet, and every late
//! write reaches the target in order, counted per client. Keys written on both sides after the
//! switch are conflicts, reported and handled by [`ConflictPolicy`].
//!
//! ## Behavior
//! - The window starts at the switch fence: a marker placed while source writes were paused,
//!   after which nothing from before the switch is left to apply. Capture arms its
//!   [`LateWrites`] ledger at that marker; [`WindowMapper`] is armed once replay has applied
//!   everything up to it.
//! - Writes on the target by anyone but ferry are watched with `MONITOR` on the target from
//!   before the switch hook runs ([`TargetWrites`]), so no switched client's write is missed.
//! - A late source write to a key the target has already changed is a conflict at apply time:
//!   `report` applies it (arrival order) and lists the key, `target_wins` skips it, `fail`
//!   skips it and ends the window at a fence with an error. A key changed on the target after
//!   its late source write is found when the window ends, and listed the same way.
//! - The window ends when the source has had no late write for `quiet`, at `max`, or on a
//!   stop; the caller then places one more fence.
//! - In the window the coordinator never resyncs or sweeps the target (the target is the
//!   primary now: a resync or an eviction sweep would undo its clients' writes); a gap in the
//!   source's stream ends the run with an error instead.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::capture::{
    LateKey, LateWrites, MonitorStream, PeerRegistry, Role, peer_addr, short_command,
};
use crate::command::{Argv, Class, CommandTable, Mapper};
use crate::escape::quote;
use crate::net::Endpoint;
use crate::replay::REPLAY_CLIENT_NAME;

use super::report::MigrateError;
use super::running::Running;
use super::stop::Stop;
use super::switch::{Pause, PauseEnd};
use super::trailing::{Conflict, ConflictPolicy, TargetKey, WindowEnd, WindowReport, WindowSpec};

/// Target keys remembered for conflict checks.
const MAX_TARGET_KEYS: usize = 100_000;

/// Keys written on the target since the switch by anyone but ferry.
#[derive(Debug, Default)]
pub struct TargetWrites {
    keys: Mutex<HashMap<(u32, Vec<u8>), TargetKey>>,
    overflow: AtomicBool,
}

impl TargetWrites {
    /// The first target write to `(db, key)` since the switch.
    pub fn get(&self, db: u32, key: &[u8]) -> Option<TargetKey> {
        self.lock().get(&(db, key.to_vec())).cloned()
    }

    fn record(&self, db: u32, key: Vec<u8>, entry: TargetKey) {
        let mut keys = self.lock();
        if keys.len() >= MAX_TARGET_KEYS {
            self.overflow.store(true, Ordering::Relaxed);
            return;
        }
        keys.entry((db, key)).or_insert(entry);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u32, Vec<u8>), TargetKey>> {
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every key recorded, with its first write.
    fn all(&self) -> Vec<((u32, Vec<u8>), TargetKey)> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Watches the target's `MONITOR` for writes by clients other than ferry's, until stopped.
/// Returns once the stream is live, so that no write after the return is missed.
pub async fn watch_target(
    target: &Endpoint,
    table: Arc<CommandTable>,
    writes: Arc<TargetWrites>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let mut stream = MonitorStream::start(target)
        .await
        .map_err(|e| e.to_string())?;
    let mut names = ClientNames::new(target.clone());
    names.refresh().await;
    Ok(tokio::spawn(async move {
        loop {
            let line = tokio::select! {
                _ = stop.changed() => return,
                l = stream.next() => l,
            };
            let line = match line {
                Ok(Some(l)) => l.clone(),
                Ok(None) => return,
                Err(crate::capture::CaptureError::Parse { .. }) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "The target's MONITOR ended; later target writes are not checked for conflicts.");
                    return;
                }
            };
            if !matches!(table.classify(&line.argv), Class::Write | Class::Unknown) {
                continue;
            }
            let addr = peer_addr(&line.peer);
            if names.is_ferry(&addr).await {
                continue;
            }
            for k in table.keys(&line.argv) {
                if k.flags.writes() {
                    let key = line.argv.get(k.pos).unwrap_or_default().to_vec();
                    writes.record(
                        line.db,
                        key,
                        TargetKey {
                            ts_us: line.ts_us,
                            command: short_command(&line.argv),
                            addr: addr.clone(),
                        },
                    );
                }
            }
        }
    }))
}

/// Client names by address, from `CLIENT LIST`, refreshed when an unknown address shows up
/// (at most every 100 ms): ferry's own connections are named `ferry-…`.
struct ClientNames {
    endpoint: Endpoint,
    names: HashMap<String, String>,
    refreshed: Option<Instant>,
}

impl ClientNames {
    fn new(endpoint: Endpoint) -> ClientNames {
        ClientNames {
            endpoint,
            names: HashMap::new(),
            refreshed: None,
        }
    }

    async fn refresh(&mut self) {
        self.refreshed = Some(Instant::now());
        if let Some(names) = client_names(&self.endpoint).await {
            self.names = names;
        }
    }

    async fn is_ferry(&mut self, addr: &str) -> bool {
        if !self.names.contains_key(addr)
            && self
                .refreshed
                .is_none_or(|t| t.elapsed() > Duration::from_millis(100))
        {
            self.refresh().await;
        }
        self.names.get(addr).is_some_and(|n| n.starts_with("ferry"))
    }
}

/// Registers ferry's replay connections on `endpoint` (named `ferry-replay`) with `peers`, so
/// that a capture of `endpoint` drops their lines: a reverse sync must not replay the forward
/// replay's writes back, nor the other way round.
pub(super) async fn register_ferry_clients(endpoint: &Endpoint, peers: &PeerRegistry) -> usize {
    let mut n = 0;
    if let Some(names) = client_names(endpoint).await {
        for (addr, name) in names {
            if name == REPLAY_CLIENT_NAME {
                peers.register(endpoint, &addr, Role::Replay);
                n += 1;
            }
        }
    }
    n
}

/// [`register_ferry_clients`], waiting (up to `timeout`) until at least `expected` replay
/// connections are there: they connect in the background, and one missed would have its
/// writes replayed back.
pub(super) async fn register_ferry_clients_all(
    endpoint: &Endpoint,
    peers: &PeerRegistry,
    expected: usize,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let n = register_ferry_clients(endpoint, peers).await;
        if n >= expected {
            return;
        }
        if Instant::now() > deadline {
            tracing::warn!(
                endpoint = %endpoint,
                found = n,
                expected,
                "Not every replay connection of the reverse sync was found; their writes may be replayed twice."
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every client's name by address (`addr=` → `name=`), from `CLIENT LIST`.
pub async fn client_names(endpoint: &Endpoint) -> Option<HashMap<String, String>> {
    let mut con = endpoint.control().await.ok()?;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut con)
        .await
        .ok()?;
    Some(
        list.lines()
            .filter_map(|line| {
                let field = |k: &str| line.split(' ').find_map(|f| f.strip_prefix(k));
                Some((field("addr=")?.to_string(), field("name=")?.to_string()))
            })
            .collect(),
    )
}

/// The plan's mapper with the window's conflict check in front of replay.
pub struct WindowMapper {
    inner: Option<Arc<dyn Mapper>>,
    table: Arc<CommandTable>,
    policy: ConflictPolicy,
    armed: AtomicBool,
    target: Arc<TargetWrites>,
    late: Arc<LateWrites>,
    /// Conflicts found at apply time, by target key.
    conflicts: Mutex<BTreeMap<(u32, Vec<u8>), Conflict>>,
    /// A conflict under `fail`.
    failed: AtomicBool,
}

impl WindowMapper {
    /// A window in front of `inner` (`None`: keys and commands unchanged).
    pub fn new(
        inner: Option<Arc<dyn Mapper>>,
        table: Arc<CommandTable>,
        policy: ConflictPolicy,
        late: Arc<LateWrites>,
    ) -> WindowMapper {
        WindowMapper {
            inner,
            table,
            policy,
            armed: AtomicBool::new(false),
            target: Arc::new(TargetWrites::default()),
            late,
            conflicts: Mutex::new(BTreeMap::new()),
            failed: AtomicBool::new(false),
        }
    }

    /// The target writes this window checks against.
    pub fn target_writes(&self) -> Arc<TargetWrites> {
        self.target.clone()
    }

    /// Starts checking: every command mapped from now on is a late source write.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// True once a conflict under `fail` was refused.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    fn check(&self, out: &mut Vec<(u32, Argv)>, from: usize) {
        let mut i = from;
        while i < out.len() {
            let (db, argv) = &out[i];
            let hit = self.table.keys(argv).iter().find_map(|k| {
                let key = argv.get(k.pos).unwrap_or_default();
                (k.flags.writes())
                    .then(|| self.target.get(*db, key).map(|t| (key.to_vec(), t)))
                    .flatten()
            });
            let Some((key, target)) = hit else {
                i += 1;
                continue;
            };
            let resolution = match self.policy {
                ConflictPolicy::Report => "applied in arrival order",
                ConflictPolicy::TargetWins => "skipped (target wins)",
                ConflictPolicy::Fail => "skipped (window failed)",
            };
            let conflict = Conflict {
                db: *db,
                key: quote(&key),
                source: self.late.key(*db, &key).or_else(|| {
                    Some(LateKey {
                        ts_us: 0,
                        command: short_command(argv),
                        addr: String::new(),
                    })
                }),
                target,
                resolution,
            };
            tracing::warn!(key = %conflict.key, db, target = %conflict.target.command, source = %short_command(argv), resolution, "Conflict: a late source write to a key the target changed since the switch.");
            if let Ok(mut c) = self.conflicts.lock() {
                c.entry((*db, key)).or_insert(conflict);
            }
            match self.policy {
                ConflictPolicy::Report => i += 1,
                ConflictPolicy::TargetWins => {
                    out.remove(i);
                }
                ConflictPolicy::Fail => {
                    self.failed.store(true, Ordering::SeqCst);
                    out.remove(i);
                }
            }
        }
    }

    /// Every conflict: those found at apply time, and keys the target changed after their late
    /// source write (found now).
    pub fn conflicts(&self) -> Vec<Conflict> {
        let mut all = self.conflicts.lock().map(|c| c.clone()).unwrap_or_default();
        for ((db, key), target) in self.target.all() {
            if all.contains_key(&(db, key.clone())) {
                continue;
            }
            // Late source keys are source names; the window is checked on target names, which
            // are the same unless the plan renames (then the source name is looked up).
            let source_key = match &self.inner {
                Some(m) => m.unmap_key(db, &key),
                None => Some((db, key.clone())),
            };
            let Some(late) = source_key.and_then(|(sdb, skey)| self.late.key(sdb, &skey)) else {
                continue;
            };
            all.insert(
                (db, key.clone()),
                Conflict {
                    db,
                    key: quote(&key),
                    source: Some(late),
                    target,
                    resolution: "applied before the target's write",
                },
            );
        }
        all.into_values().collect()
    }
}

impl Mapper for WindowMapper {
    fn map_command(&self, db: u32, argv: Argv, out: &mut Vec<(u32, Argv)>) -> Result<(), String> {
        let from = out.len();
        match &self.inner {
            Some(m) => m.map_command(db, argv, out)?,
            None => out.push((db, argv)),
        }
        if self.armed.load(Ordering::Relaxed) {
            self.check(out, from);
        }
        Ok(())
    }

    fn map_key(&self, db: u32, key: &[u8]) -> Option<(u32, Vec<u8>)> {
        match &self.inner {
            Some(m) => m.map_key(db, key),
            None => Some((db, key.to_vec())),
        }
    }

    fn unmap_key(&self, db: u32, key: &[u8]) -> Option<(u32, Vec<u8>)> {
        match &self.inner {
            Some(m) => m.unmap_key(db, key),
            None => Some((db, key.to_vec())),
        }
    }

    fn unmap_candidates(&self, db: u32, key: &[u8]) -> Vec<(u32, Vec<u8>)> {
        match &self.inner {
            Some(m) => m.unmap_candidates(db, key),
            None => vec![(db, key.to_vec())],
        }
    }
}

impl Running {
    /// Runs the trailing window: capture and replay go on until the source has had no late
    /// write for `spec.quiet`, until `spec.max`, a stop, or a conflict under `fail`. With
    /// `hold`, source writes stay paused and held clients are disconnected meanwhile. The
    /// caller ends it with [`Running::fence`].
    pub async fn trailing_window(
        &self,
        spec: &WindowSpec,
        mapper: &WindowMapper,
        mut hold: Option<Pause>,
        stop: &Stop,
        reverse: Option<&Running>,
    ) -> Result<WindowReport, MigrateError> {
        let started = Instant::now();
        let mut held = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut logged = Instant::now();
        // The first tick renews the pause and disconnects whoever it holds already.
        let mut last_hold = Instant::now()
            .checked_sub(self.cfg.max_pause)
            .unwrap_or_else(Instant::now);
        tracing::info!(
            quiet_ms = spec.quiet.as_millis() as u64,
            max_ms = spec.max.as_millis() as u64,
            on_conflict = ?spec.on_conflict,
            hold_source = spec.hold_source,
            "Trailing window: writes that reach the old source now are replayed to the target until it is quiet."
        );
        let ended = loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait() => break WindowEnd::Stopped,
                e = self.failure() => return Err(e),
            }
            if mapper.failed() {
                break WindowEnd::Conflict;
            }
            if let Some(rev) = reverse {
                // Connections ferry opened since (a replay shard reconnecting) are registered
                // too, so neither direction replays the other's writes back.
                register_ferry_clients(&self.target, &rev.peers).await;
                register_ferry_clients(&self.source, &self.peers).await;
            }
            if let Some(h) = hold.as_mut()
                && last_hold.elapsed() >= self.cfg.max_pause / 3
            {
                held += h.hold().await;
                last_hold = Instant::now();
            }
            // A late client's name is read while its connection is open: it may move soon.
            if self.late.unnamed()
                && let Some(names) = client_names(&self.source).await
            {
                self.late.name_clients(&names);
            }
            if logged.elapsed() >= Duration::from_secs(1) {
                logged = Instant::now();
                let s = self.late.summary();
                tracing::info!(
                    late_writes = s.writes,
                    clients = s.clients.len(),
                    last_client = s.last_client.as_deref().unwrap_or("-"),
                    window_ms = started.elapsed().as_millis() as u64,
                    "Trailing window."
                );
            }
            let quiet_since = self.late.last_seen().unwrap_or(started).max(started);
            if quiet_since.elapsed() >= spec.quiet {
                break WindowEnd::Quiet;
            }
            if started.elapsed() >= spec.max {
                break WindowEnd::MaxLength;
            }
        };
        if let Some(names) = client_names(&self.source).await {
            self.late.name_clients(&names);
        }
        let report = WindowReport {
            window_ms: started.elapsed().as_millis() as u64,
            ended,
            late: self.late.summary(),
            conflicts: mapper.conflicts(),
            hold_source: spec.hold_source,
            held_clients_disconnected: held,
        };
        if let Ok(mut r) = self.report.lock() {
            r.window = Some(report.clone());
        }
        tracing::info!(
            ended = ?report.ended,
            late_writes = report.late.writes,
            clients = report.late.clients.len(),
            conflicts = report.conflicts.len(),
            window_ms = report.window_ms,
            "Trailing window ended; placing the final fence."
        );
        Ok(report)
    }

    /// Records how the switch's pause ended, for the report.
    pub fn note_switch(&self, end: PauseEnd) {
        if let Ok(mut r) = self.report.lock() {
            r.pause_ms = end.pause_ms;
            r.held_clients_disconnected = end.held_clients_disconnected;
            r.pause_expired = end.expired;
        }
    }

    /// The ledger of writes that reached the source after the switch marker.
    pub fn late_writes(&self) -> Arc<LateWrites> {
        self.late.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Arc<CommandTable> {
        Arc::new(CommandTable::from_specs(
            CommandTable::builtin().iter().cloned().collect(),
            crate::command::TableOrigin::Builtin,
        ))
    }

    fn mapper(policy: ConflictPolicy) -> WindowMapper {
        let m = WindowMapper::new(None, table(), policy, Arc::new(LateWrites::new()));
        m.target.record(
            0,
            b"both".to_vec(),
            TargetKey {
                ts_us: 1,
                command: "\"SET\" \"both\" \"t\"".into(),
                addr: "10.0.0.9:1".into(),
            },
        );
        m
    }

    fn map(m: &WindowMapper, args: &[&str]) -> Vec<(u32, Argv)> {
        let mut out = Vec::new();
        m.map_command(0, Argv::from_args(args), &mut out).unwrap();
        out
    }

    #[test]
    fn unarmed_the_window_changes_nothing() {
        let m = mapper(ConflictPolicy::TargetWins);
        assert_eq!(map(&m, &["SET", "both", "s"]).len(), 1);
        assert!(m.conflicts().is_empty());
    }

    #[test]
    fn each_policy_does_what_it_says_with_a_conflict() {
        for (policy, sent, failed) in [
            (ConflictPolicy::Report, 1, false),
            (ConflictPolicy::TargetWins, 0, false),
            (ConflictPolicy::Fail, 0, true),
        ] {
            let m = mapper(policy);
            m.arm();
            assert_eq!(map(&m, &["SET", "both", "s"]).len(), sent, "{policy:?}");
            assert_eq!(map(&m, &["SET", "other", "s"]).len(), 1, "{policy:?}");
            assert_eq!(m.failed(), failed);
            let c = m.conflicts();
            assert_eq!(c.len(), 1, "{policy:?}");
            assert_eq!(c[0].key, "\"both\"");
            assert_eq!(c[0].target.addr, "10.0.0.9:1");
        }
    }

    #[test]
    fn a_target_write_after_the_late_source_write_is_a_conflict_too() {
        let late = Arc::new(LateWrites::new());
        let m = WindowMapper::new(None, table(), ConflictPolicy::Report, late.clone());
        late.arm();
        late.record(
            CommandTable::builtin(),
            &crate::capture::Peer::Tcp("10.0.0.1:2".parse().unwrap()),
            5,
            &[crate::journal::EntryKind::Write {
                db: 0,
                argv: Argv::from_args(["INCR", "n"]),
            }],
        );
        m.arm();
        assert_eq!(map(&m, &["INCR", "n"]).len(), 1);
        assert!(m.conflicts().is_empty());
        m.target.record(
            0,
            b"n".to_vec(),
            TargetKey {
                ts_us: 9,
                command: "\"INCR\" \"n\"".into(),
                addr: "10.0.0.3:4".into(),
            },
        );
        let c = m.conflicts();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].source.as_ref().unwrap().addr, "10.0.0.1:2");
        assert_eq!(c[0].resolution, "applied before the target's write");
    }
}
