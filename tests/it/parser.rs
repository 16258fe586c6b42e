//! The MONITOR parser against a real server: whatever bytes a client sends come back out of
//! ferry's parser byte for byte, and IPv6 and unix-socket clients come out as the right peers;
//! and no input, however broken, makes the parser panic or point past the line in its error.

use std::net::SocketAddr;
use std::time::Duration;

use ferry::capture::{MonitorStream, Peer, parse_line};
use ferry::net::Endpoint;
use proptest::prelude::*;
use rand::{RngExt, SeedableRng};

use crate::support::{RedisServer, ServerOptions};

/// Sends `commands` from one client while ferry monitors, and returns what ferry parsed from
/// that client's lines (the name upper-cased by the parser).
fn roundtrip(server: &RedisServer, commands: &[Vec<Vec<u8>>]) -> Vec<(u32, Vec<Vec<u8>>)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ep = Endpoint::parse(&server.url()).unwrap();
        let mut stream = MonitorStream::start(&ep).await.unwrap();
        let client = server.client();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let (me,): (String,) = redis::pipe()
            .cmd("CLIENT")
            .arg("INFO")
            .query_async(&mut con)
            .await
            .unwrap();
        let addr = me
            .split(' ')
            .find_map(|f| f.strip_prefix("addr="))
            .unwrap()
            .parse()
            .unwrap();
        for c in commands {
            let mut cmd = redis::cmd(std::str::from_utf8(&c[0]).unwrap());
            for a in &c[1..] {
                cmd.arg(a.as_slice());
            }
            let _: redis::Value = cmd.query_async(&mut con).await.unwrap();
        }
        redis::cmd("ECHO")
            .arg("ferry-test-end")
            .query_async::<()>(&mut con)
            .await
            .unwrap();
        let mut got = Vec::new();
        loop {
            let line = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("MONITOR went quiet")
                .unwrap()
                .expect("MONITOR closed");
            if line.peer != Peer::Tcp(addr) {
                continue;
            }
            let args: Vec<Vec<u8>> = line.argv.iter().map(<[u8]>::to_vec).collect();
            if args == [b"ECHO".to_vec(), b"ferry-test-end".to_vec()] {
                break;
            }
            if args[0] == b"CLIENT" {
                continue;
            }
            got.push((line.db, args));
        }
        got
    })
}

/// Whether this machine can listen on IPv6 loopback (containers often have no `::1`).
fn ipv6_loopback_available() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// Peers as real MONITOR output names them, not as hand-written lines do: an IPv6 client shows
/// as `[::1]:port`, a unix-socket client as `unix:<the server's socket path>`.
#[test]
fn ipv6_and_unix_socket_peers_from_a_real_server() {
    if !ipv6_loopback_available() {
        eprintln!("skipped: ::1 cannot be bound on this machine");
        return;
    }
    let server = RedisServer::start_with(ServerOptions {
        unix_socket: true,
        // Appended last, so it replaces the fixture's `bind 127.0.0.1`.
        extra_config: vec!["bind 127.0.0.1 ::1".into()],
        ..ServerOptions::default()
    });
    let socket = server.unix_socket_path().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ep = Endpoint::parse(&server.url()).unwrap();
        let mut stream = MonitorStream::start(&ep).await.unwrap();

        let v6_url = format!("redis://[::1]:{}", server.port());
        let v6 = redis::Client::open(v6_url.as_str()).unwrap();
        let mut v6 = v6.get_multiplexed_async_connection().await.unwrap();
        let info: String = redis::cmd("CLIENT")
            .arg("INFO")
            .query_async(&mut v6)
            .await
            .unwrap();
        let v6_addr: SocketAddr = info
            .split(' ')
            .find_map(|f| f.strip_prefix("addr="))
            .unwrap()
            .parse()
            .unwrap();
        assert!(v6_addr.is_ipv6() && v6_addr.ip().is_loopback(), "{v6_addr}");
        redis::cmd("SET")
            .arg("over-v6")
            .arg("1")
            .query_async::<()>(&mut v6)
            .await
            .unwrap();

        let unix = redis::Client::open(server.unix_url().unwrap()).unwrap();
        let mut unix = unix.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("SET")
            .arg("over-unix")
            .arg("1")
            .query_async::<()>(&mut unix)
            .await
            .unwrap();
        // The unix client sends the end marker too: its lines follow its SET on the stream.
        redis::cmd("ECHO")
            .arg("ferry-test-end")
            .query_async::<()>(&mut unix)
            .await
            .unwrap();

        let (mut v6_peer, mut unix_peer) = (None, None);
        loop {
            let line = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("MONITOR went quiet")
                .unwrap()
                .expect("MONITOR closed");
            match line.argv.iter().collect::<Vec<_>>()[..] {
                [b"SET", b"over-v6", _] => v6_peer = Some(line.peer.clone()),
                [b"SET", b"over-unix", _] => unix_peer = Some(line.peer.clone()),
                [b"ECHO", b"ferry-test-end"] => break,
                _ => {}
            }
        }
        assert_eq!(v6_peer, Some(Peer::Tcp(v6_addr)));
        let path = socket.as_os_str().as_encoded_bytes();
        assert_eq!(unix_peer, Some(Peer::Unix(path.into())));
    });
}

fn upper_name(mut c: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    c[0].make_ascii_uppercase();
    c
}

#[test]
fn every_byte_value_round_trips_through_monitor() {
    let server = RedisServer::start();
    let all: Vec<u8> = (0..=255u8).collect();
    let mut commands = vec![vec![b"SET".to_vec(), all.clone(), all.clone()]];
    for b in 0..=255u8 {
        commands.push(vec![
            b"set".to_vec(),
            vec![b'k', b],
            vec![b, b'"', b'\\', b, b' ', b],
        ]);
    }
    commands.push(vec![b"SET".to_vec(), b"empty".to_vec(), Vec::new()]);
    commands.push(vec![
        b"SET".to_vec(),
        b"big".to_vec(),
        vec![0xff; 1_000_000],
    ]);
    let got = roundtrip(&server, &commands);
    let want: Vec<_> = commands.into_iter().map(|c| (0, upper_name(c))).collect();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w);
    }
}

#[test]
fn random_binary_argv_round_trips_through_monitor() {
    let server = RedisServer::start();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut commands = Vec::new();
    for i in 0..400 {
        let n = rng.random_range(1..8);
        let mut c = vec![b"RPUSH".to_vec(), format!("list:{i}").into_bytes()];
        for _ in 0..n {
            let len = rng.random_range(0..300);
            c.push((0..len).map(|_| rng.random::<u8>()).collect());
        }
        commands.push(c);
    }
    // A db switch shows in the header of the lines that follow it.
    commands.push(vec![b"SELECT".to_vec(), b"7".to_vec()]);
    commands.push(vec![b"SET".to_vec(), b"\x00in7".to_vec(), b"\r\n".to_vec()]);
    let got = roundtrip(&server, &commands);
    assert_eq!(got.len(), commands.len());
    for (i, ((db, args), want)) in got.into_iter().zip(commands).enumerate() {
        assert_eq!(args, want, "command {i}");
        assert_eq!(db, if i >= 400 { 7 } else { 0 });
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parser_never_panics_on_arbitrary_bytes(line in proptest::collection::vec(any::<u8>(), 0..200)) {
        check_error_offset(&line)?;
    }

    /// Quoting is exactly invertible, and the decoder consumes exactly the quoted text.
    #[test]
    fn unquote_inverts_quote(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let quoted = ferry::escape::quote(&bytes);
        prop_assert_eq!(ferry::escape::unquote(quoted.as_bytes()), Ok(bytes.clone()));
        let mut out = Vec::new();
        let used = ferry::escape::unquote_into(quoted.as_bytes(), &mut out);
        prop_assert_eq!(used, Ok(quoted.len()));
        prop_assert_eq!(out, bytes);
    }

    #[test]
    fn parser_never_panics_on_near_valid_lines(
        args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 1..6),
        cut in 0usize..400,
        flip in any::<(usize, u8)>(),
    ) {
        let mut line = b"+1795657696.408581 [0 [::1]:5] ".to_vec();
        for (i, a) in args.iter().enumerate() {
            if i > 0 { line.push(b' '); }
            ferry::escape::quote_into(&mut line, a);
        }
        // The intact line parses to exactly the arguments (name upper-cased).
        let parsed = parse_line(&line).unwrap();
        let mut want = args.clone();
        want[0].make_ascii_uppercase();
        prop_assert_eq!(parsed.argv.iter().map(<[u8]>::to_vec).collect::<Vec<_>>(), want);
        // Damaged copies must not panic.
        let mut damaged = line.clone();
        let at = flip.0 % damaged.len();
        damaged[at] = flip.1;
        check_error_offset(&damaged)?;
        check_error_offset(&line[..cut.min(line.len())])?;
    }
}

/// Parses `line` (which must not panic) and, when it is rejected, checks that the error points
/// inside the line or just past its end.
fn check_error_offset(line: &[u8]) -> Result<(), TestCaseError> {
    if let Err(e) = parse_line(line) {
        prop_assert!(
            e.offset <= line.len(),
            "offset {} past the end of a {}-byte line ({e}): {:?}",
            e.offset,
            line.len(),
            String::from_utf8_lossy(line)
        );
    }
    Ok(())
}
