//! Type-aware chunked copy of big keys (being written; API placeholder so the crate builds).

/// Redis value types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    String,
    List,
    Set,
    ZSet,
    Hash,
    Stream,
}

impl KeyType {
    pub fn parse(type_reply: &str) -> Option<KeyType> {
        match type_reply {
            "string" => Some(KeyType::String),
            "list" => Some(KeyType::List),
            "set" => Some(KeyType::Set),
            "zset" => Some(KeyType::ZSet),
            "hash" => Some(KeyType::Hash),
            "stream" => Some(KeyType::Stream),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ChunkedStats {
    pub elements: u64,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("chunked copy is not available yet")]
pub struct ChunkedError;

pub async fn copy_chunked(
    _src: &mut redis::aio::MultiplexedConnection,
    _dst: &mut redis::aio::MultiplexedConnection,
    _read_key: &[u8],
    _key: &[u8],
    _ty: KeyType,
    _expire_at_ms: Option<i64>,
    _chunk: usize,
) -> Result<ChunkedStats, ChunkedError> {
    Err(ChunkedError)
}
