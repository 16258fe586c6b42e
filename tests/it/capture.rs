//! Capture against real servers: the output-buffer guard trips on a stalled MONITOR reader
//! before the source has to hold much of the stream for it.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use ferry::capture::{CaptureConfig, PeerRegistry, watch_output_buffer};
use ferry::net::Endpoint;

use crate::support::RedisServer;

#[test]
fn output_buffer_guard_trips_on_a_stalled_monitor_reader() {
    let server = RedisServer::start();
    // A MONITOR client that never reads: the source buffers the stream for it.
    let mut stalled = std::net::TcpStream::connect(server.addr()).unwrap();
    stalled
        .write_all(b"CLIENT SETNAME stalled\r\nCLIENT ID\r\nMONITOR\r\n")
        .unwrap();
    let mut first = [0u8; 64];
    let n = stalled.read(&mut first).unwrap();
    let id: i64 = String::from_utf8_lossy(&first[..n])
        .lines()
        .find_map(|l| l.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .expect("CLIENT ID reply");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ep = Endpoint::parse(&server.url()).unwrap();
    let mut cfg = CaptureConfig::default();
    cfg.omem_limit = 2 << 20;
    cfg.guard_every = Duration::from_millis(50);
    let guard =
        rt.spawn(async move { watch_output_buffer(&ep, &PeerRegistry::new(), id, &cfg).await });

    // Load: big values make the monitor's buffer grow fast.
    let mut con = server.conn();
    let value = vec![b'x'; 64 * 1024];
    let started = Instant::now();
    while !guard.is_finished() && started.elapsed() < Duration::from_secs(20) {
        let _: () = redis::cmd("SET")
            .arg("k")
            .arg(&value)
            .query(&mut con)
            .unwrap();
    }
    let reason = rt.block_on(guard).unwrap().expect("the guard should trip");
    assert!(
        reason.contains("buffered") && reason.contains("limit 2 MB"),
        "{reason}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}
