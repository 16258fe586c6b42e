//! The SQS transport for journal entries: the scale-out path where `ferry capture` and
//! `ferry replay` run as separate processes. This module owns the queue connection
//! ([`SqsQueue`]), its config and errors; [`SqsWriter`] packs and sends, [`SqsReader`] receives,
//! orders, and deletes what the caller acknowledged.
//!
//! ## Behavior
//! - Entries arrive already routed to a **group** (a replay shard). The writer gives each
//!   entry a dense per-group sequence number, its **gseq** (0, 1, 2, …), beside its global
//!   `seq`, and packs runs of consecutive gseqs of one group into one message (format in
//!   `message.rs`) of up to [`SqsConfig::max_message_bytes`].
//! - The packed records travel as a `Binary` message attribute, not as base64 in the body: SQS
//!   counts a binary attribute at its raw size, so a message carries a third more entries (the
//!   body then holds only a short human-readable header). [`PayloadEncoding::Base64Body`] is the
//!   alternative for tooling that only looks at bodies; readers accept both.
//! - FIFO queues: `MessageGroupId` is `shard-<group>` and `MessageDeduplicationId` is
//!   `<group>-<first gseq>-<count>`, so a resend of the same message within SQS's five-minute
//!   window is dropped by SQS, while a resend packed differently after a crash is delivered and
//!   its already-seen entries are dropped by the reader. The writer never has two messages of
//!   one group in flight at once, since FIFO order is the order in which sends arrive.
//! - Standard queues may duplicate and reorder messages; the reader restores per-group gseq
//!   order and drops duplicates either way, so both queue kinds give the caller the same
//!   stream: each group's entries in gseq order, exactly once, or a [`SqsEvent::Gap`].
//! - Credentials and region come from the AWS default chain (environment, profile files
//!   including SSO and `credential_process`, ECS and EC2 instance metadata) unless
//!   [`SqsConfig::credentials`] / [`SqsConfig::region`] are set. `AWS_ENDPOINT_URL_SQS` and
//!   `AWS_ENDPOINT_URL` are honoured; [`SqsConfig::endpoint_url`] overrides both. Credentials
//!   are never logged or shown in `Debug`.

mod message;
mod reader;
mod writer;

use std::time::Duration;

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::QueueAttributeName;

pub use message::MessageHeader;
pub use reader::{ReaderStats, SqsBatch, SqsEvent, SqsReader};
pub use writer::{SqsWriter, WriterStats};

/// SQS's own message size limit for most queues (newer queues allow 1 MiB; raise
/// [`SqsConfig::max_message_bytes`] for those).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// SQS's limit on the summed size of one `SendMessageBatch` call.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 256 * 1024;
/// Bytes kept free in each message for the body header, attribute name and type, and the
/// encoding's rounding.
pub const MESSAGE_HEADROOM: usize = 1024;
/// Long-poll wait by default: the longest SQS allows, so an idle reader costs few calls.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(20);
/// How long a received message stays hidden from other readers by default. The reader
/// extends it for messages it still holds, so this is the redelivery delay after a crash.
pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(60);
/// `SendMessageBatch` calls in flight by default.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 8;
/// How long the reader waits for a missing message before reporting a gap.
pub const DEFAULT_GAP_WAIT: Duration = Duration::from_secs(30);
/// Messages the reader holds out of order, over all groups, before it hands the newest back.
pub const DEFAULT_REORDER_MESSAGES: usize = 1000;
/// Per-attempt timeout of one SQS call (a long poll adds its wait on top).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Message attribute that carries the packed entries.
const BLOB_ATTRIBUTE: &str = "ferry";

/// How the packed entries travel in a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PayloadEncoding {
    /// A `Binary` message attribute, counted at its raw size.
    #[default]
    BinaryAttribute,
    /// Base64 in the body: a third fewer entries per message.
    Base64Body,
}

/// Static credentials, for tests and demos; production uses the default chain.
#[derive(Clone)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key id alone does not authorise anything but still identifies an account.
        f.write_str("StaticCredentials { .. }")
    }
}

/// Which queue and how to use it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SqsConfig {
    /// The queue URL (`https://sqs.<region>.amazonaws.com/<account>/<name>`).
    pub queue_url: String,
    /// FIFO or standard. `None` = from the URL's `.fifo` suffix.
    pub fifo: Option<bool>,
    /// Long-poll wait of each receive, rounded down to whole seconds, at most 20 s.
    pub wait: Duration,
    /// Visibility timeout given to received messages, in whole seconds (at least 1 s).
    pub visibility_timeout: Duration,
    /// `SendMessageBatch` calls the writer keeps in flight.
    pub max_in_flight: usize,
    /// Largest message the writer builds, attributes included.
    pub max_message_bytes: usize,
    /// Largest total of one `SendMessageBatch` call.
    pub max_batch_bytes: usize,
    pub encoding: PayloadEncoding,
    /// How long the reader waits for a missing gseq before yielding [`SqsEvent::Gap`].
    pub gap_wait: Duration,
    /// Out-of-order messages the reader buffers before handing the newest back to the queue.
    pub reorder_messages: usize,
    /// Per-attempt timeout of each call, on top of any long-poll wait.
    pub call_timeout: Duration,
    /// Region; `None` = the default chain (`AWS_REGION`, profile).
    pub region: Option<String>,
    /// Endpoint; `None` = `AWS_ENDPOINT_URL_SQS`, `AWS_ENDPOINT_URL`, or AWS's own.
    pub endpoint_url: Option<String>,
    /// Credentials; `None` = the default chain.
    pub credentials: Option<StaticCredentials>,
}

impl SqsConfig {
    /// The defaults above for `queue_url`.
    pub fn new(queue_url: impl Into<String>) -> Self {
        SqsConfig {
            queue_url: queue_url.into(),
            fifo: None,
            wait: DEFAULT_WAIT,
            visibility_timeout: DEFAULT_VISIBILITY_TIMEOUT,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            encoding: PayloadEncoding::default(),
            gap_wait: DEFAULT_GAP_WAIT,
            reorder_messages: DEFAULT_REORDER_MESSAGES,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            region: None,
            endpoint_url: None,
            credentials: None,
        }
    }

    /// Whether the queue is FIFO: the override, else the URL's `.fifo` suffix.
    pub fn is_fifo(&self) -> bool {
        self.fifo
            .unwrap_or_else(|| self.queue_url.trim_end_matches('/').ends_with(".fifo"))
    }

    fn validate(&self) -> Result<(), SqsError> {
        let bad = |field, reason: &str| {
            Err(SqsError::Config {
                field,
                reason: reason.to_string(),
            })
        };
        if self.max_message_bytes < 4 * MESSAGE_HEADROOM {
            return bad("max_message_bytes", "must be at least 4 KiB");
        }
        if self.max_batch_bytes < self.max_message_bytes {
            return bad("max_batch_bytes", "must be at least max_message_bytes");
        }
        if self.max_in_flight == 0 {
            return bad("max_in_flight", "must be at least 1");
        }
        if self.wait > Duration::from_secs(20) {
            return bad("wait", "SQS long polls wait at most 20 s");
        }
        if self.visibility_timeout < Duration::from_secs(1)
            || self.visibility_timeout > Duration::from_secs(12 * 3600)
        {
            return bad("visibility_timeout", "must be between 1 s and 12 h");
        }
        if self.reorder_messages == 0 {
            return bad("reorder_messages", "must be at least 1");
        }
        Ok(())
    }
}

/// Why an SQS operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqsError {
    /// A config field is out of range.
    #[error("sqs config: {field}: {reason}")]
    Config { field: &'static str, reason: String },
    /// The request did not get an answer: no connection, a timeout, or no credentials. The
    /// SDK already retried it.
    #[error("sqs {op}: no answer from the queue service: {detail}")]
    Unreachable { op: &'static str, detail: String },
    /// The service answered with an error (after the SDK's retries for throttling).
    #[error("sqs {op}: {detail}")]
    Service {
        op: &'static str,
        /// The AWS error code, e.g. `AWS.SimpleQueueService.NonExistentQueue`.
        code: Option<String>,
        detail: String,
    },
    /// Entries of a batch call failed and retrying did not help (or the fault was ours).
    #[error("sqs {op}: {failed} entries failed, first with {code}: {message}")]
    BatchEntries {
        op: &'static str,
        failed: usize,
        code: String,
        message: String,
        sender_fault: bool,
    },
    /// One entry is larger than a message can carry.
    #[error(
        "journal entry {seq} of group {group} takes {bytes} bytes, more than an SQS message \
         can carry ({limit})"
    )]
    EntryTooLarge {
        group: u32,
        seq: u64,
        bytes: usize,
        limit: usize,
    },
    /// A writer's background send task ended abnormally.
    #[error("sqs writer: a send task failed: {0}")]
    Task(String),
}

impl SqsError {
    fn sdk<E, R>(op: &'static str) -> impl FnOnce(SdkError<E, R>) -> SqsError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        move |e| {
            // Plain Display says only "dispatch failure"; the context chain names the cause.
            let detail = DisplayErrorContext(&e).to_string();
            match e {
                SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                    SqsError::Unreachable { op, detail }
                }
                other => SqsError::Service {
                    op,
                    code: other.code().map(str::to_string),
                    detail,
                },
            }
        }
    }
}

/// Message counts of a queue, from `GetQueueAttributes` (approximate, as SQS says).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
}

/// A connected queue: the client and config that writers and readers share. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    cfg: SqsConfig,
}

impl SqsQueue {
    /// Builds the client (ring-only HTTPS, default credential chain unless overridden). No
    /// request is made: a wrong URL or missing credential shows on the first call.
    pub async fn connect(cfg: SqsConfig) -> Result<SqsQueue, SqsError> {
        cfg.validate()?;
        let client = build_client(&cfg).await;
        Ok(SqsQueue { client, cfg })
    }

    /// Creates the queue `name` (FIFO when it ends in `.fifo`; ferry sets dedup ids itself, so
    /// content-based de-duplication is off) and connects to it. `cfg.queue_url` is replaced by
    /// the new queue's URL. Creating a queue that exists with the same attributes is a no-op.
    pub async fn create(mut cfg: SqsConfig, name: &str) -> Result<SqsQueue, SqsError> {
        cfg.validate()?;
        let client = build_client(&cfg).await;
        let mut req = client.create_queue().queue_name(name);
        if name.ends_with(".fifo") {
            req = req
                .attributes(QueueAttributeName::FifoQueue, "true")
                .attributes(QueueAttributeName::ContentBasedDeduplication, "false");
        }
        let out = req.send().await.map_err(SqsError::sdk("CreateQueue"))?;
        cfg.queue_url = out.queue_url().unwrap_or_default().to_string();
        if cfg.queue_url.is_empty() {
            return Err(SqsError::Service {
                op: "CreateQueue",
                code: None,
                detail: "the answer has no queue URL".into(),
            });
        }
        Ok(SqsQueue { client, cfg })
    }

    pub fn config(&self) -> &SqsConfig {
        &self.cfg
    }

    /// The SDK client, for operations this module does not wrap.
    pub fn client(&self) -> &aws_sdk_sqs::Client {
        &self.client
    }

    /// A writer whose groups all start at gseq 0 (see [`SqsWriter::set_next_gseq`]).
    pub fn writer(&self) -> SqsWriter {
        SqsWriter::new(self.clone())
    }

    /// A reader that expects, per group, the gseq in `checkpoint` next (0 for groups not in it).
    pub fn reader(&self, checkpoint: impl IntoIterator<Item = (u32, u64)>) -> SqsReader {
        SqsReader::new(self.clone(), checkpoint.into_iter().collect())
    }

    /// Approximate message counts.
    pub async fn stats(&self) -> Result<QueueStats, SqsError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.cfg.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(SqsError::sdk("GetQueueAttributes"))?;
        let get = |name: QueueAttributeName| {
            out.attributes()
                .and_then(|a| a.get(&name))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(QueueStats {
            visible: get(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            delayed: get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        })
    }
}

async fn build_client(cfg: &SqsConfig) -> aws_sdk_sqs::Client {
    use aws_config::timeout::TimeoutConfig;
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

    // ring only: the SDK's default client would add aws-lc-rs, and two providers in one
    // process make rustls refuse to pick one.
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(cfg.call_timeout.min(Duration::from_secs(3)))
                .operation_attempt_timeout(cfg.call_timeout + cfg.wait)
                .build(),
        );
    if let Some(region) = &cfg.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(url) = &cfg.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some(c) = &cfg.credentials {
        loader = loader.credentials_provider(aws_sdk_sqs::config::Credentials::new(
            c.access_key_id.clone(),
            c.secret_access_key.clone(),
            c.session_token.clone(),
            None,
            "ferry-static",
        ));
    }
    let sdk = loader.load().await;
    aws_sdk_sqs::Client::new(&sdk)
}
