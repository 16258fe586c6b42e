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
//! - [`net`]: Redis URLs (redacted in every message), control connections through redis-rs, and
//!   raw RESP connections for `MONITOR`.
//! - [`capture`]: the byte-exact `MONITOR` parser ([`capture::parse_line`]) and the live stream
//!   ([`capture::MonitorStream`]).
//! - [`command`]: the command table from the server's own `COMMAND` (or the built-in Redis 7.0
//!   table): classification ([`command::Class`]) and key extraction ([`command::KeyRef`]) that
//!   match `COMMAND GETKEYSANDFLAGS`.
//! - [`cutover`]: the end of a migration: [`cutover::Fenced`] holds the source paused at the
//!   final fence for the switch, starts the reverse sync and releases the pause without letting
//!   held writes run on the old source; [`cutover::Backup`] writes the source as an RDB file
//!   from `DUMP` payloads, for sources that cannot `SAVE` (ElastiCache).
//! - [`clock`]: wall-clock milliseconds and microseconds, as Redis counts them.
//! - [`escape`]: Redis's argument quoting, both ways.
//! - [`journal`]: the embedded journal: segmented, checksummed, fsynced files that readers tail;
//!   and, behind the default `sqs` feature, `journal::sqs`: the SQS transport between separate
//!   capture and replay processes (per-shard ordered, exactly-once delivery on top of SQS).
//! - [`plan`]: Lua migration plans evaluated once, in a sandbox, into a plain [`plan::Plan`]
//!   with opaque hooks; key globs, rewrite rules ([`plan::apply_rules`]) and `ferry check`.
//! - [`pipeline`]: [`pipeline::Migration`] wires capture → journal → stitcher → replay with the
//!   live snapshot, the re-copier, the fenced verifier and the final fence.
//! - [`replay`]: the stitcher (fences, dirty keys, rewrites for exact replay), the pipelined
//!   sharded replayer, and `replay::remote`: publishing to SQS (`ferry capture`) and applying
//!   from it in other processes (`ferry replay`).
//! - [`snapshot`]: parallel fenced `SCAN` + `DUMP` → `RESTORE`, type-aware chunks for big keys.
//! - [`verify`]: both-direction key comparison (DUMP shortcut, type-aware digests, re-checks),
//!   and [`verify::FencedVerifier`]: source and target read at the same stream position inside
//!   a running migration.
//!
//! # Units that flow
//!
//! - [`command::Argv`]: a command's arguments as bytes, never strings; keys are binary.
//! - [`capture::MonitorLine`]: `{ ts_us, db, peer, argv }`, one per `MONITOR` line, in the
//!   source's single execution order.

pub mod capture;
pub mod clock;
pub mod command;
pub mod cutover;
pub mod escape;
pub mod journal;
pub mod net;
pub mod pipeline;
pub mod plan;
pub mod replay;
pub mod snapshot;
pub mod verify;
