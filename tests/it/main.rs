//! Integration tests: one binary, one module per area, real redis-server processes.

pub mod support;

mod chunked;
mod cli;
mod command_table;
mod fixtures;
mod journal;
mod parser;
mod snapshot;
mod workload;
