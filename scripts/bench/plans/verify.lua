-- Benchmark plan: snapshot, catch up, a full fenced verification, then stop at a final fence.
local ferry = require "ferry"
return ferry.plan {
  api_version = 1,
  source = { url = ferry.env "SOURCE_URL", capture = "primary" },
  target = { url = ferry.env "TARGET_URL" },
  journal = ferry.embedded { dir = ferry.env "FERRY_STATE_DIR" },
  verify = { full = true },
  phases = { "snapshot", "catch_up", "verify", ferry.cutover { max_pause_ms = 5000 } },
}
