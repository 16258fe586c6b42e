//! ferry moves a live Redis dataset from one server to another with zero downtime, exactly.
//!
//! # Architecture
//!
//! ```text
//!             source (primary or replica)
//!       MONITOR │            │ SCAN, MULTI{DUMP, PEXPIRETIME}   (fenced reads)
//!               ▼            ▼
//!    capture ──► journal ──► stitch/route ──► replay shards ──► target
//!    (parse,      (disk │    (fences → restore,  (ordered per slot,
//!     classify)    SQS)       dirty → re-copy)    pipelined)
//!                                    ▲
//!         snapshot workers ──────────┘ payloads keyed by fence
//!         verify / cutover ── fenced reads at the same stream position on both sides
//! ```
//!
//! # Layout
//!
//! Modules are layered: each uses only modules listed before it (the architecture test in
//! `tests/it/architecture.rs` holds the same order, and `docs/architecture.md` explains it).
//!
//! - [`clock`], [`escape`]: wall-clock time as Redis counts it; Redis's argument quoting.
//! - [`command`]: the command model: [`command::Argv`], the table from the server's own
//!   `COMMAND` (or the built-in Redis 7.0 table), classification, key extraction, and the
//!   [`command::Mapper`] seam through which a plan renames and filters commands and keys.
//! - [`net`]: Redis URLs (redacted in every message) and their TLS settings
//!   ([`net::TlsOptions`]: CA bundle, client certificate, server name), the one path that opens
//!   every connection (TCP or unix socket, rustls, `AUTH`), control connections through
//!   redis-rs, raw RESP connections and the line framing of a `MONITOR` stream; a Redis
//!   Cluster's topology ([`net::cluster::Topology`]), found from any node, and the nodes a
//!   source is read through ([`net::SourceNodes`]: the server, or one node per shard of a
//!   cluster, each with its own `MONITOR` stream and fences).
//! - [`journal`]: the stream's vocabulary ([`journal::EntryKind`], [`journal::Marker`]) and
//!   the embedded journal: segmented, checksummed, fsynced files that readers tail; behind the
//!   default `sqs` feature, `journal::sqs`, the SQS transport between processes.
//! - [`capture`]: the byte-exact `MONITOR` parser ([`capture::parse_line`]), grouping into
//!   journal entries, and the live capture task ([`capture::Capture`]).
//! - [`snapshot`]: parallel fenced `SCAN` + `DUMP` → `RESTORE` ([`snapshot::Snapshotter`]),
//!   type-aware chunks for big keys, and the live side (payload store, re-copier).
//! - [`backup`]: [`backup::Backup`] writes the source as an RDB file from `DUMP` payloads, for
//!   sources that cannot `SAVE` (ElastiCache): the rollback copy of a cutover.
//! - [`replay`]: the stitcher ([`replay::Stitcher`]: fences, dirty keys, rewrites for exact
//!   replay) producing [`replay::Op`]s, the pipelined sharded replayer, and `replay::remote`
//!   (publishing to SQS and applying from it in other processes). Toward a cluster target,
//!   one connection per primary, routed by slot, following `MOVED` and `ASK` (docs/cluster.md).
//! - [`verify`]: both-direction key comparison ([`verify::Verifier`]) and the fenced
//!   comparison inside a running migration ([`verify::FencedVerifier`]).
//! - [`plan`]: Lua plans evaluated once, in a sandbox, into a plain [`plan::Plan`] with opaque
//!   hooks, and the plan behind the seams of the stages ([`plan::PlanMapper`],
//!   [`plan::PlanRules`]). `mlua` never leaves this module.
//! - [`migration`]: [`migration::Migration`] wires the stages into a live migration (the
//!   coordinator, markers, evictions, the final fence, the switch and the reverse sync);
//!   [`migration::PlanRunner`] drives one through a plan's phases to an
//!   [`migration::Outcome`].
//! - [`observe`]: a run seen from outside: [`observe::Observer`] samples it every second
//!   into the status file (`ferry status`), the Prometheus metrics and the run report
//!   (`report.json`, `report.html` with inline SVG charts).
//!
//! The binary (`src/cli/`) parses arguments, calls the library, prints, and maps outcomes to
//! exit codes: 0 done, 1 differences found, 2 error.
//!
//! # Units that flow
//!
//! - [`command::Argv`]: a command's arguments as bytes, never strings; keys are binary.
//! - [`capture::MonitorLine`]: `{ ts_us, db, peer, argv }`, one per `MONITOR` line, in the
//!   source's single execution order.
//! - [`journal::EntryKind`]: what capture makes of the lines, in that order: a write, an atomic
//!   group, a key fence (a snapshot read at its position), a payload, a [`journal::Marker`], a
//!   gap. Journaled on disk or carried by SQS, read by the stitcher.
//! - [`journal::Marker`]: a position ferry placed in the stream (`ECHO` on the source): named
//!   positions the coordinator waits for, snapshot done, dirty keys, re-copy requests.
//! - [`replay::Op`]: what the stitcher hands to replay, per key in order: a command, an atomic
//!   group, a restore of a key copy (payload, absolute expiry), a barrier, a fenced check.
//! - Key copies: `DUMP` payloads with their absolute expiry, read by fenced reads and matched
//!   to their fence by `(read id, ordinal)`.

pub mod backup;
pub mod capture;
pub mod clock;
pub mod command;
pub mod escape;
pub mod journal;
pub mod migration;
pub mod net;
pub mod observe;
pub mod plan;
pub mod replay;
pub mod snapshot;
pub mod verify;
