-- Filtered migration: only some keys, dbs and types move; verification skips volatile keys
-- and compares JSON documents by content.
local ferry = require "ferry"

-- Two JSON strings are equal when they hold the same fields; key order does not matter here,
-- so compare sorted "k=v" lists of a flat object.
local function fields(json)
  local out = {}
  for k, v in string.gmatch(json, '"([^"]+)"%s*:%s*("?[^,"}]*"?)') do
    out[#out + 1] = k .. "=" .. v
  end
  table.sort(out)
  return table.concat(out, ",")
end

return ferry.plan {
  api_version = 1,
  name = "filtered",
  source = { url = ferry.env "SOURCE_URL", capture = "primary" },
  target = { url = ferry.env "TARGET_URL" },
  keys = {
    include = { "user:*", "order:[0-9]*", "session:?*" },
    exclude = { "user:*:cache", "session:tmp-*" },
    dbs = { 0 },
    types = { "string", "hash", "zset" },
  },
  verify = {
    sample = 5000,
    rules = {
      { pattern = "session:*", ttl_tolerance_ms = 60000 },
      { pattern = "user:*:last_seen", ignore = true },
      {
        pattern = "order:*",
        compare = function(a, b)
          return a.type == b.type and fields(a.value) == fields(b.value)
        end,
      },
    },
  },
}
