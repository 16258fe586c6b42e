//! The start-of-run checks of cluster mode: what a cluster source or a cluster target needs,
//! and the one-line refusals when a run cannot go on (docs/cluster.md).

use std::collections::BTreeSet;

use super::report::MigrateError;
use crate::net::Endpoint;
use crate::net::cluster::stray_dbs;

/// A source with keys in dbs other than 0 toward a cluster, which has db 0 only.
pub(super) fn multi_db_refusal(target: &Endpoint, dbs: &[u32]) -> String {
    format!(
        "the target {target} is a Redis Cluster, which has db 0 only, but the source has keys in {}: move them with the plan's rewrite, e.g. ferry.move_db({}, 0)",
        stray_dbs(dbs),
        dbs[0]
    )
}

/// The source's dbs with keys (`INFO keyspace`).
pub(super) async fn source_dbs(source: &Endpoint) -> Result<BTreeSet<u32>, MigrateError> {
    let mut con = source.control().await?;
    let info: String = redis::cmd("INFO")
        .arg("keyspace")
        .query_async(&mut con)
        .await
        .map_err(|e| MigrateError::from(source.classify(&e)))?;
    Ok(info
        .lines()
        .filter_map(|l| l.strip_prefix("db")?.split_once(':')?.0.parse().ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_multi_db_refusal_names_the_first_db_and_counts_the_others() {
        let ep = Endpoint::parse("redis://:secret@h:7000").unwrap();
        let one = multi_db_refusal(&ep, &[3]);
        assert!(one.contains("keys in db 3: move"), "{one}");
        assert!(!one.contains("secret"));
        let many = multi_db_refusal(&ep, &[1, 2, 5]);
        assert!(many.contains("db 1 and 2 other dbs"), "{many}");
        assert!(many.contains("ferry.move_db(1, 0)"), "{many}");
    }
}
