//! Integration tests: one binary, one module per area, real redis-server processes.

pub mod support;

mod cli;
mod command_table;
mod fixtures;
mod parser;
mod snapshot;
