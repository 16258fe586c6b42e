-- ferry's plan helpers: the Lua half of `require "ferry"` (the Rust half passes in `env` and `plan`).
--
-- Helpers only shape tables; the Rust loader checks every field, so errors name the plan field
-- (`phases[3].max_lag_ms`) instead of a line in this file.
local ferry = ...

local function copy(t)
  local out = {}
  for k, v in pairs(t) do
    out[k] = v
  end
  return out
end

-- A table argument with `kind` set; `what` names the helper in errors, which point at the
-- helper's caller (level 3), so helpers call it as `return (tagged(…))`: the parentheses keep
-- the helper's own frame on the stack, where a tail call would drop it.
local function tagged(kind, what, t)
  if t == nil then
    t = {}
  end
  if type(t) ~= "table" then
    error(string.format("%s expects a table, got %s", what, type(t)), 3)
  end
  local out = copy(t)
  out.kind = kind
  return out
end

--- Embedded journal on local disk. `dir` is relative to the plan's folder.
--- Example: `journal = ferry.embedded { dir = "./ferry-state", fsync = "100ms" }`
function ferry.embedded(t)
  return (tagged("embedded", "ferry.embedded", t))
end

--- Journal in an SQS queue, for split capture/replay deployments.
--- Example: `journal = ferry.sqs { queue_url = "https://sqs.../ferry.fifo", fifo = true }`
function ferry.sqs(t)
  return (tagged("sqs", "ferry.sqs", t))
end

--- Renames keys starting with `from` to start with `to` instead, at every key position.
--- Example: `ferry.rename_prefix("fs:", "freshservice:")`
function ferry.rename_prefix(from, to)
  return { kind = "rename_prefix", from = from, to = to }
end

--- Moves db `from` to db `to` on the target.
--- Example: `ferry.move_db(1, 0)`
function ferry.move_db(from, to)
  return { kind = "move_db", from = from, to = to }
end

--- Never sends these commands to the target. Takes a list or several names.
--- Example: `ferry.drop_commands { "PUBLISH", "FLUSHALL" }`
function ferry.drop_commands(first, ...)
  if type(first) == "table" then
    return { kind = "drop_commands", commands = first }
  end
  return { kind = "drop_commands", commands = { first, ... } }
end

--- The catch-up phase: replay until the target trails the source by at most `max_lag_ms`.
--- Example: `ferry.catch_up { max_lag_ms = 200 }`
function ferry.catch_up(t)
  return (tagged("catch_up", "ferry.catch_up", t))
end

--- The snapshot phase with hooks. Example: `ferry.snapshot { after = function(ctx) … end }`
function ferry.snapshot(t)
  return (tagged("snapshot", "ferry.snapshot", t))
end

--- The verify phase with hooks. Example: `ferry.verify { after = function(ctx) … end }`
function ferry.verify(t)
  return (tagged("verify", "ferry.verify", t))
end

--- The cutover phase: pause writes at most `max_pause_ms`, drain, call `switch(ctx)`.
--- Example: `ferry.cutover { max_pause_ms = 2000, switch = function(ctx) ctx.log("go") end }`
function ferry.cutover(t)
  return (tagged("cutover", "ferry.cutover", t))
end

--- A custom phase named `name` that runs `run(ctx)`; `opts` may give `before`/`after`.
--- Example: `ferry.phase("warm", function(ctx) ctx.log("warming") end)`
function ferry.phase(name, run, opts)
  local p = tagged("custom", "ferry.phase (third argument)", opts)
  p.name = name
  p.run = run
  return p
end

--- A deep copy of `base` with `over` merged in: nested records of the same `kind` merge; lists,
--- other values and records of another kind from `over` replace. Use it to share a plan between environments.
--- Example: `ferry.merge(common.base, { target = { url = ferry.env "STAGING_URL" } })`
function ferry.merge(base, over)
  if type(base) ~= "table" or type(over) ~= "table" then
    error(string.format("ferry.merge expects two tables, got %s and %s", type(base), type(over)), 2)
  end
  local function is_list(t)
    return type(t) == "table" and (#t > 0 or next(t) == nil)
  end
  local function deep(a, b)
    local out = {}
    for k, v in pairs(a) do
      out[k] = type(v) == "table" and not is_list(v) and deep(v, {}) or v
    end
    for k, v in pairs(b) do
      local cur = out[k]
      -- Records of different kinds (an embedded journal replaced by SQS) replace, never mix.
      if type(v) == "table" and type(cur) == "table" and not is_list(v) and not is_list(cur)
        and v.kind == cur.kind then
        out[k] = deep(cur, v)
      else
        out[k] = v
      end
    end
    return out
  end
  return deep(base, over)
end

return ferry
