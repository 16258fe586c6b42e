//! The embedded journal on real files: round trips, rotation, waiting readers, crash recovery,
//! retention, concurrent appenders and throughput.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry::command::Argv;
use ferry::journal::{
    Entry, EntryKind, FsyncPolicy, Journal, JournalConfig, JournalError, JournalReader,
};

fn config(dir: &Path, segment_bytes: u64) -> JournalConfig {
    let mut cfg = JournalConfig::new(dir);
    cfg.segment_bytes = segment_bytes;
    cfg.fsync = FsyncPolicy::Never;
    cfg
}

fn write(i: u64) -> EntryKind {
    EntryKind::Write {
        db: (i % 16) as u32,
        argv: Argv::from_args([
            b"SET".as_slice(),
            format!("key:{i}").as_bytes(),
            &i.to_le_bytes(),
        ]),
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

fn read_all(reader: &mut JournalReader) -> Vec<Entry> {
    let mut out = Vec::new();
    while let Some(e) = reader.try_next().unwrap() {
        out.push(e);
    }
    out
}

fn every_kind() -> Vec<EntryKind> {
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    vec![
        EntryKind::Write {
            db: 0,
            argv: Argv::from_args([b"SET".as_slice(), &all_bytes, b"", b"\r\n\0"]),
        },
        EntryKind::Atomic(vec![
            (3, Argv::from_args(["INCR", "k"])),
            (u32::MAX, Argv::from_args([b"DEL".as_slice(), &all_bytes])),
        ]),
        EntryKind::Atomic(vec![]),
        EntryKind::KeyFence {
            db: 7,
            key: all_bytes.clone(),
            read_id: "127.0.0.1:51234".into(),
            ordinal: u64::MAX,
        },
        EntryKind::Payload {
            read_id: "127.0.0.1:51234".into(),
            ordinal: 9,
            db: 1,
            key: all_bytes.clone(),
            payload: Some(all_bytes.repeat(3)),
            expire_at_ms: Some(1_700_000_000_000),
        },
        EntryKind::Payload {
            read_id: "[::1]:6000".into(),
            ordinal: 0,
            db: 0,
            key: vec![],
            payload: None,
            expire_at_ms: None,
        },
        EntryKind::Marker(ferry::journal::Marker::Position("final-fence".into())),
        EntryKind::Gap {
            reason: "MONITOR output buffer overflow".into(),
        },
    ]
}

#[test]
fn journal_round_trips_every_kind() {
    let dir = tempfile::tempdir().unwrap();
    let kinds = every_kind();
    {
        let journal = Journal::open(config(dir.path(), 1 << 20)).unwrap();
        for (i, kind) in kinds.iter().enumerate() {
            assert_eq!(
                journal.append(i as u64 * 7, kind.clone()).unwrap(),
                i as u64
            );
        }
        let got = read_all(&mut journal.reader(0).unwrap());
        let want: Vec<Entry> = kinds
            .iter()
            .enumerate()
            .map(|(i, k)| Entry {
                seq: i as u64,
                ts_us: i as u64 * 7,
                kind: k.clone(),
            })
            .collect();
        assert_eq!(got, want);
    }
    // And from the files alone, after a reopen.
    let journal = Journal::open(config(dir.path(), 1 << 20)).unwrap();
    let got = read_all(&mut journal.reader(0).unwrap());
    assert_eq!(got.len(), kinds.len());
    assert!(got.iter().zip(&kinds).all(|(e, k)| &e.kind == k));
}

#[test]
fn journal_rotates_and_readers_span_segments() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(config(dir.path(), 4096)).unwrap();
    // Opened before any of the segments it will cross exists.
    let mut early = journal.reader(0).unwrap();
    assert_eq!(early.try_next().unwrap(), None);
    for chunk in 0..20u64 {
        let items: Vec<_> = (chunk * 100..chunk * 100 + 100)
            .map(|i| (i, write(i)))
            .collect();
        let seqs = journal.append_many(items).unwrap();
        assert_eq!(seqs, chunk * 100..chunk * 100 + 100);
        // Read part of the way while the writer keeps rotating.
        for _ in 0..50 {
            early.try_next().unwrap().unwrap();
        }
    }
    let files = segments(dir.path());
    assert!(files.len() > 5, "{} segments", files.len());
    assert_eq!(
        files[0].file_name().unwrap(),
        "00000000000000000000.seg",
        "named by first seq"
    );
    for f in &files[..files.len() - 1] {
        let len = std::fs::metadata(f).unwrap().len();
        assert!(
            (4096..4096 + 200).contains(&len),
            "{}: {len} bytes",
            f.display()
        );
    }
    let total: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert_eq!(journal.disk_bytes(), total);

    let rest = read_all(&mut early);
    assert_eq!(rest.first().unwrap().seq, 1000);
    assert_eq!(rest.len(), 1000);

    let all = read_all(&mut journal.reader(0).unwrap());
    assert_eq!(all.len(), 2000);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(
            (e.seq, e.ts_us, &e.kind),
            (i as u64, i as u64, &write(i as u64))
        );
    }
    // Positioned inside a segment, and at segment starts.
    let second_start: u64 = files[1]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    for from in [
        1,
        777,
        second_start - 1,
        second_start,
        second_start + 1,
        1999,
        2000,
    ] {
        let mut r = journal.reader(from).unwrap();
        assert_eq!(r.position(), from);
        let got = read_all(&mut r);
        assert_eq!(got.len() as u64, 2000 - from, "from {from}");
        assert!(got.iter().zip(from..).all(|(e, s)| e.seq == s));
    }
    assert!(matches!(
        journal.reader(2001),
        Err(JournalError::PastEnd {
            seq: 2001,
            next: 2000
        })
    ));
}

#[test]
fn journal_reader_waits_and_wakes_on_append() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(config(dir.path(), 512)).unwrap();
    journal.append(1, write(0)).unwrap();
    let mut reader = journal.reader(1).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let waited = tokio::time::timeout(Duration::from_millis(50), reader.next()).await;
        assert!(waited.is_err(), "nothing appended yet");

        let appender = journal.clone();
        let t = std::thread::spawn(move || {
            for i in 1..=100u64 {
                std::thread::sleep(Duration::from_micros(200));
                appender.append(i, write(i)).unwrap();
            }
        });
        for i in 1..=100u64 {
            let e = tokio::time::timeout(Duration::from_secs(10), reader.next())
                .await
                .expect("woken by the append")
                .unwrap();
            assert_eq!((e.seq, e.kind), (i, write(i)));
        }
        t.join().unwrap();
        assert!(segments(dir.path()).len() > 3, "crossed segments");

        // Dropping the journal ends a caught-up reader instead of leaving it waiting forever.
        drop(journal);
        let end = tokio::time::timeout(Duration::from_secs(10), reader.next()).await;
        assert!(matches!(end, Ok(Err(JournalError::Closed))), "{end:?}");
    });
}

#[test]
fn journal_reopen_continues_seq() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3u64 {
        let mut cfg = config(dir.path(), 300);
        cfg.fsync = FsyncPolicy::Always;
        let journal = Journal::open(cfg).unwrap();
        assert_eq!(journal.next_seq(), round * 10);
        // Still locked while open.
        assert!(matches!(
            Journal::open(config(dir.path(), 300)),
            Err(JournalError::Locked { .. })
        ));
        for i in 0..10 {
            assert_eq!(journal.append(i, write(i)).unwrap(), round * 10 + i);
        }
        journal.sync().unwrap();
    }
    let journal = Journal::open(config(dir.path(), 300)).unwrap();
    let all = read_all(&mut journal.reader(0).unwrap());
    assert_eq!(all.len(), 30);
    assert!(all.iter().zip(0..).all(|(e, s)| e.seq == s));
}

#[test]
fn journal_empty_batch_and_fresh_reader() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(JournalConfig::new(dir.path())).unwrap();
    assert_eq!(journal.next_seq(), 0);
    assert_eq!(journal.append_many(vec![]).unwrap(), 0..0);
    let mut r = journal.reader(0).unwrap();
    assert_eq!(r.try_next().unwrap(), None);
    assert_eq!(journal.append_many(vec![(5, write(5))]).unwrap(), 0..1);
    assert_eq!(r.try_next().unwrap().unwrap().ts_us, 5);
}

/// Opens a journal of 3 segments (the last holding `last_entries`) and closes it.
fn three_segments(dir: &Path, last_entries: u64) -> (Vec<PathBuf>, u64) {
    let journal = Journal::open(config(dir, 1000)).unwrap();
    let mut n = 0;
    while segments(dir).len() < 3 {
        journal.append(n, write(n)).unwrap();
        n += 1;
    }
    for _ in 1..last_entries {
        journal.append(n, write(n)).unwrap();
        n += 1;
    }
    (segments(dir), n)
}

#[test]
fn journal_torn_tail_is_cut_and_appending_continues() {
    // Truncated in the middle of the last record.
    let dir = tempfile::tempdir().unwrap();
    let (files, n) = three_segments(dir.path(), 5);
    let last = files.last().unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    let f = std::fs::File::options().write(true).open(last).unwrap();
    f.set_len(len - 3).unwrap();
    drop(f);
    let journal = Journal::open(config(dir.path(), 1000)).unwrap();
    assert_eq!(journal.next_seq(), n - 1);
    assert!(std::fs::metadata(last).unwrap().len() < len - 3);
    assert_eq!(journal.append(0, write(n - 1)).unwrap(), n - 1);
    let all = read_all(&mut journal.reader(0).unwrap());
    assert_eq!(all.len() as u64, n);
    assert_eq!(all.last().unwrap().kind, write(n - 1));
    drop(journal);

    // Garbage after the last record, including a header that claims a huge length.
    for garbage in [
        vec![0xAB; 37],
        vec![0xFF, 0xFF, 0xFF, 0x7F, 1, 2, 3, 4, 5],
        vec![4, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
        vec![0; 3],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (files, n) = three_segments(dir.path(), 2);
        let last = files.last().unwrap();
        let len = std::fs::metadata(last).unwrap().len();
        let mut bytes = std::fs::read(last).unwrap();
        bytes.extend_from_slice(&garbage);
        std::fs::write(last, bytes).unwrap();
        let journal = Journal::open(config(dir.path(), 1000)).unwrap();
        assert_eq!(journal.next_seq(), n);
        assert_eq!(std::fs::metadata(last).unwrap().len(), len);
        assert_eq!(journal.append(0, write(n)).unwrap(), n);
        assert_eq!(
            read_all(&mut journal.reader(0).unwrap()).len() as u64,
            n + 1
        );
    }
}

#[test]
fn journal_corrupt_middle_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = three_segments(dir.path(), 3);
    let middle = &files[1];
    let mut bytes = std::fs::read(middle).unwrap();
    bytes[100] ^= 0x40;
    std::fs::write(middle, &bytes).unwrap();
    let err = Journal::open(config(dir.path(), 1000)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(middle.to_str().unwrap()), "{msg}");
    match err {
        JournalError::Corrupt { path, offset, .. } => {
            assert_eq!(&path, middle);
            assert!(offset <= 100, "offset {offset}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    // Nothing was cut: the middle segment is as it was.
    assert_eq!(std::fs::read(middle).unwrap(), bytes);

    // A middle segment cut short is corruption too, not a torn tail.
    std::fs::write(middle, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        Journal::open(config(dir.path(), 1000)),
        Err(JournalError::Corrupt { path, .. }) if &path == middle
    ));

    // A missing middle segment leaves a hole in the seqs.
    std::fs::remove_file(middle).unwrap();
    assert!(matches!(
        Journal::open(config(dir.path(), 1000)),
        Err(JournalError::Corrupt { path, .. }) if path == files[2]
    ));
}

#[test]
fn journal_remove_before_keeps_unapplied_segments() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(config(dir.path(), 1000)).unwrap();
    for i in 0..200 {
        journal.append(i, write(i)).unwrap();
    }
    let files = segments(dir.path());
    let firsts: Vec<u64> = files
        .iter()
        .map(|f| f.file_stem().unwrap().to_str().unwrap().parse().unwrap())
        .collect();
    assert!(firsts.len() >= 4, "{firsts:?}");
    let before = journal.disk_bytes();
    // A reader inside the first segment, which is about to go.
    let mut inside = journal.reader(1).unwrap();

    // Nothing is fully applied below the second segment's first seq.
    assert_eq!(journal.remove_before(firsts[1] - 1).unwrap(), 0);
    assert_eq!(journal.remove_before(firsts[1]).unwrap(), 1);
    assert_eq!(journal.remove_before(firsts[2] + 1).unwrap(), 1);
    assert_eq!(segments(dir.path()), files[2..]);
    assert_eq!(journal.first_seq(), firsts[2]);
    let removed: u64 = files[..2]
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum();
    assert_eq!(removed, 0, "files are gone");
    assert!(journal.disk_bytes() < before);
    let on_disk: u64 = segments(dir.path())
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert_eq!(journal.disk_bytes(), on_disk);

    match journal.reader(firsts[2] - 1) {
        Err(JournalError::Removed { seq, oldest }) => {
            assert_eq!((seq, oldest), (firsts[2] - 1, firsts[2]))
        }
        other => panic!("expected Removed, got {other:?}"),
    }
    let kept = read_all(&mut journal.reader(firsts[2]).unwrap());
    assert_eq!(kept.len() as u64, 200 - firsts[2]);

    // The reader finishes the segment it has open, then cannot go on.
    let mut n = 0;
    let err = loop {
        match inside.try_next() {
            Ok(Some(_)) => n += 1,
            Ok(None) => panic!("reader should fail at the removed segment"),
            Err(e) => break e,
        }
    };
    assert_eq!(n, firsts[1] - 1);
    assert!(matches!(err, JournalError::Removed { .. }), "{err:?}");

    // The active segment is never removed, even when everything is applied.
    let total = segments(dir.path()).len();
    assert_eq!(journal.remove_before(u64::MAX).unwrap(), total - 1);
    assert_eq!(segments(dir.path()).len(), 1);
    assert_eq!(journal.append(0, write(0)).unwrap(), 200);
    drop(journal);
    let journal = Journal::open(config(dir.path(), 1000)).unwrap();
    assert_eq!(journal.next_seq(), 201);
}

#[test]
fn journal_concurrent_appends_get_dense_unique_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(config(dir.path(), 64 << 10)).unwrap();
    let per_thread = 5000u64;
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let journal = journal.clone();
            std::thread::spawn(move || {
                let mut seqs = Vec::new();
                for i in 0..per_thread {
                    let tag = t * 1_000_000 + i;
                    if i % 10 == 0 {
                        let r = journal
                            .append_many(vec![(tag, write(tag)), (tag, write(tag))])
                            .unwrap();
                        seqs.extend(r.map(|s| (s, tag)));
                    } else {
                        seqs.push((journal.append(tag, write(tag)).unwrap(), tag));
                    }
                }
                seqs
            })
        })
        .collect();
    let mut all: Vec<(u64, u64)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort_unstable();
    let n = all.len() as u64;
    assert_eq!(n, 4 * (per_thread + per_thread / 10));
    assert!(all.iter().zip(0..).all(|((s, _), want)| *s == want));
    assert_eq!(journal.next_seq(), n);
    let read = read_all(&mut journal.reader(0).unwrap());
    assert_eq!(read.len() as u64, n);
    for (e, (seq, tag)) in read.iter().zip(&all) {
        assert_eq!((e.seq, e.ts_us, &e.kind), (*seq, *tag, &write(*tag)));
    }
    // Per thread, seqs follow call order.
    for t in 0..4 {
        let tags: Vec<u64> = all
            .iter()
            .filter(|(_, tag)| tag / 1_000_000 == t)
            .map(|(_, tag)| *tag)
            .collect();
        assert!(tags.windows(2).all(|w| w[0] <= w[1]));
    }
}

fn small_writes(n: u64) -> Vec<(u64, EntryKind)> {
    let value = vec![b'v'; 70];
    (0..n)
        .map(|i| {
            let argv = Argv::from_args([
                b"SET".as_slice(),
                format!("user:{i:016}").as_bytes(),
                &value,
            ]);
            (i, EntryKind::Write { db: 0, argv })
        })
        .collect()
}

/// Appends `n` ~100-byte writes one call each, reads them back, then appends them again in
/// batches of 128; prints the rates.
fn throughput(n: u64) {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(JournalConfig::new(dir.path())).unwrap();
    let items = small_writes(n);
    let t = Instant::now();
    for (ts, kind) in items.iter().cloned() {
        journal.append(ts, kind).unwrap();
    }
    journal.sync().unwrap();
    let append = t.elapsed();
    let t = Instant::now();
    let mut reader = journal.reader(0).unwrap();
    let mut count = 0u64;
    while let Some(e) = reader.try_next().unwrap() {
        assert_eq!(e.seq, count);
        count += 1;
    }
    let read = t.elapsed();
    assert_eq!(count, n);
    let bytes = journal.disk_bytes();
    drop(journal);

    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(JournalConfig::new(dir.path())).unwrap();
    let mut batches = Vec::new();
    let mut it = items.into_iter().peekable();
    while it.peek().is_some() {
        batches.push(it.by_ref().take(128).collect::<Vec<_>>());
    }
    let t = Instant::now();
    for batch in batches {
        journal.append_many(batch).unwrap();
    }
    journal.sync().unwrap();
    let batched = t.elapsed();
    assert_eq!(journal.next_seq(), n);

    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    eprintln!(
        "journal: {n} entries, {bytes} bytes: append {append:?} ({:.0}/s), read {read:?} \
         ({:.0}/s), append_many x128 {batched:?} ({:.0}/s)",
        rate(append),
        rate(read),
        rate(batched),
    );
    assert!(
        append + read < Duration::from_secs(60),
        "far too slow: {append:?} + {read:?}"
    );
}

#[test]
fn journal_throughput_200k() {
    throughput(200_000);
}

#[test]
fn journal_handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(config(dir.path(), 1 << 20)).unwrap();
    send_sync(&journal);
    let mut reader = journal.reader(0).unwrap();
    send(&reader);
    // Readers run in spawned tasks, so the waiting future must be Send too.
    send(&reader.next());
}

#[test]
fn journal_tailing_reader_races_rotating_writer() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(config(dir.path(), 2048)).unwrap();
    let n = 20_000u64;
    let mut readers: Vec<_> = (0..2)
        .map(|_| {
            let mut reader = journal.reader(0).unwrap();
            std::thread::spawn(move || {
                let mut next = 0;
                while next < n {
                    match reader.try_next().unwrap() {
                        Some(e) => {
                            assert_eq!((e.seq, e.kind), (next, write(next)));
                            next += 1;
                        }
                        None => std::thread::yield_now(),
                    }
                }
            })
        })
        .collect();
    for i in 0..n {
        if i % 3 == 0 {
            journal.append_many(vec![(i, write(i))]).unwrap();
        } else {
            journal.append(i, write(i)).unwrap();
        }
    }
    for r in readers.drain(..) {
        r.join().unwrap();
    }
    assert!(segments(dir.path()).len() > 100);
}
