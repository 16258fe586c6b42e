//! Parser throughput in MB/s of MONITOR stream text: framing plus parsing, on three mixes of
//! lines (typical small writes, escape-heavy binary values, large printable values).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry::capture::MonitorLine;
use ferry::capture::parse_line_into;
use ferry::escape::quote_into;
use ferry::net::framing::{Frame, Framer};

fn line(out: &mut Vec<u8>, i: u64, args: &[&[u8]]) {
    out.extend_from_slice(
        format!(
            "+{}.{:06} [0 127.0.0.1:{}] ",
            1_795_657_696 + i / 1000,
            i % 1_000_000,
            40000 + i % 20000
        )
        .as_bytes(),
    );
    for (j, a) in args.iter().enumerate() {
        if j > 0 {
            out.push(b' ');
        }
        quote_into(out, a);
    }
    out.extend_from_slice(b"\r\n");
}

/// About `size` bytes of stream made by `make(i)`.
fn stream(size: usize, make: impl Fn(u64) -> Vec<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 4096);
    let mut i = 0;
    while out.len() < size {
        let args = make(i);
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        line(&mut out, i, &refs);
        i += 1;
    }
    out
}

fn parse_all(data: &[u8], framer: &mut Framer, out: &mut MonitorLine) -> usize {
    framer.extend(data);
    let mut n = 0;
    while let Some(frame) = framer.next_frame() {
        if let Frame::Line(l) = frame
            && parse_line_into(l, out).is_ok()
        {
            n += out.argv.len();
        }
    }
    n
}

fn bench(c: &mut Criterion) {
    let value: Vec<u8> = (0..100).map(|i| b'a' + (i % 26) as u8).collect();
    let typical = stream(8 << 20, |i| match i % 4 {
        0 => vec![
            b"SET".to_vec(),
            format!("key:{i}").into_bytes(),
            value.clone(),
        ],
        1 => vec![
            b"INCR".to_vec(),
            format!("counter:{}", i % 100).into_bytes(),
        ],
        2 => vec![
            b"HSET".to_vec(),
            format!("user:{}", i % 1000).into_bytes(),
            b"name".to_vec(),
            value[..30].to_vec(),
        ],
        _ => vec![
            b"LPUSH".to_vec(),
            b"queue:default".to_vec(),
            format!("{{\"class\":\"Job\",\"jid\":\"{i:024x}\",\"args\":[1,2,3]}}").into_bytes(),
        ],
    });
    let binary = stream(8 << 20, |i| {
        let v: Vec<u8> = (0..200u32).map(|j| (j as u64 * 31 + i) as u8).collect();
        vec![b"SET".to_vec(), format!("bin:{i}").into_bytes(), v]
    });
    let large = stream(16 << 20, |i| {
        vec![
            b"SET".to_vec(),
            format!("large:{i}").into_bytes(),
            vec![b'x'; 100_000],
        ]
    });

    let mut group = c.benchmark_group("monitor_parse");
    for (name, data) in [
        ("typical", &typical),
        ("binary", &binary),
        ("large", &large),
    ] {
        group.throughput(Throughput::Bytes(data.len() as u64));
        let mut framer = Framer::new();
        let mut out = MonitorLine::default();
        group.bench_function(name, |b| {
            b.iter(|| black_box(parse_all(black_box(data), &mut framer, &mut out)))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
