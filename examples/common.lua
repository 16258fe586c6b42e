-- Shared settings of the staging and production plans: which keys move, how they are renamed,
-- how the result is verified. Both plans `require "common"` (found next to them).
local ferry = require "ferry"
local sidekiq = require "ferry.sidekiq"

local common = {}

-- Sidekiq runs under the "sidekiq" redis-namespace in both environments.
local sk = sidekiq.namespaced "sidekiq"

common.keys = {
  include = { "fs:*", table.unpack(sk.keys) },
  exclude = { "fs:cache:*" },
  dbs = { 0, 1 },
}

common.rewrite = {
  ferry.rename_prefix("fs:", "freshservice:"),
  ferry.move_db(1, 0),
  ferry.drop_commands { "PUBLISH", "FLUSHALL", "FLUSHDB" },
}

--- The plan both environments start from; `overrides` is merged over it (ferry.merge).
function common.plan(overrides)
  return ferry.merge({
    api_version = 1,
    source = { url = ferry.env "SOURCE_URL", capture = "auto" },
    target = { url = ferry.env "TARGET_URL" },
    keys = common.keys,
    rewrite = common.rewrite,
    verify = { sample = 20000, ttl_tolerance_ms = 2000, rules = sk.verify_rules },
    phases = { "snapshot", ferry.catch_up { max_lag_ms = 200 }, "verify" },
  }, overrides or {})
end

return common
