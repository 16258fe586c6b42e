//! Split replay over SQS (a real moto server): `ferry capture` publishes, two `ferry replay`
//! processes apply. The live workload of the flagship test runs through a FIFO queue and
//! through standard queues (one per shard), with a replay process killed with SIGKILL mid-run
//! and restarted, and with one stopped past its lease and woken up as a zombie whose batches
//! the lease fence refuses; the oracle then finds 0 differences.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::cli::ferry;
use crate::migrate::FerryProcess;
use crate::support::moto::{Moto, TEST_ACCESS_KEY, TEST_REGION, TEST_SECRET_KEY};
use crate::support::workload::{self, WorkloadOptions};
use crate::support::{Dataset, OracleOptions, RedisServer, compare, fill};

fn spawn(moto: &Moto, args: &[String], log: &std::path::Path) -> FerryProcess {
    let child = ferry()
        .args(args)
        .env("FERRY_LOG", "ferry=info")
        .env("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", TEST_SECRET_KEY)
        .env("AWS_REGION", TEST_REGION)
        .env("AWS_ENDPOINT_URL_SQS", moto.endpoint())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    FerryProcess::new(child, log.to_path_buf())
}

/// Waits until every queue holds no message, visible or in flight: replay applied and deleted
/// everything published.
fn wait_drained(moto: &Moto, urls: &[String], timeout: Duration) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let deadline = Instant::now() + timeout;
    let mut quiet = 0;
    loop {
        let mut total = 0;
        for url in urls {
            let q = rt
                .block_on(ferry::journal::sqs::SqsQueue::connect(moto.config(url)))
                .unwrap();
            let s = rt.block_on(q.stats()).unwrap();
            total += s.visible + s.in_flight + s.delayed;
        }
        quiet = if total == 0 { quiet + 1 } else { 0 };
        if quiet >= 3 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "queues still hold {total} messages"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

struct Split<'a> {
    moto: &'a Moto,
    source: &'a RedisServer,
    target: &'a RedisServer,
    dir: &'a std::path::Path,
    queue: String,
    shards: usize,
}

impl Split<'_> {
    fn capture(&self) -> FerryProcess {
        let args: Vec<String> = [
            "capture",
            "--source",
            &self.source.url(),
            "--target",
            &self.target.url(),
            "--queue",
            &self.queue,
            "--shards",
            &self.shards.to_string(),
            "--create-queue",
            "--capture",
            "primary",
            "--state-dir",
            &self.dir.join("capture").display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        spawn(self.moto, &args, &self.dir.join("capture.stderr"))
    }

    fn replay_with(&self, worker: &str, name: &str, extra: &[&str]) -> FerryProcess {
        let args: Vec<String> = [
            "replay",
            "--source",
            &self.source.url(),
            "--target",
            &self.target.url(),
            "--queue",
            &self.queue,
            "--shards",
            &self.shards.to_string(),
            "--worker",
            worker,
            "--workers",
            "2",
            "--visibility-timeout-secs",
            "3",
            "--state-dir",
            &self
                .dir
                .join(format!("replay-{name}"))
                .display()
                .to_string(),
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
        spawn(self.moto, &args, &self.dir.join(format!("{name}.stderr")))
    }

    fn urls(&self) -> Vec<String> {
        if self.queue.contains("{shard}") {
            (0..self.shards)
                .map(|s| self.queue.replace("{shard}", &s.to_string()))
                .collect()
        } else {
            vec![self.queue.clone()]
        }
    }
}

/// What happens to the first replay process (the one that takes the shards' leases) mid-run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Chaos {
    None,
    /// SIGKILL, then a replacement process.
    Kill,
    /// SIGSTOP past the visibility timeout and the lease, then SIGCONT: a zombie.
    Stop,
}

/// What a replay process reported (`--json`).
fn report(dir: &std::path::Path, name: &str) -> serde_json::Value {
    let path = dir.join(format!("{name}.json"));
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&data).unwrap()
}

fn count(r: &serde_json::Value, field: &str) -> u64 {
    r[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {r}"))
}

fn signal(p: &FerryProcess, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &p.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// The whole run: fill, workload, capture, two replay processes (the first, which takes the
/// leases, is killed or stopped per `chaos`), stop the workload, drain, stop, compare. Returns
/// the reports of the replay processes that ran to the end: the first (or its replacement)
/// and the second.
fn run_split(queue_name: &str, workers: [&str; 2], chaos: Chaos) -> [serde_json::Value; 2] {
    let moto = Moto::start();
    let source = RedisServer::start();
    let target = RedisServer::start();
    fill(
        &source,
        &Dataset {
            dbs: vec![0, 1, 2],
            keys_per_db: 2000,
            big_list: 20_000,
            big_hash: 10_000,
            ..Dataset::tiny()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let split = Split {
        moto: &moto,
        source: &source,
        target: &target,
        dir: dir.path(),
        queue: format!("{}/123456789012/{queue_name}", moto.endpoint()),
        shards: 4,
    };
    let json = |name: &str| {
        dir.path()
            .join(format!("{name}.json"))
            .display()
            .to_string()
    };
    let load = workload::start(&source.url(), WorkloadOptions::default());
    let mut capture = split.capture();
    capture.wait_log("Publishing replay operations", Duration::from_secs(90));
    let mut a = split.replay_with(workers[0], "a", &["--json", &json("a")]);
    if chaos != Chaos::None {
        // The process the chaos hits must hold leases: it starts first.
        a.wait_log("Took the lease", Duration::from_secs(90));
    }
    let mut b = split.replay_with(workers[1], "b", &["--json", &json("b")]);
    capture.wait_log("Caught up", Duration::from_secs(90));
    std::thread::sleep(Duration::from_secs(3));
    let mut first = "a";
    match chaos {
        Chaos::None => {}
        Chaos::Kill => {
            // SIGKILL with batches in flight; the others get them back.
            let _ = a.child.kill();
            let _ = a.child.wait();
            std::thread::sleep(Duration::from_secs(2));
            a = split.replay_with(workers[0], "a2", &["--json", &json("a2")]);
            first = "a2";
        }
        Chaos::Stop => {
            // The holder is stopped well past the visibility timeout and the lease (3 s): the
            // other takes the shards over, then the stopped one wakes up as a zombie with the
            // batches it received just before. Whether it had any depends on when the signal
            // came, so the roles swap, up to 4 times, until a zombie's batch was refused.
            let refused = "The target refused a batch";
            for round in 0..4 {
                let (holder, other) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
                let taken = other.stderr().matches("Took the lease").count();
                signal(holder, "-STOP");
                other.wait_log_n("Took the lease", taken + 1, Duration::from_secs(90));
                std::thread::sleep(Duration::from_secs(5));
                signal(holder, "-CONT");
                std::thread::sleep(Duration::from_secs(2));
                if a.stderr().contains(refused) || b.stderr().contains(refused) {
                    break;
                }
            }
        }
    }
    std::thread::sleep(Duration::from_secs(4));
    let report_w = load.stop();
    assert!(report_w.total() > 5000, "workload too small: {report_w}");
    // Replay drains what was published before capture stops (its final fence publishes the
    // rest), so a re-copy a replay process asks for still finds capture running.
    wait_drained(&moto, &split.urls(), Duration::from_secs(120));
    assert_eq!(
        capture.terminate(Duration::from_secs(60)),
        Some(0),
        "{}",
        capture.stderr()
    );
    wait_drained(&moto, &split.urls(), Duration::from_secs(120));
    let a_code = a.terminate(Duration::from_secs(30));
    let b_code = b.terminate(Duration::from_secs(30));
    let (a_err, b_err) = (a.stderr(), b.stderr());
    if a_code != Some(0) || b_code != Some(0) {
        eprintln!("--- capture ---\n{}\n--- b ---\n{b_err}", capture.stderr());
    }
    assert_eq!(a_code, Some(0), "{a_err}");
    assert_eq!(b_code, Some(0), "{b_err}");
    let oracle = compare(
        &source.url(),
        &target.url(),
        &OracleOptions {
            ttl_tolerance_ms: 1000,
            ignore_target_prefix: Some(b"ferry:lease:".to_vec()),
            ..OracleOptions::default()
        },
    );
    let tail = |s: &str| s.lines().rev().take(3).collect::<Vec<_>>().join("\n");
    eprintln!(
        "{report_w}\n{oracle}\ncapture: {}\nreplay a: {}\nreplay b: {}",
        tail(&capture.stderr()),
        tail(&a_err),
        tail(&b_err)
    );
    assert!(oracle.keys_compared > 5000, "{oracle}");
    oracle.assert_identical();
    [report(dir.path(), first), report(dir.path(), "b")]
}

#[test]
fn split_replay_through_a_fifo_queue_with_two_processes_is_exact() {
    let [a, b] = run_split("ferry-fifo.fifo", ["0/1", "0/1"], Chaos::None);
    // One applier per shard: nothing was refused, since no lease changed hands.
    assert_eq!(count(&a, "fenced_batches") + count(&b, "fenced_batches"), 0);
    assert!(count(&a, "leases_taken") + count(&b, "leases_taken") >= 1);
}

#[test]
fn split_replay_through_standard_queues_with_two_processes_is_exact() {
    run_split("ferry-std-{shard}", ["0/2", "1/2"], Chaos::None);
}

#[test]
fn split_replay_survives_a_replay_process_killed_with_sigkill() {
    let [a2, b] = run_split("ferry-kill.fifo", ["0/1", "0/1"], Chaos::Kill);
    // The killed process's shards were taken over, and the batches it left in flight came back
    // and were applied or skipped by the recorded position, exactly once.
    assert!(
        count(&b, "leases_taken") + count(&a2, "leases_taken") > 0,
        "{b}\n{a2}"
    );
    assert!(
        count(&b, "redelivered_batches") + count(&a2, "redelivered_batches") > 0,
        "{b}\n{a2}"
    );
}

#[test]
fn split_replay_refuses_the_writes_of_a_stopped_process_that_lost_its_lease() {
    let [a, b] = run_split("ferry-stop.fifo", ["0/1", "0/1"], Chaos::Stop);
    // Shards changed hands while their holder was stopped; a zombie's batches were refused.
    let sum = |f: &str| count(&a, f) + count(&b, f);
    assert!(sum("leases_taken") >= 2, "{a}\n{b}");
    assert!(sum("leases_lost") > 0, "{a}\n{b}");
    assert!(sum("fenced_batches") > 0, "{a}\n{b}");
}

#[test]
fn split_cutover_waits_until_the_replay_processes_applied_everything() {
    let moto = Moto::start();
    let source = RedisServer::start();
    let target = RedisServer::start();
    fill(
        &source,
        &Dataset {
            dbs: vec![0, 1],
            keys_per_db: 3000,
            big_list: 20_000,
            ..Dataset::tiny()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let queue = format!("{}/123456789012/ferry-cut.fifo", moto.endpoint());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(ferry::journal::sqs::SqsQueue::create(
            moto.config(&queue),
            "ferry-cut.fifo",
        ))
        .unwrap();
    let split = Split {
        moto: &moto,
        source: &source,
        target: &target,
        dir: dir.path(),
        queue: queue.clone(),
        shards: 4,
    };
    let metrics = format!("127.0.0.1:{}", crate::support::server::free_port());
    let mut worker = split.replay_with("0/1", "w", &["--metrics-addr", &metrics]);
    let flag = dir.path().join("switched");
    let plan = dir.path().join("plan.lua");
    std::fs::write(
        &plan,
        r#"local ferry = require "ferry"
return ferry.plan {
  api_version = 1,
  source = { url = ferry.env "SRC", capture = "primary" },
  target = { url = ferry.env "DST" },
  journal = ferry.sqs { queue_url = ferry.env "QUEUE" },
  phases = { "snapshot", "catch_up", ferry.cutover {
    commands = { flag = { "touch", ferry.env "FLAG" } },
    switch = function(ctx) ctx.run("flag") end,
  } },
}
"#,
    )
    .unwrap();
    let args: Vec<String> = [
        "run",
        plan.to_str().unwrap(),
        "--set",
        &format!("SRC={}", source.url()),
        "--set",
        &format!("DST={}", target.url()),
        "--set",
        &format!("QUEUE={queue}"),
        "--set",
        &format!("FLAG={}", flag.display()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut run = spawn(&moto, &args, &dir.path().join("run.stderr"));
    assert_eq!(
        run.wait(Duration::from_secs(120)),
        Some(0),
        "{}",
        run.stderr()
    );
    assert!(flag.exists(), "{}", run.stderr());
    // The switch ran only once the replay process had applied everything: no waiting here.
    let oracle = compare(
        &source.url(),
        &target.url(),
        &OracleOptions {
            ignore_target_prefix: Some(b"ferry:lease:".to_vec()),
            ..OracleOptions::default()
        },
    );
    assert!(oracle.keys_compared > 5000, "{oracle}");
    oracle.assert_identical();
    // The replay process's own series, for what it applied.
    let m = crate::observe::parse(&crate::observe::scrape(&metrics));
    for name in [
        "ferry_replay_entries_total",
        "ferry_replay_batches_total",
        "ferry_applied_commands_total",
        "ferry_restores_total",
    ] {
        assert!(m.get(name).is_some_and(|v| *v > 0.0), "{name}: {m:?}");
    }
    assert_eq!(
        worker.terminate(Duration::from_secs(30)),
        Some(0),
        "{}",
        worker.stderr()
    );
}

/// The fence without SQS: two owners of one shard's lease on a real server. The second takes
/// the lease once the first's expired, reads what the first applied, and from then on every
/// batch the first sends is refused whole, while the second's apply with their progress.
#[test]
fn split_lease_fence_refuses_every_batch_of_a_holder_that_lost_the_lease() {
    use ferry::command::Argv;
    use ferry::net::Endpoint;
    use ferry::replay::lease::Leases;
    use ferry::replay::{Op, ReplayStats, Replayer};
    use std::sync::Arc;

    let target = RedisServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ep = Endpoint::parse(&target.url()).unwrap();
        let ttl = Duration::from_millis(300);
        let mut a = Leases::new(ep.control().await.unwrap(), ttl);
        std::thread::sleep(Duration::from_millis(2));
        let mut b = Leases::new(ep.control().await.unwrap(), ttl);
        assert_ne!(a.owner(), b.owner());
        let ha = a.acquire(0, 256).await.unwrap().expect("a free lease");
        assert_eq!(ha.applied, None);
        assert!(b.acquire(0, 256).await.unwrap().is_none(), "a holds it");
        assert!(a.renew(0, ha.token).await.unwrap());

        // One replay connection, as `ferry replay` has, carrying both owners' batches.
        let stats = Arc::new(ReplayStats::default());
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Op>(16);
        let replay = tokio::spawn({
            let stats = stats.clone();
            async move { Replayer::new(ep).run(&mut rx, stats).await }
        });
        let batch = |leases: &Leases, token: u64, end: u64, n: i64| {
            let (done, wait) = tokio::sync::oneshot::channel();
            let ops = vec![
                Op::Cmd {
                    seq: 0,
                    db: 1,
                    argv: Argv::from_args(["INCRBY", "counter", &n.to_string()]),
                },
                Op::Cmd {
                    seq: 0,
                    db: 0,
                    argv: Argv::from_args(["RPUSH", "order", &n.to_string()]),
                },
            ];
            let op = Op::Fenced {
                seq: 0,
                fence: Box::new(leases.fence(0, token, 256, end)),
                ops,
                done,
            };
            (op, wait)
        };
        let (op, wait) = batch(&a, ha.token, 1, 1);
        tx.send(op).await.unwrap();
        assert!(wait.await.unwrap(), "a holds the lease: applied");

        // a stalls past its lease; b takes it over and learns a applied gseqs below 1.
        tokio::time::sleep(Duration::from_millis(450)).await;
        let hb = b.acquire(0, 256).await.unwrap().expect("an expired lease");
        assert!(hb.token > ha.token);
        assert_eq!(hb.applied, Some(1));
        // The zombie's batches are refused, before and after b's, and apply nothing.
        let (op, stale1) = batch(&a, ha.token, 2, 100);
        tx.send(op).await.unwrap();
        let (op, fresh) = batch(&b, hb.token, 2, 10);
        tx.send(op).await.unwrap();
        let (op, stale2) = batch(&a, ha.token, 3, 1000);
        tx.send(op).await.unwrap();
        assert!(!stale1.await.unwrap(), "refused");
        assert!(fresh.await.unwrap(), "b holds the lease: applied");
        assert!(!stale2.await.unwrap(), "refused");
        assert!(!a.renew(0, ha.token).await.unwrap(), "a's lease is gone");
        drop(tx);
        replay.await.unwrap().unwrap();
        assert_eq!(
            stats
                .fenced_batches
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        let open = |db: u32| {
            redis::Client::open(target.url_db(db))
                .unwrap()
                .get_connection()
                .unwrap()
        };
        let mut con = open(0);
        let counter: i64 = redis::cmd("GET")
            .arg("counter")
            .query(&mut open(1))
            .unwrap();
        assert_eq!(counter, 11, "a's 1 and b's 10; none of a's refused writes");
        let order: Vec<i64> = redis::cmd("LRANGE")
            .arg("order")
            .arg(0)
            .arg(-1)
            .query(&mut con)
            .unwrap();
        assert_eq!(order, vec![1, 10]);
        let progress: Option<u64> = redis::cmd("HGET")
            .arg("ferry:lease:0:progress")
            .arg(256)
            .query(&mut con)
            .unwrap();
        assert_eq!(progress, Some(2));
        b.release(0).await.unwrap();
        assert!(
            a.acquire(0, 256).await.unwrap().is_some(),
            "released: free again"
        );
    });
}
