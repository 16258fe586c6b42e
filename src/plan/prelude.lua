-- Sandbox prelude: runs first in every plan state and narrows the base library for plans.
local tripped, log, warn_log = ...
local raw_pcall, raw_xpcall, raw_load, raw_collectgarbage = pcall, xpcall, load, collectgarbage
local raw_setmetatable, rawget, type = setmetatable, rawget, type
local select, tostring, error = select, tostring, error
local pack, concat = table.pack, table.concat

-- A spent instruction budget must end the run: a plan's own pcall may not swallow it.
local function pass(ok, ...)
  if not ok and tripped() then
    error((...), 0)
  end
  return ok, ...
end

function pcall(f, ...)
  return pass(raw_pcall(f, ...))
end

function xpcall(f, handler, ...)
  return pass(raw_xpcall(f, handler, ...))
end

-- Text chunks only: crafted bytecode can crash the VM. An explicit nil `env` must stay explicit.
function load(...)
  local chunk, name, _, env = ...
  if select("#", ...) >= 4 then
    return raw_load(chunk, name, "t", env)
  end
  return raw_load(chunk, name, "t")
end

-- Finalizers run when a state closes, outside any budget, so an endless `__gc` would hang ferry
-- on exit. Lua 5.4 marks an object for finalization only if `__gc` is present when the metatable
-- is set, so checking here is enough.
function setmetatable(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("setmetatable: __gc metamethods are not available to plans", 2)
  end
  return raw_setmetatable(t, mt)
end

-- Plans may read their memory use, not steer the collector of a state shared with hooks.
function collectgarbage(opt, ...)
  if opt == "count" then
    return raw_collectgarbage("count")
  end
  error('collectgarbage: only collectgarbage("count") is available to plans', 2)
end

local function joined(...)
  local t = pack(...)
  for i = 1, t.n do
    t[i] = tostring(t[i])
  end
  return concat(t, "\t")
end

-- Output goes to ferry's log, never to the terminal ferry draws its progress on.
function print(...)
  log(joined(...))
end

function warn(...)
  warn_log(joined(...))
end
