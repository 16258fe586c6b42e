-- ElastiCache presets: source settings, URL building and notes for AWS ElastiCache (Redis OSS, Valkey).
--
-- ElastiCache refuses SYNC, PSYNC, REPLICAOF and CONFIG, which is why ferry captures with MONITOR;
-- nothing here needs a support ticket or renamed commands.
local ec = {}

--- Things worth knowing before migrating off ElastiCache; `ferry check` prints none of this,
--- read it once.
ec.notes = {
  "ElastiCache refuses SYNC, PSYNC, REPLICAOF and CONFIG: ferry captures writes with MONITOR, "
    .. "which costs the source CPU while it runs (measure it on a replica of your workload first).",
  "Clusters with in-transit encryption need rediss:// URLs; certificates are verified "
    .. "(append #insecure to the URL only to test).",
  "With an AUTH token or an RBAC user, put it in the URL: rediss://user:token@host:6379 "
    .. "(ec.url does the escaping).",
  "ElastiCache endpoints are reachable only from inside their VPC: run ferry there.",
  "capture = \"primary\" reads the primary endpoint you give; replicas of a replication group are "
    .. "separate endpoints, which \"auto\" cannot always reach.",
}

local function escape(s)
  return (string.gsub(s, "[^%w%-%._~]", function(c)
    return string.format("%%%02X", string.byte(c))
  end))
end

--- Builds a URL for an ElastiCache endpoint: TLS by default, token and user escaped.
--- Example: `ec.url { host = "master.my-cache.abc123.use1.cache.amazonaws.com", token = ferry.env "EC_TOKEN" }`
function ec.url(t)
  if type(t) ~= "table" or type(t.host) ~= "string" then
    error("ec.url expects { host = \"…\" [, port, token, user, tls, db] }", 2)
  end
  local scheme = (t.tls == false) and "redis" or "rediss"
  local auth = ""
  if t.token ~= nil then
    auth = (t.user and escape(t.user) or "") .. ":" .. escape(tostring(t.token)) .. "@"
  end
  local url = string.format("%s://%s%s:%d", scheme, auth, t.host, t.port or 6379)
  if t.db ~= nil then
    url = url .. "/" .. tostring(t.db)
  end
  return url
end

--- A source table for an ElastiCache endpoint: capture from the endpoint itself.
--- Example: `source = ec.source(ferry.env "SOURCE_URL")`
function ec.source(url, opts)
  opts = opts or {}
  return { url = url, capture = opts.capture or "primary" }
end

--- Commands an ElastiCache source never runs for clients but that may still show up in a
--- stream from another source; dropping them keeps a target from refusing a whole batch.
ec.admin_commands = { "CONFIG", "REPLICAOF", "SLAVEOF", "SYNC", "PSYNC", "DEBUG", "SHUTDOWN" }

return ec
