//! Integration tests: one binary, one module per area, real redis-server processes.

pub mod support;

mod acl;
mod architecture;
mod backup;
mod blocked;
mod capture;
mod chunked;
mod cli;
mod cluster;
mod cluster_live;
mod cluster_source;
mod command_table;
mod cutover;
mod engines;
mod evictions;
mod expiry;
mod fieldttl;
mod fixtures;
mod functions;
mod journal;
mod migrate;
mod observe;
mod parser;
mod plan;
mod preflight;
mod rewrite;
mod run;
mod runbook;
mod snapshot;
#[cfg(feature = "sqs")]
mod split;
#[cfg(feature = "sqs")]
mod sqs;
mod tls;
mod troubleshooting;
mod verify;
mod verify_live;
mod window;
mod workload;
