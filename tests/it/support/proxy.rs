//! Owns [`RespProxy`]: a thread-based TCP proxy in front of a real redis-server that answers
//! every `RESTORE` as a server of an older version does, and forwards everything else.
//!
//! ## Behavior
//! - Requests are parsed as RESP (arrays of bulk strings, or inline commands). A `RESTORE` is
//!   not forwarded; its reply is `-ERR DUMP payload version or checksum are wrong`, the one text
//!   Redis gives for a payload of a newer RDB version (docs/redis-behaviour.md §9). Every other request goes
//!   upstream byte for byte.
//! - Pipelining keeps its order: per connection the request thread queues one item per request
//!   (forwarded, or an injected reply), and the reply thread answers the items in that order,
//!   parsing exactly one upstream reply per forwarded request (RESP2 and RESP3 types).
//! - Not supported, because ferry's snapshot never does it: `RESTORE` inside `MULTI` (the
//!   injected error would be answered at once instead of at `EXEC`), and RESP3 push messages
//!   (pub/sub, client tracking), which are not replies to a request.

use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::RedisServer;

/// What a server that cannot read a payload's RDB version answers to `RESTORE`.
pub const VERSION_REJECTED: &[u8] = b"-ERR DUMP payload version or checksum are wrong\r\n";

/// One request's place in the reply order.
enum Item {
    /// Forwarded upstream: pass on the next upstream reply.
    Forwarded,
    /// Answered by the proxy with these bytes.
    Injected(&'static [u8]),
}

#[derive(Default)]
struct Counters {
    rejected: AtomicU64,
    forwarded: AtomicU64,
}

/// A proxy listening on a free loopback port; stopped, and its connections closed, on drop.
pub struct RespProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    /// Every socket the proxy holds, so that drop can unblock the threads reading them.
    sockets: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl RespProxy {
    /// A proxy in front of `upstream` that rejects every `RESTORE` as a version mismatch.
    pub fn rejecting_restore(upstream: &RedisServer) -> RespProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let upstream_addr = upstream.addr();
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let sockets = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (stop, counters, sockets) = (stop.clone(), counters.clone(), sockets.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(&upstream_addr) else {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    if let (Ok(mut s), Ok(c), Ok(s2)) =
                        (sockets.lock(), client.try_clone(), server.try_clone())
                    {
                        s.push(c);
                        s.push(s2);
                    }
                    serve(client, server, counters.clone());
                }
            })
        };
        RespProxy {
            port,
            stop,
            counters,
            sockets,
            accept: Some(accept),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `RESTORE` requests answered with [`VERSION_REJECTED`].
    pub fn rejected(&self) -> u64 {
        self.counters.rejected.load(Ordering::SeqCst)
    }

    /// Requests forwarded upstream.
    pub fn forwarded(&self) -> u64 {
        self.counters.forwarded.load(Ordering::SeqCst)
    }
}

impl Drop for RespProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        if let Ok(sockets) = self.sockets.lock() {
            for s in sockets.iter() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Runs one client connection on two threads: requests one way, replies the other.
fn serve(client: TcpStream, server: TcpStream, counters: Arc<Counters>) {
    let (Ok(client_out), Ok(server_in)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    // Either side ending ends the connection: a client waiting for replies must see EOF, not
    // hang on a socket the proxy's bookkeeping still holds open.
    let pair = Arc::new((c, s));
    let close = |pair: &(TcpStream, TcpStream)| {
        let _ = pair.0.shutdown(Shutdown::Both);
        let _ = pair.1.shutdown(Shutdown::Both);
    };
    let (tx, rx) = mpsc::channel::<Item>();
    let pair2 = pair.clone();
    std::thread::spawn(move || {
        let _ = requests(client, server, tx, &counters);
        close(&pair);
    });
    std::thread::spawn(move || {
        if replies(server_in, client_out, rx).is_err() {
            close(&pair2);
        }
    });
}

/// Reads requests from the client and forwards or answers each, queueing its place in order.
fn requests(
    client: TcpStream,
    server: TcpStream,
    order: mpsc::Sender<Item>,
    counters: &Counters,
) -> io::Result<()> {
    let mut from_client = BufReader::new(client);
    let mut to_server = BufWriter::new(server);
    loop {
        // Flush before a read could block, so a pipeline goes upstream as it arrived.
        if from_client.buffer().is_empty() {
            to_server.flush()?;
        }
        let Some((raw, name)) = read_request(&mut from_client)? else {
            to_server.flush()?;
            return Ok(());
        };
        if name.eq_ignore_ascii_case(b"RESTORE") {
            counters.rejected.fetch_add(1, Ordering::SeqCst);
            order.send(Item::Injected(VERSION_REJECTED)).ok();
        } else {
            counters.forwarded.fetch_add(1, Ordering::SeqCst);
            to_server.write_all(&raw)?;
            order.send(Item::Forwarded).ok();
        }
    }
}

/// Answers the queued items in order: an injected reply, or the next whole upstream reply.
fn replies(server: TcpStream, client: TcpStream, order: mpsc::Receiver<Item>) -> io::Result<()> {
    let mut from_server = BufReader::new(server);
    let mut to_client = BufWriter::new(client);
    let mut reply = Vec::new();
    loop {
        let item = match order.try_recv() {
            Ok(item) => item,
            Err(mpsc::TryRecvError::Empty) => {
                // Nothing more queued yet: what is buffered must reach the client now.
                to_client.flush()?;
                match order.recv() {
                    Ok(item) => item,
                    Err(_) => return Ok(()),
                }
            }
            Err(mpsc::TryRecvError::Disconnected) => return to_client.flush(),
        };
        match item {
            Item::Injected(bytes) => to_client.write_all(bytes)?,
            Item::Forwarded => {
                reply.clear();
                copy_value(&mut from_server, &mut reply)?;
                to_client.write_all(&reply)?;
            }
        }
    }
}

/// One request's bytes and command name; `None` at a clean end of stream.
fn read_request(r: &mut impl BufRead) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut raw = Vec::new();
    if r.read_until(b'\n', &mut raw)? == 0 {
        return Ok(None);
    }
    if raw[0] != b'*' {
        // Inline command: the line is the request.
        let name = raw
            .split(|b| b.is_ascii_whitespace())
            .find(|w| !w.is_empty())
            .unwrap_or_default()
            .to_vec();
        return Ok(Some((raw, name)));
    }
    let n = number(&raw)?;
    let mut name = Vec::new();
    for i in 0..n.max(0) {
        let start = raw.len();
        read_line(r, &mut raw)?;
        if raw[start] != b'$' {
            return Err(bad("a request element is not a bulk string"));
        }
        let len = number(&raw[start..])?;
        let data = raw.len();
        read_exact(r, &mut raw, len as usize + 2)?;
        if i == 0 {
            name = raw[data..raw.len() - 2].to_vec();
        }
    }
    Ok(Some((raw, name)))
}

/// Copies one whole RESP2/RESP3 value from `r` to `out`.
fn copy_value(r: &mut impl BufRead, out: &mut Vec<u8>) -> io::Result<()> {
    let start = out.len();
    read_line(r, out)?;
    let kind = out[start];
    match kind {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Ok(()),
        b'$' | b'!' | b'=' => {
            let len = number(&out[start..])?;
            if len >= 0 {
                read_exact(r, out, len as usize + 2)?;
            }
            Ok(())
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let n = number(&out[start..])?;
            let items = if matches!(kind, b'%' | b'|') {
                2 * n
            } else {
                n
            };
            for _ in 0..items.max(0) {
                copy_value(r, out)?;
            }
            // An attribute map comes before the value it describes.
            if kind == b'|' {
                copy_value(r, out)?;
            }
            Ok(())
        }
        other => Err(bad(&format!("unknown RESP type byte {other:#04x}"))),
    }
}

fn read_line(r: &mut impl BufRead, out: &mut Vec<u8>) -> io::Result<()> {
    let start = out.len();
    if r.read_until(b'\n', out)? == 0 || !out[start..].ends_with(b"\r\n") {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

fn read_exact(r: &mut impl BufRead, out: &mut Vec<u8>, n: usize) -> io::Result<()> {
    let start = out.len();
    out.resize(start + n, 0);
    r.read_exact(&mut out[start..])
}

/// The number after the type byte of a `<type><number>\r\n` line.
fn number(line: &[u8]) -> io::Result<i64> {
    let end = line.iter().position(|&b| b == b'\r').unwrap_or(line.len());
    std::str::from_utf8(&line[1..end])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad length"))
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}
