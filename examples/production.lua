-- Production: ElastiCache source, throttled snapshot, verification, then a cutover whose switch
-- hook logs the moment clients should move; a custom phase warms the target afterwards.
local ferry = require "ferry"
local ec = require "ferry.elasticache"
local common = require "common"

return ferry.plan(common.plan {
  name = "production",
  source = ec.source(ferry.env "SOURCE_URL"),
  journal = ferry.embedded { dir = "./ferry-state/production", fsync = "100ms" },
  snapshot = { workers = 4, max_source_ops = 50000 },
  on_hook_error = "fail",
  phases = {
    ferry.snapshot {
      before = function(ctx)
        ctx.log("snapshot of " .. ctx.plan .. " starts")
      end,
    },
    ferry.catch_up { max_lag_ms = 200 },
    ferry.verify {
      after = function(ctx)
        ctx.log("lag after verification: " .. ctx.lag_ms() .. " ms")
      end,
    },
    ferry.cutover {
      max_pause_ms = tonumber(ferry.env("CUTOVER_MAX_PAUSE_MS", "2000")),
      switch = function(ctx)
        ctx.log("switching: point the application at the target now")
      end,
    },
    ferry.phase("settle", function(ctx)
      -- Give clients a few seconds to reconnect before ferry reports success.
      ctx.sleep(5000)
      ctx.log("settled")
    end),
  },
})
