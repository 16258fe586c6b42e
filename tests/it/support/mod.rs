//! Shared integration-test fixtures: real redis-server processes, clusters, a dataset filler
//! and the oracle that compares two datasets.
#![allow(dead_code)]

pub mod cluster;
pub mod fill;
pub mod oracle;
pub mod server;
pub mod workload;

pub use cluster::Cluster;
pub use fill::{Dataset, FillReport, fill, fill_cluster};
pub use oracle::{Diff, DiffKind, OracleOptions, OracleReport, compare, compare_nodes};
pub use server::{RedisServer, ServerOptions};
pub use workload::{Workload, WorkloadOptions, WorkloadReport};
