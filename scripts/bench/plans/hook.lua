-- Benchmark plan: a per-command Lua hook that looks at every command and renames its keys.
local ferry = require "ferry"
return ferry.plan {
  api_version = 1,
  source = { url = ferry.env "SOURCE_URL", capture = "primary" },
  target = { url = ferry.env "TARGET_URL" },
  journal = ferry.embedded { dir = ferry.env "FERRY_STATE_DIR" },
  on_command = function(cmd)
    local keys = cmd:keys()
    local k = keys[1]
    if k and string.sub(k, 1, 4) == "key:" then cmd:set_key(1, "k2:" .. string.sub(k, 5)) end
  end,
  phases = { "snapshot", "catch_up" },
}
