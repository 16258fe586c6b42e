//! Capture: reading the source's `MONITOR` stream byte-exactly and turning it into parsed,
//! classified commands.
//!
//! Neighbours: [`crate::net`] opens the raw connection; [`crate::command`] classifies what is
//! parsed here. The journal (later stages) receives what capture produces.

mod blocked;
mod group;
mod late;
mod monitor;
pub mod parse;
mod task;

pub use group::{Grouper, PeerRegistry, Role};
pub use late::{
    ClientTally, LateKey, LateSummary, LateWrites, MAX_LATE_KEYS, peer_addr, short_command,
};
pub use monitor::{CaptureError, MonitorStream};
pub use parse::{MonitorLine, ParseError, ParseErrorKind, Peer, parse_line, parse_line_into};
pub use task::{
    Capture, CaptureConfig, CaptureHandle, CaptureSet, CaptureSink, DEFAULT_OMEM_LIMIT,
    watch_output_buffer,
};
