-- The default plan: what `ferry migrate` runs without a plan file (snapshot, then catch up).
--
-- The CLI passes its flags in as overrides: --source → SOURCE_URL, --target → TARGET_URL,
-- --capture → FERRY_CAPTURE, --state-dir → FERRY_STATE_DIR, --verify → FERRY_VERIFY ("full"
-- or a sample size; empty for no verify phase).
local ferry = require "ferry"

local phases = { "snapshot", "catch_up" }
local verify = ferry.env("FERRY_VERIFY", "")
if verify ~= "" then
  phases[#phases + 1] = "verify"
end
-- --cutover → FERRY_CUTOVER=1 (--reverse-sync → FERRY_REVERSE_SYNC=1): pause, drain, switch.
if ferry.env("FERRY_CUTOVER", "") == "1" then
  phases[#phases + 1] = ferry.cutover {
    reverse_sync = ferry.env("FERRY_REVERSE_SYNC", "") == "1",
    switch = function(ctx)
      ctx.log("Final fence reached: point your clients at the target now; held clients are disconnected so they reconnect.")
    end,
  }
end

return ferry.plan {
  api_version = 1,
  name = "default",
  source = { url = ferry.env "SOURCE_URL", capture = ferry.env("FERRY_CAPTURE", "auto") },
  target = { url = ferry.env "TARGET_URL" },
  journal = ferry.embedded { dir = ferry.env("FERRY_STATE_DIR", "ferry-state") },
  verify = (verify == "" or verify == "full") and { full = true } or { sample = tonumber(verify) },
  phases = phases,
}
