-- The plan of docs/runbook.md: a live migration with a fenced verification and a cutover whose
-- switch runs the operator's own command. Every value comes from `--set NAME=VALUE` or the
-- environment, so one file serves the rehearsal and the production run:
--
--   SOURCE_URL, TARGET_URL   the two servers (passwords in the URL are never logged)
--   FERRY_STATE              the state directory: journal, status, report
--   CUTOVER                  "yes" (default) ends with the cutover; "no" stops at a final fence
--                            after verifying (the rehearsal)
--   SWITCH_COMMAND           the program that points the application at the target (no shell;
--                            it gets no arguments: wrap a longer command in a script)
--   MAX_PAUSE_MS, MAX_LAG_MS the cutover's write pause limit and lag gate
local ferry = require "ferry"

local phases = {
  "snapshot",
  ferry.catch_up { max_lag_ms = tonumber(ferry.env("MAX_LAG_MS", "500")) },
  "verify",
}

if ferry.env("CUTOVER", "yes") == "yes" then
  phases[#phases + 1] = ferry.cutover {
    max_pause_ms = tonumber(ferry.env("MAX_PAUSE_MS", "2000")),
    max_lag_ms = tonumber(ferry.env("MAX_LAG_MS", "500")),
    quiet_ms = 3000,
    commands = { switch = { ferry.env "SWITCH_COMMAND" } },
    switch = function(ctx)
      ctx.log("switching " .. ctx.call("source", "DBSIZE") .. " keys of db 0 to the target")
      local code = ctx.run("switch")
      if code ~= 0 then
        error("the switch command exited with " .. code)
      end
    end,
  }
end

return ferry.plan {
  api_version = 1,
  name = "runbook",
  source = { url = ferry.env "SOURCE_URL", capture = "auto" },
  target = { url = ferry.env "TARGET_URL" },
  journal = ferry.embedded { dir = ferry.env "FERRY_STATE" },
  -- Every key is compared inside the run, at one stream position on both sides.
  verify = { ttl_tolerance_ms = 2000 },
  phases = phases,
}
