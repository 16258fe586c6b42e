-- Benchmark plan: a declarative rename (compiled to a native matcher) on every key.
local ferry = require "ferry"
return ferry.plan {
  api_version = 1,
  source = { url = ferry.env "SOURCE_URL", capture = "primary" },
  target = { url = ferry.env "TARGET_URL" },
  journal = ferry.embedded { dir = ferry.env "FERRY_STATE_DIR" },
  rewrite = { ferry.rename_prefix("key:", "k2:"), ferry.rename_prefix("my", "our") },
  phases = { "snapshot", "catch_up" },
}
