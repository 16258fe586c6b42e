-- The plan `make demo` runs: everything from an ElastiCache-like source, snapshot then catch-up,
-- replaying until ferry is stopped (Ctrl-C / SIGTERM), which ends at a final fence.
local ferry = require "ferry"

return ferry.plan {
  api_version = 1,
  name = "demo",
  source = { url = ferry.env "SOURCE_URL", capture = "primary" },
  target = { url = ferry.env "TARGET_URL" },
  journal = ferry.embedded { dir = ferry.env("FERRY_STATE_DIR", "ferry-state"), fsync = "100ms" },
  snapshot = { workers = 4 },
  phases = {
    ferry.phase("announce", function(ctx) ctx.log("demo plan: snapshot, then catch up") end),
    "snapshot",
    ferry.catch_up { max_lag_ms = 500 },
  },
}
