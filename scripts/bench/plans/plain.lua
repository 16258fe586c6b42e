-- Benchmark plan: no rules, no hook (the baseline for the plan benchmark).
local ferry = require "ferry"
return ferry.plan {
  api_version = 1,
  source = { url = ferry.env "SOURCE_URL", capture = "primary" },
  target = { url = ferry.env "TARGET_URL" },
  journal = ferry.embedded { dir = ferry.env "FERRY_STATE_DIR" },
  phases = { "snapshot", "catch_up" },
}
