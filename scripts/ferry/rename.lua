-- Rename helpers: common keyspace rewrites built from ferry.rename_prefix and ferry.move_db.
--
-- Rules apply first-match-wins, so the helpers order what they return: longest prefixes first.
local ferry = require "ferry"
local rename = {}

--- Puts every key under `ns` (`user:1` → `app:user:1` for `rename.namespace "app:"`).
--- Example: `rewrite = { rename.namespace "app:" }`
function rename.namespace(ns)
  return ferry.rename_prefix("", ns)
end

--- Removes `prefix` from the keys that have it.
--- Example: `rewrite = { rename.strip "legacy:" }`
function rename.strip(prefix)
  return ferry.rename_prefix(prefix, "")
end

--- Exchanges two prefixes (`a:1` ↔ `b:1`).
--- Example: `rewrite = rename.swap("blue:", "green:")`
function rename.swap(a, b)
  return { ferry.rename_prefix(a, b), ferry.rename_prefix(b, a) }
end

--- One rule per `from = to` pair, longest `from` first so specific prefixes win.
--- Example: `rewrite = rename.prefixes { ["fs:"] = "freshservice:", ["fs:tmp:"] = "scratch:" }`
function rename.prefixes(map)
  if type(map) ~= "table" then
    error("rename.prefixes expects a table of from = to pairs", 2)
  end
  local froms = {}
  for from in pairs(map) do
    froms[#froms + 1] = from
  end
  table.sort(froms, function(x, y)
    if #x ~= #y then
      return #x > #y
    end
    return x < y
  end)
  local out = {}
  for i, from in ipairs(froms) do
    out[i] = ferry.rename_prefix(from, map[from])
  end
  return out
end

--- One `move_db` per `from = to` pair, in db order.
--- Example: `rewrite = rename.dbs { [1] = 0, [2] = 0 }`
function rename.dbs(map)
  if type(map) ~= "table" then
    error("rename.dbs expects a table of from = to pairs", 2)
  end
  local froms = {}
  for from in pairs(map) do
    froms[#froms + 1] = from
  end
  table.sort(froms)
  local out = {}
  for i, from in ipairs(froms) do
    out[i] = ferry.move_db(from, map[from])
  end
  return out
end

--- Concatenates rules and lists of rules into one list, for `rewrite`.
--- Example: `rewrite = rename.concat(rename.swap("a:", "b:"), ferry.move_db(1, 0))`
function rename.concat(...)
  local out = {}
  for i = 1, select("#", ...) do
    local item = select(i, ...)
    if type(item) == "table" and item.kind == nil then
      for _, rule in ipairs(item) do
        out[#out + 1] = rule
      end
    else
      out[#out + 1] = item
    end
  end
  return out
end

return rename
