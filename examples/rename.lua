-- Keyspace rename: new prefixes, two dbs folded into one, and a hook that turns per-name
-- counters into fields of one hash.
local ferry = require "ferry"
local rename = require "ferry.rename"

return ferry.plan {
  api_version = 1,
  source = { url = ferry.env "SOURCE_URL" },
  target = { url = ferry.env "TARGET_URL" },
  rewrite = rename.concat(
    rename.prefixes { ["fs:"] = "freshservice:", ["fs:tmp:"] = "scratch:" },
    rename.dbs { [1] = 0, [2] = 0 }
  ),
  -- `INCR stats:<name>` becomes `HINCRBY stats <name> 1`; runs after the rules above.
  on_command = function(cmd)
    if cmd.name == "INCR" then
      local key = cmd:key(1)
      if key:sub(1, 6) == "stats:" then
        cmd:drop()
        cmd:emit("HINCRBY", "stats", key:sub(7), 1)
      end
    end
  end,
  on_hook_error = "skip",
  check = {
    samples = {
      { "SET", "fs:1", "v" },
      { "SET", "fs:tmp:1", "v" },
      { db = 1, "RENAME", "fs:a", "fs:b" },
      { "INCR", "stats:logins" },
    },
  },
}
