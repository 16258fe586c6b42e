//! A throughput probe for the SQS journal transport: creates a queue on an SQS endpoint (moto
//! by default), pushes small journal entries through it, and prints entries/s, messages/s and
//! entries per message.
//!
//! ```text
//! moto_server -H 127.0.0.1 -p 5055 &
//! cargo run --release --example sqs_probe -- http://127.0.0.1:5055 200000 [fifo|standard] [attr|base64] [max message bytes]
//! ```
//!
//! An endpoint of `env` leaves endpoint, region and credentials to the AWS default chain
//! (`AWS_ENDPOINT_URL_SQS`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, …).

use std::time::Instant;

use ferry::command::Argv;
use ferry::journal::sqs::{PayloadEncoding, SqsConfig, SqsEvent, SqsQueue, StaticCredentials};
use ferry::journal::{Entry, EntryKind};

const GROUPS: u32 = 4;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let endpoint = args
        .first()
        .cloned()
        .unwrap_or("http://127.0.0.1:5055".into());
    let total: u64 = args.get(1).map_or(Ok(200_000), |s| s.parse())?;
    let fifo = args.get(2).is_none_or(|s| s == "fifo");
    let encoding = match args.get(3).map(String::as_str) {
        Some("base64") => PayloadEncoding::Base64Body,
        _ => PayloadEncoding::BinaryAttribute,
    };
    let mut cfg = SqsConfig::new("");
    if endpoint != "env" {
        cfg.endpoint_url = Some(endpoint);
        cfg.region = Some("us-east-1".into());
        cfg.credentials = Some(StaticCredentials {
            access_key_id: "test".into(),
            secret_access_key: "test".into(),
            session_token: None,
        });
    }
    if let Some(bytes) = args.get(4) {
        cfg.max_message_bytes = bytes.parse()?;
    }
    cfg.wait = std::time::Duration::ZERO;
    cfg.encoding = encoding;
    let name = format!(
        "probe-{}{}",
        std::process::id(),
        if fifo { ".fifo" } else { "" }
    );
    let q = SqsQueue::create(cfg, &name).await?;

    let mut w = q.writer();
    let started = Instant::now();
    let mut seq = 0;
    while seq < total {
        let group = ((seq / 100) % u64::from(GROUPS)) as u32;
        let entries: Vec<Entry> = (seq..(seq + 100).min(total)).map(entry).collect();
        seq += entries.len() as u64;
        w.send(group, &entries).await?;
    }
    w.flush().await?;
    let send = started.elapsed().as_secs_f64();
    let ws = w.stats();

    let mut r = q.reader([]);
    let started = Instant::now();
    let mut got = 0;
    while got < total {
        if let Some(SqsEvent::Batch(b)) = r.next().await? {
            got += b.entries.len() as u64;
            r.ack(b.group, b.end_gseq() - 1);
        }
    }
    r.commit().await?;
    let recv = started.elapsed().as_secs_f64();
    let msgs = ws.messages_acked as f64;
    println!(
        "{} {:?}: {total} entries in {} messages ({:.0} entries/message, {} calls)",
        if fifo { "FIFO" } else { "standard" },
        encoding,
        ws.messages_acked,
        total as f64 / msgs,
        ws.calls
    );
    println!(
        "send: {:.0} entries/s, {:.1} messages/s; receive+delete: {:.0} entries/s, {:.1} messages/s",
        total as f64 / send,
        msgs / send,
        total as f64 / recv,
        msgs / recv
    );
    q.client()
        .delete_queue()
        .queue_url(&q.config().queue_url)
        .send()
        .await?;
    Ok(())
}

/// A typical small write: `SET key:<n> <8 bytes>`.
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
