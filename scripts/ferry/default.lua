-- The default plan: what `ferry migrate` (and `ferry capture`) runs without a plan file
-- (snapshot, then catch up).
--
-- The CLI passes every flag in as an input, and only this way: --source → SOURCE_URL,
-- --target → TARGET_URL, --capture → FERRY_CAPTURE, --state-dir → FERRY_STATE_DIR, --verify →
-- FERRY_VERIFY ("full" or a sample size; empty for no verify phase), --workers → FERRY_WORKERS,
-- --max-source-ops → FERRY_MAX_SOURCE_OPS, --replay-shards → FERRY_REPLAY_SHARDS, --max-pause-ms → FERRY_MAX_PAUSE_MS,
-- --max-monitor-buffer → FERRY_MAX_MONITOR_BUFFER, --quiet-ms → FERRY_QUIET_MS,
-- --max-trailing-ms → FERRY_MAX_TRAILING_MS, --on-conflict → FERRY_ON_CONFLICT, --hold-source →
-- FERRY_HOLD_SOURCE=1; for `ferry capture`, --queue → FERRY_QUEUE,
-- --shards → FERRY_SHARDS, --create-queue → FERRY_CREATE_QUEUE=1; --metrics-addr →
-- FERRY_METRICS_ADDR (empty for no metrics listener).
local ferry = require "ferry"

-- An input given as a number, or nil when empty (ferry's default then applies).
local function number(name)
  local v = ferry.env(name, "")
  if v == "" then
    return nil
  end
  return tonumber(v) or error(name .. " must be a number, got " .. v)
end

local max_pause_ms = number "FERRY_MAX_PAUSE_MS"

local phases = { "snapshot", "catch_up" }
local verify = ferry.env("FERRY_VERIFY", "")
if verify ~= "" then
  phases[#phases + 1] = "verify"
end
-- --cutover → FERRY_CUTOVER=1 (--reverse-sync → FERRY_REVERSE_SYNC=1): pause, drain, switch.
if ferry.env("FERRY_CUTOVER", "") == "1" then
  phases[#phases + 1] = ferry.cutover {
    reverse_sync = ferry.env("FERRY_REVERSE_SYNC", "") == "1",
    hold_source = ferry.env("FERRY_HOLD_SOURCE", "") == "1",
    quiet_ms = number "FERRY_QUIET_MS",
    max_trailing_ms = number "FERRY_MAX_TRAILING_MS",
    on_conflict = ferry.env("FERRY_ON_CONFLICT", "") ~= "" and ferry.env "FERRY_ON_CONFLICT" or nil,
    max_pause_ms = max_pause_ms,
    switch = function(ctx)
      ctx.log("Final fence reached: point your clients at the target now; held clients are disconnected so they reconnect.")
    end,
  }
end

local state_dir = ferry.env("FERRY_STATE_DIR", "ferry-state")
local journal = ferry.embedded { dir = state_dir }
local queue = ferry.env("FERRY_QUEUE", "")
if queue ~= "" then
  journal = ferry.sqs {
    queue_url = queue,
    shards = number "FERRY_SHARDS",
    create_queue = ferry.env("FERRY_CREATE_QUEUE", "") == "1",
    dir = state_dir,
  }
end

-- --source-ca/--source-cert/--source-key/--source-tls-server-name (and --target-…) arrive as
-- FERRY_SOURCE_CA, FERRY_SOURCE_CERT, …; unset ones are empty.
local function tls(side)
  local t, any = {}, false
  for field, name in pairs { ca = "CA", cert = "CERT", key = "KEY", server_name = "TLS_SERVER_NAME" } do
    local v = ferry.env("FERRY_" .. side .. "_" .. name, "")
    if v ~= "" then
      t[field], any = v, true
    end
  end
  return any and t or nil
end

return ferry.plan {
  api_version = 1,
  name = "default",
  source = {
    url = ferry.env "SOURCE_URL",
    capture = ferry.env("FERRY_CAPTURE", "auto"),
    max_monitor_buffer = number "FERRY_MAX_MONITOR_BUFFER",
    tls = tls "SOURCE",
  },
  target = { url = ferry.env "TARGET_URL", tls = tls "TARGET" },
  journal = journal,
  snapshot = { workers = number "FERRY_WORKERS", max_source_ops = number "FERRY_MAX_SOURCE_OPS" },
  replay = { shards = number "FERRY_REPLAY_SHARDS" },
  final_fence = { max_pause_ms = max_pause_ms },
  verify = (verify == "" or verify == "full") and { full = true } or { sample = tonumber(verify) },
  phases = phases,
  metrics_addr = ferry.env("FERRY_METRICS_ADDR", ""),
}
