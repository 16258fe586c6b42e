//! A plan behind the seams of the stages it steers: [`PlanMapper`] (filters, renames, db moves
//! and `on_command`, behind replay's [`Mapper`]) and [`PlanRules`] (`verify.rules`, behind the
//! verifier's [`VerifyRules`]). Both are plain Rust over the loaded [`Plan`]; only hooks call
//! into Lua.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::{CommandHook, CompareValue, HookStats, Mapped, Plan, Rule, VerifySpec};
use super::{map_db, rename_key};
use crate::command::{Argv, CommandTable, Mapper};
use crate::verify::{KeyView, VerifyRules};

/// Warnings logged for skipped commands before ferry only counts them (the final report has
/// the total).
const LOGGED_HOOK_ERRORS: u64 = 10;

/// The plan's keyspace rules and `on_command` behind replay's [`Mapper`].
///
/// ## Behavior
/// Commands are classified with the table the run loaded from the source (not the built-in
/// one), so a command only a newer server has is still renamed, filtered and seen by the hook.
pub struct PlanMapper {
    plan: Plan,
    table: Arc<CommandTable>,
    /// Commands `on_command` failed on and that were skipped (`on_hook_error = "skip"`).
    skipped: AtomicU64,
}

impl PlanMapper {
    /// The plan's mapper, classifying commands with `table`.
    pub fn new(plan: Plan, table: Arc<CommandTable>) -> PlanMapper {
        PlanMapper {
            plan,
            table,
            skipped: AtomicU64::new(0),
        }
    }

    /// True when the plan changes anything a mapper would: a filter, a rule or a hook.
    pub fn needed(plan: &Plan) -> bool {
        !plan.rewrite.is_empty() || !plan.keys.is_everything() || plan.on_command.is_some()
    }

    /// The plan's key filter, renames and db moves for a verifier (which maps keys, never
    /// commands); `None` when it has none.
    pub fn for_keys(plan: &Plan) -> Option<Arc<dyn Mapper>> {
        (!plan.rewrite.is_empty() || !plan.keys.is_everything()).then(|| {
            let table = Arc::new(CommandTable::from_specs(
                CommandTable::builtin().iter().cloned().collect(),
                crate::command::TableOrigin::Builtin,
            ));
            Arc::new(PlanMapper::new(plan.clone(), table)) as Arc<dyn Mapper>
        })
    }

    /// Commands dropped so far because `on_command` failed on them (`on_hook_error = "skip"`).
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    fn map_key_inner(&self, db: u32, key: &[u8]) -> Option<(u32, Vec<u8>)> {
        if !self.plan.keys.allows(db, key) {
            return None;
        }
        let key = rename_key(&self.plan.rewrite, key).unwrap_or_else(|| key.to_vec());
        Some((map_db(&self.plan.rewrite, db), key))
    }
}

impl Mapper for PlanMapper {
    fn map_command(&self, db: u32, argv: Argv, out: &mut Vec<(u32, Argv)>) -> Result<(), String> {
        match self.plan.map_command(&self.table, db, argv, out) {
            Ok(Mapped::Skipped(e)) => {
                let n = self.skipped.fetch_add(1, Ordering::Relaxed) + 1;
                if n <= LOGGED_HOOK_ERRORS {
                    tracing::warn!(error = %e, "on_command failed; the command was skipped (on_hook_error = \"skip\").");
                }
                if n == LOGGED_HOOK_ERRORS {
                    tracing::warn!(
                        "Further skipped commands are only counted; the final report has the total."
                    );
                }
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn map_key(&self, db: u32, key: &[u8]) -> Option<(u32, Vec<u8>)> {
        self.map_key_inner(db, key)
    }

    fn unmap_key(&self, db: u32, key: &[u8]) -> Option<(u32, Vec<u8>)> {
        self.unmap_candidates(db, key).into_iter().next()
    }

    fn unmap_candidates(&self, db: u32, key: &[u8]) -> Vec<(u32, Vec<u8>)> {
        // Candidates are every source name that could map here and does, exactly (first-match
        // rules, filter): renamed names first, the unchanged name last.
        let mut keys = Vec::new();
        let mut dbs = vec![db];
        for r in &self.plan.rewrite {
            match r {
                Rule::RenamePrefix { from, to } if key.starts_with(to) => {
                    let mut k = from.clone();
                    k.extend_from_slice(&key[to.len()..]);
                    keys.push(k);
                }
                Rule::MoveDb { from, to } if *to == db => dbs.push(*from),
                _ => {}
            }
        }
        keys.push(key.to_vec());
        let mut out = Vec::new();
        for skey in &keys {
            for sdb in &dbs {
                if self
                    .map_key_inner(*sdb, skey)
                    .as_ref()
                    .is_some_and(|(d, k)| *d == db && k == key)
                    && !out.contains(&(*sdb, skey.clone()))
                {
                    out.push((*sdb, skey.clone()));
                }
            }
        }
        out
    }
}

/// What `on_command` did during a run, for the final report.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct HookReport {
    /// Commands the hook was called on.
    pub calls: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Commands dropped because the hook failed on them (`on_hook_error = "skip"`).
    pub skipped_commands: u64,
    /// Time spent in the hook.
    pub seconds: f64,
}

impl HookReport {
    /// The hook's counters since `baseline` (taken after the preflight dry run, so that only
    /// the run's own calls count), with `skipped` commands.
    pub fn since(hook: &CommandHook, baseline: HookStats, skipped: u64) -> HookReport {
        let now = hook.stats();
        HookReport {
            calls: now.calls.saturating_sub(baseline.calls),
            errors: now.errors.saturating_sub(baseline.errors),
            skipped_commands: skipped,
            seconds: now.nanos.saturating_sub(baseline.nanos) as f64 / 1e9,
        }
    }
}

impl std::fmt::Display for HookReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "on_command: {} calls, {} errors, {} commands skipped",
            self.calls, self.errors, self.skipped_commands
        )
    }
}

/// The plan's `verify.rules` behind the verifier's seam.
pub struct PlanRules(pub VerifySpec);

impl VerifyRules for PlanRules {
    fn ignored(&self, _db: u32, key: &[u8]) -> bool {
        self.0.rule_for(key).is_some_and(|r| r.ignore)
    }

    fn ttl_tolerance_ms(&self, _db: u32, key: &[u8]) -> i64 {
        self.0.ttl_tolerance_for(key)
    }

    fn has_compare(&self, _db: u32, key: &[u8]) -> bool {
        self.0.rule_for(key).is_some_and(|r| r.compare.is_some())
    }

    fn compare(&self, _db: u32, source: &KeyView, target: &KeyView) -> Result<bool, String> {
        let Some(hook) = self
            .0
            .rule_for(&source.key)
            .and_then(|r| r.compare.as_ref())
        else {
            return Ok(source.value == target.value);
        };
        let view = |v: &KeyView| CompareValue {
            key: v.key.clone(),
            type_name: v.type_name.clone(),
            value: v.value.clone(),
            ttl_ms: v.ttl_ms,
        };
        hook.call(&view(source), &view(target))
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{CommandSpec, TableOrigin};

    /// A plan that renames `old:` to `new:` and migrates only `old:*` and `keep:*`.
    fn plan() -> Plan {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.lua");
        std::fs::write(
            &path,
            r#"local ferry = require "ferry"
return ferry.plan {
  api_version = 1,
  source = "redis://127.0.0.1:1",
  target = "redis://127.0.0.1:2",
  keys = { include = { "old:*", "keep:*" } },
  rewrite = { ferry.rename_prefix("old:", "new:") },
  phases = { "snapshot" },
}"#,
        )
        .unwrap();
        super::super::load(&path, &[]).unwrap()
    }

    #[test]
    fn a_command_only_the_loaded_table_knows_is_renamed_and_filtered() {
        let name = "FUTURESET";
        assert!(
            CommandTable::builtin().get(name).is_none(),
            "the built-in table must lack the command for this test to mean anything"
        );
        let mut specs: Vec<CommandSpec> = CommandTable::builtin().iter().cloned().collect();
        // A write with APPEND's key spec (key at argument 1) under a name 7.0 does not have.
        let mut future = CommandTable::builtin()
            .get("append")
            .expect("APPEND")
            .clone();
        future.name = name.to_lowercase();
        specs.push(future);
        let loaded = Arc::new(CommandTable::from_specs(
            specs,
            TableOrigin::Server {
                version: "9.9.9".into(),
            },
        ));

        let mapper = PlanMapper::new(plan(), loaded);
        let argv = |k: &str| Argv::from_args([name, k, "v"]);
        let mut out = Vec::new();
        mapper.map_command(0, argv("old:1"), &mut out).unwrap();
        assert_eq!(
            out,
            vec![(0, argv("new:1"))],
            "renamed through its key spec"
        );
        out.clear();
        mapper.map_command(0, argv("other:1"), &mut out).unwrap();
        assert!(out.is_empty(), "filtered out: {out:?}");

        // With the built-in table the same command has no known keys: neither rule applies,
        // which is what a mapper built from the wrong table did.
        let builtin = Arc::new(CommandTable::from_specs(
            CommandTable::builtin().iter().cloned().collect(),
            TableOrigin::Builtin,
        ));
        let mut out = Vec::new();
        PlanMapper::new(plan(), builtin)
            .map_command(0, argv("old:1"), &mut out)
            .unwrap();
        assert_ne!(out, vec![(0, argv("new:1"))]);
    }

    #[test]
    fn unmapping_finds_the_source_name() {
        let table = CommandTable::from_specs(
            CommandTable::builtin().iter().cloned().collect(),
            TableOrigin::Builtin,
        );
        let m = PlanMapper::new(plan(), Arc::new(table));
        assert_eq!(m.unmap_key(0, b"new:1"), Some((0, b"old:1".to_vec())));
        assert_eq!(m.unmap_key(0, b"keep:1"), Some((0, b"keep:1".to_vec())));
        assert_eq!(m.unmap_key(0, b"other"), None);
    }
}
