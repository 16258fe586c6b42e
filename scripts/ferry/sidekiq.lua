-- Sidekiq presets: the keys a Sidekiq installation keeps in Redis, and verification rules for them.
--
-- Without redis-namespace, Sidekiq's keys are `queues`, `queue:<name>`, `schedule`, `retry`,
-- `dead`, `processes`, the per-process heartbeat hashes and `stat:*`; with a namespace, each is
-- prefixed with `<namespace>:`.
local ferry = require "ferry"
local sidekiq = {}

local function prefixed(ns, list)
  local out = {}
  for i, p in ipairs(list) do
    out[i] = ns and (ns .. ":" .. p) or p
  end
  return out
end

local PATTERNS = { "queues", "queue:*", "schedule", "retry", "dead", "processes", "stat:*" }

--- The keys of a Sidekiq installation without namespace, for `keys.include`.
--- Example: `keys = { include = sidekiq.keys }`
sidekiq.keys = prefixed(nil, PATTERNS)

--- Verification rules: heartbeat data (`processes`) is rewritten every few seconds with a
--- 60 s TTL, so its TTL may drift by that much between the two reads.
--- Example: `verify = { rules = sidekiq.verify_rules }`
sidekiq.verify_rules = {
  { pattern = "processes", ttl_tolerance_ms = 60000 },
}

--- Rules for verifying while Sidekiq already writes to one side (after a cutover, say): the hot
--- counters are skipped as well.
sidekiq.relaxed_rules = {
  { pattern = "processes", ttl_tolerance_ms = 60000 },
  { pattern = "stat:processed", ignore = true },
  { pattern = "stat:failed", ignore = true },
  { pattern = "stat:processed:*", ignore = true },
  { pattern = "stat:failed:*", ignore = true },
}

--- The same presets for a redis-namespace prefix: `{ keys = …, verify_rules = …, relaxed_rules = … }`.
--- Example: `local sk = sidekiq.namespaced "sidekiq"` then `keys = { include = sk.keys }`
function sidekiq.namespaced(ns)
  if type(ns) ~= "string" or ns == "" then
    error("sidekiq.namespaced expects the namespace, e.g. \"sidekiq\"", 2)
  end
  local function rules(list)
    local out = {}
    for i, r in ipairs(list) do
      local copy = {}
      for k, v in pairs(r) do
        copy[k] = v
      end
      copy.pattern = ns .. ":" .. r.pattern
      out[i] = copy
    end
    return out
  end
  -- Strict like the module: `sk.keyz` is an error with a "did you mean", not a nil include.
  return ferry.strict({
    keys = prefixed(ns, PATTERNS),
    verify_rules = rules(sidekiq.verify_rules),
    relaxed_rules = rules(sidekiq.relaxed_rules),
  }, string.format("sidekiq.namespaced(%q)", ns))
end

return sidekiq
