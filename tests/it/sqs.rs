//! The SQS journal transport against a real moto server: FIFO round trip, duplicates and
//! reordering on a standard queue, gaps, redelivery after a crash, and an unreachable endpoint.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferry::command::Argv;
use ferry::journal::sqs::{SqsBatch, SqsError, SqsEvent, SqsQueue, SqsReader};
use ferry::journal::{Entry, EntryKind};

use crate::support::Moto;
use crate::support::moto::test_config;
use crate::support::server::free_port;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn entry(seq: u64) -> Entry {
    Entry {
        seq,
        ts_us: 1_700_000_000_000_000 + seq,
        kind: EntryKind::Write {
            db: 0,
            argv: Argv::from_args([
                b"SET".as_slice(),
                format!("key:{seq}").as_bytes(),
                &seq.to_le_bytes(),
            ]),
        },
    }
}

/// Entries `gseqs` of `group`, with global seqs that interleave the groups.
fn group_entries(group: u32, gseqs: std::ops::Range<u64>) -> Vec<Entry> {
    gseqs.map(|g| entry(g * 16 + u64::from(group))).collect()
}

/// Reads, acking every batch, until each group has `want[group]` entries and then `idle`
/// receives in a row bring nothing; returns the entries per group and every batch.
async fn read_all(
    r: &mut SqsReader,
    want: &BTreeMap<u32, u64>,
    idle: usize,
) -> (BTreeMap<u32, Vec<Entry>>, Vec<SqsBatch>) {
    let mut got: BTreeMap<u32, Vec<Entry>> = BTreeMap::new();
    let mut batches = Vec::new();
    let mut quiet = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "read_all timed out; got {:?}",
            counts(&got)
        );
        match r.next().await.expect("reader next") {
            Some(SqsEvent::Batch(b)) => {
                quiet = 0;
                let have = got.entry(b.group).or_default();
                assert_eq!(
                    b.first_gseq,
                    have.len() as u64,
                    "group {} out of order",
                    b.group
                );
                have.extend(b.entries.iter().cloned());
                r.ack(b.group, b.end_gseq() - 1);
                batches.push(b);
            }
            Some(other) => panic!("unexpected event {other:?}"),
            None => {
                let complete = want
                    .iter()
                    .all(|(g, n)| got.get(g).map_or(0, |v| v.len() as u64) >= *n);
                if complete {
                    quiet += 1;
                    if quiet >= idle {
                        break;
                    }
                }
            }
        }
    }
    r.commit().await.expect("commit");
    (got, batches)
}

fn counts(got: &BTreeMap<u32, Vec<Entry>>) -> BTreeMap<u32, usize> {
    got.iter().map(|(g, v)| (*g, v.len())).collect()
}

async fn assert_empty(q: &SqsQueue) {
    // moto updates its counts at once; a short retry covers the last delete racing the query.
    let mut stats = q.stats().await.expect("queue stats");
    for _ in 0..20 {
        if stats.visible == 0 && stats.in_flight == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        stats = q.stats().await.expect("queue stats");
    }
    panic!("queue not empty at the end: {stats:?}");
}

#[test]
fn sqs_fifo_round_trip_in_group_order_exactly_once() {
    let moto = Moto::start();
    rt().block_on(async {
        let q = SqsQueue::create(moto.config(""), "round-trip.fifo")
            .await
            .expect("create FIFO queue");
        assert!(q.config().is_fifo());
        let mut w = q.writer();
        let mut sent: BTreeMap<u32, Vec<Entry>> = BTreeMap::new();
        let started = Instant::now();
        // 50k entries in calls of 100, the groups taking turns, as a router would hand them.
        for block in 0..500u64 {
            let group = (block % 4) as u32;
            let next = w.next_gseq(group);
            let entries = group_entries(group, next..next + 100);
            let gseqs = w.send(group, &entries).await.expect("send");
            assert_eq!(gseqs, next..next + 100);
            sent.entry(group).or_default().extend(entries);
        }
        w.flush().await.expect("flush");
        let send_time = started.elapsed();
        for g in 0..4 {
            assert_eq!(w.acked_gseq(g), 12_500);
        }
        let ws = w.stats();
        assert_eq!(ws.entries, 50_000);
        let per_message = ws.entries / ws.messages_acked;
        assert!(per_message > 100, "only {per_message} entries per message");

        let mut r = q.reader([]);
        let want = (0..4).map(|g| (g, 12_500)).collect();
        let started = Instant::now();
        let (got, batches) = read_all(&mut r, &want, 2).await;
        assert_eq!(got, sent);
        assert!(batches.iter().all(|b| !b.redelivered));
        assert_eq!(r.checkpoint(), (0..4).map(|g| (g, 12_500)).collect());
        let rs = r.stats();
        assert_eq!(rs.deleted, ws.messages_acked);
        eprintln!(
            "sqs fifo: 50000 entries in {} messages ({per_message}/message, {} calls); \
             send {send_time:?}, receive {:?}",
            ws.messages_acked,
            ws.calls,
            started.elapsed()
        );
        assert_empty(&q).await;
    });
}

#[test]
fn sqs_standard_queue_drops_duplicates_and_reorders() {
    let moto = Moto::start();
    rt().block_on(async {
        let mut cfg = moto.config("");
        // Small messages, so that a few hundred entries make many of them.
        cfg.max_message_bytes = 4096;
        cfg.max_batch_bytes = 4096 * 10;
        cfg.gap_wait = Duration::from_secs(20);
        let q = SqsQueue::create(cfg, "dups").await.expect("create queue");
        assert!(!q.config().is_fifo());
        let mut w = q.writer();
        // Group 0: the later half first, then the first half, then an overlapping resend and
        // an exact resend.
        w.set_next_gseq(0, 200);
        w.send(0, &group_entries(0, 200..400)).await.unwrap();
        w.flush().await.unwrap();
        w.set_next_gseq(0, 0);
        w.send(0, &group_entries(0, 0..200)).await.unwrap();
        w.flush().await.unwrap();
        w.set_next_gseq(0, 100);
        w.send(0, &group_entries(0, 100..300)).await.unwrap();
        w.set_next_gseq(0, 0);
        w.send(0, &group_entries(0, 0..200)).await.unwrap();
        // Group 1: everything twice.
        w.send(1, &group_entries(1, 0..300)).await.unwrap();
        w.set_next_gseq(1, 0);
        w.send(1, &group_entries(1, 0..300)).await.unwrap();
        w.flush().await.unwrap();
        assert!(w.stats().messages_acked > 10, "{:?}", w.stats());

        let mut r = q.reader([]);
        let want = BTreeMap::from([(0, 400), (1, 300)]);
        let (got, _) = read_all(&mut r, &want, 3).await;
        assert_eq!(got[&0], group_entries(0, 0..400));
        assert_eq!(got[&1], group_entries(1, 0..300));
        let rs = r.stats();
        assert!(rs.duplicates > 0, "{rs:?}");
        assert_eq!(rs.gaps, 0);
        assert_eq!(rs.deleted, rs.messages);
        assert_empty(&q).await;
    });
}

#[test]
fn sqs_gap_that_never_fills_is_reported_after_the_wait() {
    let moto = Moto::start();
    rt().block_on(async {
        let q = SqsQueue::create(moto.config(""), "gap").await.unwrap();
        let gap_wait = q.config().gap_wait;
        let mut w = q.writer();
        w.send(5, &group_entries(5, 0..10)).await.unwrap();
        w.set_next_gseq(5, 20);
        w.send(5, &group_entries(5, 20..30)).await.unwrap();
        w.flush().await.unwrap();

        let mut r = q.reader([(5, 0)]);
        let mut events = Vec::new();
        let started = Instant::now();
        while events.len() < 3 {
            assert!(started.elapsed() < Duration::from_secs(15), "{events:?}");
            if let Some(e) = r.next().await.unwrap() {
                if let SqsEvent::Batch(b) = &e {
                    r.ack(b.group, b.end_gseq() - 1);
                }
                events.push((e, started.elapsed()));
            }
        }
        let SqsEvent::Batch(first) = &events[0].0 else {
            panic!("{events:?}")
        };
        assert_eq!((first.first_gseq, first.entries.len()), (0, 10));
        assert_eq!(
            events[1].0,
            SqsEvent::Gap {
                group: 5,
                expected_gseq: 10,
                got_gseq: 20
            }
        );
        assert!(
            events[1].1 >= gap_wait,
            "gap reported after {:?}",
            events[1].1
        );
        let SqsEvent::Batch(last) = &events[2].0 else {
            panic!("{events:?}")
        };
        assert_eq!(last.entries, group_entries(5, 20..30));
        assert_eq!(last.first_gseq, 20);
        r.commit().await.unwrap();
        assert_empty(&q).await;
    });
}

#[test]
fn sqs_unacked_batch_comes_back_flagged_redelivered() {
    let moto = Moto::start();
    rt().block_on(async {
        let mut cfg = moto.config("");
        cfg.visibility_timeout = Duration::from_secs(1);
        let q = SqsQueue::create(cfg, "redeliver").await.unwrap();
        let mut w = q.writer();
        w.send(2, &group_entries(2, 0..10)).await.unwrap();
        w.flush().await.unwrap();

        let first = next_batch(&mut q.reader([])).await;
        assert!(!first.redelivered);
        // The reader was dropped without an ack: a crashed worker.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let mut r = q.reader([]);
        let again = next_batch(&mut r).await;
        assert!(again.redelivered);
        assert_eq!((again.group, again.first_gseq), (2, 0));
        assert_eq!(again.entries, first.entries);
        r.ack(2, 9);
        r.commit().await.unwrap();
        assert_empty(&q).await;
    });
}

async fn next_batch(r: &mut SqsReader) -> SqsBatch {
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(10), "no batch");
        match r.next().await.unwrap() {
            Some(SqsEvent::Batch(b)) => return b,
            Some(other) => panic!("unexpected {other:?}"),
            None => {}
        }
    }
}

#[test]
fn sqs_unreachable_endpoint_is_a_typed_error() {
    // Nothing listens on a port we just probed free.
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let queue_url = format!("{endpoint}/000000000000/nowhere");
    rt().block_on(async {
        let q = SqsQueue::connect(test_config(&queue_url, &endpoint))
            .await
            .expect("connect makes no call");
        let started = Instant::now();
        let mut w = q.writer();
        w.send(0, &group_entries(0, 0..3)).await.unwrap();
        let err = w.flush().await.expect_err("flush must fail");
        assert!(matches!(err, SqsError::Unreachable { .. }), "{err:?}");
        // The cause is in the message, not just "dispatch failure".
        assert!(err.to_string().len() > 60, "{err}");
        let err = q.reader([]).next().await.expect_err("receive must fail");
        assert!(matches!(err, SqsError::Unreachable { .. }), "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    });
}
