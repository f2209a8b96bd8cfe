#!lua name=tollgate_v1
--[[
Tollgate's fleet ledger: budgets, holds and freezes shared by every instance on one Redis.
Loaded by src/ledger/fleet/mod.rs with FUNCTION LOAD REPLACE; called with FCALL (tg_status
also with FCALL_RO). The name carries a version: a change of contract is a new library
(tollgate_v2) so instances of two releases can run side by side during a rolling deploy.

Invariant, for every budget key B with a limit:  committed(B) + held(B) <= limit(B).
A hold leaves only by tg_settle (the true cost) or by expiry, which burns it into committed.

Amounts are integer nano-dollars passed as decimal strings. Lua 5.1 numbers are doubles, exact
for integers up to 2^53 - 1, so every amount and limit is checked to be an integer in
[0, 2^53 - 1] (about $9M) and every counter is changed by HINCRBY on the server (i64).
No float is ever stored.

Keys. Every call passes the five meta keys of ONE hash tag, then its budget keys:
  KEYS[1] tg:{T}:cfg    hash: frozen ("1"/"0"), version (bumped by tg_freeze)
  KEYS[2] tg:{T}:holds  hash: hold id -> JSON record of an open hold
  KEYS[3] tg:{T}:hexp   zset: hold id by expiry (ms, server TIME)
  KEYS[4] tg:{T}:done   hash: hold id -> JSON tombstone (settled, burned, corrected, void)
  KEYS[5] tg:{T}:dexp   zset: tombstone id by the time it may be forgotten (ms)
  KEYS[6..] tg:{T}:b:…  hash: committed, held (one per account: project window, team, key, user)
All keys must share the tag {T} (checked), so a call is one slot: atomic and Cluster-safe.
Two exceptions, both documented: tg_reap burns into the budget keys recorded in each hold
(same tag, so same slot), and every function reads the global generation key tg:gen, set
by the client after loading (SET NX): in Redis Cluster tg:gen lives in another slot, so
Cluster needs a per-tag generation first (see mod.rs).

Replies are arrays: { status, generation, numbers… }; generation is "" when tg:gen is gone.
Errors: "TGARG <why>" for a bad argument (nothing was changed), "TGSTATE <why>" for data
that is not ours (a budget field that is not an integer).
]]

local MAX = 9007199254740991 -- 2^53 - 1
local META = 5
local MAX_ACCOUNTS = 16
local MAX_TTL_S = 7 * 86400
local MAX_ID = 200
local REAP_ON_RESERVE = 8
local MAX_REAP = 1000
local VOID_KEEP_MS = 2 * 86400 * 1000

local function argerr(why)
  return redis.error_reply('TGARG ' .. why)
end

local function staterr(why)
  return redis.error_reply('TGSTATE ' .. why)
end

-- An integer argument in [lo, MAX], or nil. Only plain decimal digits (and "-1" where lo is -1).
local function int_arg(s, lo)
  if type(s) ~= 'string' or #s == 0 or #s > 17 or not string.match(s, '^%-?%d+$') then
    return nil
  end
  local n = tonumber(s)
  if n == nil or n < lo or n > MAX then
    return nil
  end
  return n
end

-- Canonical decimal for HINCRBY (Redis refuses "-0" and leading zeros).
local function dec(n)
  return string.format('%d', n)
end

local function tag_of(k)
  if type(k) ~= 'string' then
    return nil
  end
  local s = string.find(k, '{', 1, true)
  if not s then
    return nil
  end
  local e = string.find(k, '}', s + 1, true)
  if not e or e == s + 1 then
    return nil
  end
  return string.sub(k, s + 1, e - 1)
end

-- The meta keys must be exactly the layout above, and every budget key must carry the same tag,
-- start with tg:{T}:b: and appear once. Returns the number of budget keys, or nil and an error.
local function check_keys(keys, min_budget, max_budget)
  if #keys < META then
    return nil, argerr('want the 5 meta keys first')
  end
  local tag = tag_of(keys[1])
  if not tag then
    return nil, argerr('KEYS[1] has no {hash tag}')
  end
  local p = 'tg:{' .. tag .. '}:'
  local want = { p .. 'cfg', p .. 'holds', p .. 'hexp', p .. 'done', p .. 'dexp' }
  for i = 1, META do
    if keys[i] ~= want[i] then
      return nil, argerr('KEYS[' .. i .. '] must be ' .. want[i])
    end
  end
  local n = #keys - META
  if n < min_budget or n > max_budget then
    return nil, argerr('want ' .. min_budget .. '..' .. max_budget .. ' budget keys, got ' .. n)
  end
  local seen = {}
  local bp = p .. 'b:'
  for i = META + 1, #keys do
    local k = keys[i]
    if tag_of(k) ~= tag or string.sub(k, 1, #bp) ~= bp or #k == #bp then
      return nil, argerr('budget key ' .. (i - META - 1) .. ' must start with ' .. bp)
    end
    if seen[k] then
      return nil, argerr('budget key ' .. (i - META - 1) .. ' repeats')
    end
    seen[k] = true
  end
  return n, nil
end

local function id_ok(s)
  return type(s) == 'string' and #s > 0 and #s <= MAX_ID
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function generation()
  local g = redis.call('GET', 'tg:gen')
  if g then
    return g
  end
  return ''
end

-- A stored result { status, "n", "n", … } → the reply { status, gen, n, n, … }.
local function reply(r, gen)
  local out = { r[1], gen }
  for i = 2, #r do
    out[i + 1] = tonumber(r[i])
  end
  return out
end

local function decode(raw)
  local ok, rec = pcall(cjson.decode, raw)
  if ok and type(rec) == 'table' and type(rec.k) == 'table' and type(rec.m) == 'table' then
    return rec
  end
  if ok and type(rec) == 'table' and rec.s == 'void' then
    return rec
  end
  return nil
end

-- Reads committed and held of a budget key: numbers, or nil when a field is not an integer.
local function balance(k)
  local v = redis.call('HMGET', k, 'committed', 'held')
  local c = tonumber(v[1] or '0')
  local h = tonumber(v[2] or '0')
  if c == nil or h == nil or c ~= math.floor(c) or h ~= math.floor(h) then
    return nil, nil
  end
  return c, h
end

-- Keep a tombstone until a late settle or a client resend can no longer arrive.
local function keep_ms(rec)
  local ttl = tonumber(rec.t) or MAX_TTL_S
  return (2 * ttl + 86400) * 1000
end

local function same_keys(rec, keys, n)
  if #rec.k ~= n then
    return false
  end
  for i = 1, n do
    if rec.k[i] ~= keys[META + i] then
      return false
    end
  end
  return true
end

-- Burn up to `limit` expired holds into committed (never refunded: the request may have been
-- served), leaving a tombstone so a late settle can correct the burn; forget up to `limit`
-- tombstones past their keep time. Returns burned, forgotten.
local function reap(keys, now, limit)
  local burned = 0
  local ids = redis.call('ZRANGEBYSCORE', keys[3], '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    redis.call('ZREM', keys[3], id)
    local raw = redis.call('HGET', keys[2], id)
    local rec = raw and decode(raw)
    if rec and rec.k then
      for i, k in ipairs(rec.k) do
        local a = tonumber(rec.m[i]) or 0
        if a ~= 0 then
          redis.call('HINCRBY', k, 'held', dec(-a))
          redis.call('HINCRBY', k, 'committed', dec(a))
        end
      end
      rec.s = 'burned'
      rec.b = dec(now)
      redis.call('HDEL', keys[2], id)
      redis.call('HSET', keys[4], id, cjson.encode(rec))
      redis.call('ZADD', keys[5], now + keep_ms(rec), id)
      burned = burned + 1
    end
    -- A record we cannot read stays in the holds hash for a human; it no longer expires.
  end
  local old = redis.call('ZRANGEBYSCORE', keys[5], '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(old) do
    redis.call('ZREM', keys[5], id)
    redis.call('HDEL', keys[4], id)
  end
  return burned, #old
end

--[[ tg_reserve
KEYS: the 5 meta keys, then 1..16 budget keys.
ARGV: hold_id, owner, ttl_s, then per budget key: limit (nanos, or -1: no limit), amount (nanos).
Replies:
  { "ok", gen, version, expires_ms, remaining_1, … }   remaining -1 for an account without limit
  { "refused", gen, version, index, committed, held, limit }   index 0-based, nothing changed
  { "frozen", gen, version }      nothing changed
  { "void", gen }                 the id was settled before this reserve arrived: nothing held
  { "nogen", "" }                 tg:gen is gone (data lost): nothing admitted until rebuilt
A repeated hold id returns the stored result of the first admission and changes nothing.
Refusals are not stored: they hold nothing, so a resend is evaluated afresh (and a flood of
refused requests costs no writes).
]]
local function tg_reserve(keys, args)
  local n, err = check_keys(keys, 1, MAX_ACCOUNTS)
  if not n then
    return err
  end
  if #args ~= 3 + 2 * n then
    return argerr('want hold_id, owner, ttl_s and (limit, amount) for each of ' .. n .. ' budget keys')
  end
  local id, owner = args[1], args[2]
  if not id_ok(id) then
    return argerr('hold_id must be 1..' .. MAX_ID .. ' bytes')
  end
  if not id_ok(owner) then
    return argerr('owner must be 1..' .. MAX_ID .. ' bytes')
  end
  local ttl = int_arg(args[3], 1)
  if not ttl or ttl > MAX_TTL_S then
    return argerr('ttl_s must be an integer in 1..' .. MAX_TTL_S)
  end
  local limits, amounts = {}, {}
  for i = 1, n do
    limits[i] = int_arg(args[2 + 2 * i], -1)
    amounts[i] = int_arg(args[3 + 2 * i], 0)
    if not limits[i] then
      return argerr('limit ' .. (i - 1) .. ' must be -1 or an integer in 0..' .. dec(MAX))
    end
    if not amounts[i] then
      return argerr('amount ' .. (i - 1) .. ' must be an integer in 0..' .. dec(MAX))
    end
  end

  local gen = generation()
  local prior = redis.call('HGET', keys[2], id) or redis.call('HGET', keys[4], id)
  if prior then
    local rec = decode(prior)
    if rec and rec.r then
      return reply(rec.r, gen)
    end
    if rec and rec.s == 'void' then
      return { 'void', gen }
    end
    return staterr('hold ' .. id .. ' has a record that is not ours')
  end
  if gen == '' then
    return { 'nogen', '' }
  end

  local cfg = redis.call('HMGET', keys[1], 'frozen', 'version')
  local version = tonumber(cfg[2] or '0') or 0
  if cfg[1] == '1' then
    return { 'frozen', gen, version }
  end

  local cur = {}
  for i = 1, n do
    local c, h = balance(keys[META + i])
    if c == nil then
      return staterr('budget key ' .. (i - 1) .. ' has a field that is not an integer')
    end
    cur[i] = c + h
    if limits[i] >= 0 and c + h + amounts[i] > limits[i] then
      return { 'refused', gen, version, i - 1, c, h, limits[i] }
    end
  end

  local now = now_ms()
  local expires = now + ttl * 1000
  local r = { 'ok', dec(version), dec(expires) }
  local ks, ms = {}, {}
  for i = 1, n do
    local k = keys[META + i]
    if amounts[i] ~= 0 then
      redis.call('HINCRBY', k, 'held', dec(amounts[i]))
    end
    if limits[i] >= 0 then
      r[3 + i] = dec(limits[i] - cur[i] - amounts[i])
    else
      r[3 + i] = '-1'
    end
    ks[i] = k
    ms[i] = dec(amounts[i])
  end
  local rec = { o = owner, e = dec(expires), t = dec(ttl), k = ks, m = ms, r = r }
  redis.call('HSET', keys[2], id, cjson.encode(rec))
  redis.call('ZADD', keys[3], expires, id)
  reap(keys, now, REAP_ON_RESERVE)
  return reply(r, gen)
end

--[[ tg_settle
KEYS: the 5 meta keys, then the budget keys of the hold, in the order they were reserved.
ARGV: hold_id, then the actual cost (nanos) per budget key.
Replies:
  { "settled", gen, overrun_1, … }    held -= amount; committed += actual (all of it)
  { "corrected", gen, overrun_1, … }  the hold had expired and was burned: committed += actual - amount
  { "not_held", gen }                  no hold by this id (never reserved, refused, or forgotten);
                                       a "void" tombstone makes a late reserve with this id hold nothing
overrun_i = max(0, actual_i - amount_i): charged in full, reported so the caller can flag it.
A repeated settle returns the first answer and changes nothing (whatever actuals it carries).
]]
local function tg_settle(keys, args)
  local n, err = check_keys(keys, 0, MAX_ACCOUNTS)
  if not n then
    return err
  end
  if #args ~= 1 + n then
    return argerr('want hold_id and an actual amount for each of ' .. n .. ' budget keys')
  end
  local id = args[1]
  if not id_ok(id) then
    return argerr('hold_id must be 1..' .. MAX_ID .. ' bytes')
  end
  local actual = {}
  for i = 1, n do
    actual[i] = int_arg(args[1 + i], 0)
    if not actual[i] then
      return argerr('actual ' .. (i - 1) .. ' must be an integer in 0..' .. dec(MAX))
    end
  end
  local gen = generation()
  local now = now_ms()

  local raw = redis.call('HGET', keys[2], id)
  local state = 'open'
  if not raw then
    raw = redis.call('HGET', keys[4], id)
    state = 'done'
  end
  if not raw then
    redis.call('HSET', keys[4], id, cjson.encode({ s = 'void', a = { 'not_held' } }))
    redis.call('ZADD', keys[5], now + VOID_KEEP_MS, id)
    return { 'not_held', gen }
  end
  local rec = decode(raw)
  if not rec then
    return staterr('hold ' .. id .. ' has a record that is not ours')
  end
  if state == 'done' and rec.s ~= 'burned' then
    return reply(rec.a, gen)
  end
  if not same_keys(rec, keys, n) then
    return argerr('budget keys differ from those of hold ' .. id)
  end

  local a = { state == 'open' and 'settled' or 'corrected' }
  for i = 1, n do
    local k = keys[META + i]
    local held = tonumber(rec.m[i]) or 0
    if state == 'open' then
      if held ~= 0 then
        redis.call('HINCRBY', k, 'held', dec(-held))
      end
      if actual[i] ~= 0 then
        redis.call('HINCRBY', k, 'committed', dec(actual[i]))
      end
    elseif actual[i] ~= held then
      -- The burn committed the whole hold; the truth replaces it (may lower committed).
      redis.call('HINCRBY', k, 'committed', dec(actual[i] - held))
    end
    a[1 + i] = dec(math.max(0, actual[i] - held))
  end
  local xs = {}
  for i = 1, n do
    xs[i] = dec(actual[i])
  end
  rec.s = a[1]
  rec.x = xs
  rec.a = a
  if state == 'open' then
    redis.call('HDEL', keys[2], id)
    redis.call('ZREM', keys[3], id)
  end
  redis.call('HSET', keys[4], id, cjson.encode(rec))
  redis.call('ZADD', keys[5], now + keep_ms(rec), id)
  return reply(a, gen)
end

--[[ tg_reap
KEYS: the 5 meta keys. ARGV: limit (1..1000 holds, and as many tombstones).
Reply: { "reaped", gen, burned, forgotten }
]]
local function tg_reap(keys, args)
  local n, err = check_keys(keys, 0, 0)
  if not n then
    return err
  end
  local limit = #args == 1 and int_arg(args[1], 1)
  if not limit or limit > MAX_REAP then
    return argerr('want one argument: limit in 1..' .. MAX_REAP)
  end
  local burned, forgotten = reap(keys, now_ms(), limit)
  return { 'reaped', generation(), burned, forgotten }
end

--[[ tg_freeze
KEYS: the 5 meta keys. ARGV: "1" to freeze, "0" to unfreeze.
Reply: { "ok", gen, version }   version is bumped by every call
]]
local function tg_freeze(keys, args)
  local n, err = check_keys(keys, 0, 0)
  if not n then
    return err
  end
  if #args ~= 1 or (args[1] ~= '0' and args[1] ~= '1') then
    return argerr('want one argument: 1 (freeze) or 0 (unfreeze)')
  end
  redis.call('HSET', keys[1], 'frozen', args[1])
  local v = redis.call('HINCRBY', keys[1], 'version', 1)
  return { 'ok', generation(), v }
end

--[[ tg_status (no writes: FCALL_RO)
KEYS: the 5 meta keys, then 0..16 budget keys. ARGV: none.
Reply: { "status", gen, frozen (0/1), version, open_holds, committed_1, held_1, … }
]]
local function tg_status(keys, args)
  local n, err = check_keys(keys, 0, MAX_ACCOUNTS)
  if not n then
    return err
  end
  if #args ~= 0 then
    return argerr('tg_status takes no arguments')
  end
  local cfg = redis.call('HMGET', keys[1], 'frozen', 'version')
  local out = {
    'status',
    generation(),
    cfg[1] == '1' and 1 or 0,
    tonumber(cfg[2] or '0') or 0,
    redis.call('HLEN', keys[2]),
  }
  for i = 1, n do
    local c, h = balance(keys[META + i])
    if c == nil then
      return staterr('budget key ' .. (i - 1) .. ' has a field that is not an integer')
    end
    out[#out + 1] = c
    out[#out + 1] = h
  end
  return out
end

redis.register_function('tg_reserve', tg_reserve)
redis.register_function('tg_settle', tg_settle)
redis.register_function('tg_reap', tg_reap)
redis.register_function('tg_freeze', tg_freeze)
redis.register_function({ function_name = 'tg_status', callback = tg_status, flags = { 'no-writes' } })
