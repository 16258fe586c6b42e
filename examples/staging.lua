-- Staging: the common plan with a small snapshot, a full verification and no cutover.
local ferry = require "ferry"
local common = require "common"

return ferry.plan(common.plan {
  name = "staging",
  journal = ferry.embedded { dir = "./ferry-state/staging", fsync = "1s" },
  snapshot = { workers = 2 },
  verify = { sample = 100000 },
})
