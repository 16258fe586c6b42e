//! Shared integration-test fixtures: real redis-server processes, clusters, a dataset filler,
//! the oracle that compares two datasets, a RESP proxy that rejects `RESTORE`, and moto (a
//! local SQS).
#![allow(dead_code)]

pub mod cluster;
pub mod engines;
pub mod fill;
#[cfg(feature = "sqs")]
pub mod moto;
pub mod oracle;
pub mod proxy;
pub mod server;
pub mod tls;
pub mod workload;

pub use cluster::Cluster;
pub use engines::{Engine, Feature};
pub use fill::{Dataset, FillReport, fill, fill_cluster};
#[cfg(feature = "sqs")]
pub use moto::Moto;
pub use oracle::{
    Diff, DiffKind, OracleOptions, OracleReport, cluster_primaries, compare, compare_any,
    compare_clusters, compare_from_cluster, compare_nodes, compare_to_cluster, keyspace_nodes,
};
pub use proxy::RespProxy;
pub use server::{RedisServer, ServerOptions};
pub use workload::{Workload, WorkloadOptions, WorkloadReport};
