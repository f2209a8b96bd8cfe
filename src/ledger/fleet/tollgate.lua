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

-- The meta keys must be exactly the layout above; then the budget keys (tg:{T}:b:…), then the
-- rate keys (tg:{T}:r:…), each once and all with the same tag. Returns the number of budget keys
-- and the number of rate keys, or nil and an error.
local function check_keys(keys, min_budget, max_budget, max_rate)
  if #keys < META then
    return nil, nil, argerr('want the 5 meta keys first')
  end
  local tag = tag_of(keys[1])
  if not tag then
    return nil, nil, argerr('KEYS[1] has no {hash tag}')
  end
  local p = 'tg:{' .. tag .. '}:'
  local want = { p .. 'cfg', p .. 'holds', p .. 'hexp', p .. 'done', p .. 'dexp' }
  for i = 1, META do
    if keys[i] ~= want[i] then
      return nil, nil, argerr('KEYS[' .. i .. '] must be ' .. want[i])
    end
  end
  local seen = {}
  local rp = p .. 'r:'
  local n, r = 0, 0
  for i = META + 1, #keys do
    local k = keys[i]
    -- A budget key of this project, or of a team (shared by several projects: its own tag
    -- `t:…`, so it lives outside the project's slot; fleets run on one Redis, not a cluster).
    local kt = tag_of(k)
    local bp = kt and ('tg:{' .. kt .. '}:b:') or ''
    local is_b = kt ~= nil and (kt == tag or string.sub(kt, 1, 2) == 't:')
      and string.sub(k, 1, #bp) == bp and #k > #bp
    local is_r = tag_of(k) == tag and string.sub(k, 1, #rp) == rp and #k > #rp
    if is_b and r == 0 then
      n = n + 1
    elseif is_r then
      r = r + 1
    else
      return nil, nil, argerr('key ' .. (i - META - 1) .. ' must start with ' .. bp .. ' (budget keys first) or ' .. rp)
    end
    if seen[k] then
      return nil, nil, argerr('key ' .. (i - META - 1) .. ' repeats')
    end
    seen[k] = true
  end
  if n < min_budget or n > max_budget then
    return nil, nil, argerr('want ' .. min_budget .. '..' .. max_budget .. ' budget keys, got ' .. n)
  end
  if r > (max_rate or 0) then
    return nil, nil, argerr('want at most ' .. (max_rate or 0) .. ' rate keys, got ' .. r)
  end
  return n, r, nil
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
  if ok and type(rec) == 'table' and (rec.s == 'void' or rec.s == 'charged') and type(rec.a) == 'table' then
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
          if rec.l then
            redis.call('HINCRBY', k, 'leased', dec(-a))
          end
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

-- Reads a rate window's count: a number, or nil when it is not an integer.
local function window_count(k)
  local v = tonumber(redis.call('HGET', k, 'n') or '0')
  if v == nil or v ~= math.floor(v) then
    return nil
  end
  return v
end

-- Add `add` to the rate window k (and make it expire): the window keys are per minute.
local function window_add(k, add, expire_s)
  if add ~= 0 then
    redis.call('HINCRBY', k, 'n', dec(add))
    redis.call('EXPIRE', k, expire_s)
  end
end

local MAX_RATE_ACCOUNTS = 4
local MAX_EXPIRE_S = 3600

-- What every admission (tg_reserve, tg_lease) checks before it looks at a budget: a repeated
-- id answers its stored result; a lost generation, a rebuild or a freeze admits nothing.
-- Returns gen, version, and the reply to give at once (nil to go on).
local function gate(keys, id)
  local gen = generation()
  local prior = redis.call('HGET', keys[2], id) or redis.call('HGET', keys[4], id)
  if prior then
    local rec = decode(prior)
    if rec and rec.r then
      return gen, 0, reply(rec.r, gen)
    end
    if rec and (rec.s == 'void' or rec.s == 'charged') then
      return gen, 0, { 'void', gen }
    end
    return gen, 0, staterr('hold ' .. id .. ' has a record that is not ours')
  end
  if gen == '' then
    return gen, 0, { 'nogen', '' }
  end
  if redis.call('EXISTS', 'tg:rebuilding') == 1 then
    return gen, 0, { 'rebuilding', gen }
  end
  local cfg = redis.call('HMGET', keys[1], 'frozen', 'version')
  local version = tonumber(cfg[2] or '0') or 0
  if cfg[1] == '1' then
    return gen, version, { 'frozen', gen, version }
  end
  return gen, version, nil
end

--[[ tg_reserve
KEYS: the 5 meta keys, then 1..16 budget keys (tg:{T}:b:…), then two rate keys per rate
account (tg:{T}:r:…: the previous window, then the current one).
ARGV: hold_id, owner, ttl_s, then per budget key: limit (nanos, or -1: no limit), amount
(nanos); then per rate account: limit, need, add, weight (permille of the previous window still
inside the sliding minute, 0..1000), expire_s (of the current window key).
A rate account refuses when floor(prev × weight / 1000) + curr + need > limit, and otherwise adds
`add` to the current window (rpm: need 1, add 1; tpm: need 1, add 0, tokens are added by settle).
Replies:
  { "ok", gen, version, expires_ms, remaining_1, … }   remaining -1 for an account without limit
  { "refused", gen, version, index, committed, held, limit }   index 0-based, nothing changed
  { "limited", gen, version, index, count, limit }  a rate account is full (index 0-based among
                                  the rate accounts), nothing changed
  { "frozen", gen, version }      nothing changed
  { "void", gen }                 the id was settled before this reserve arrived: nothing held
  { "nogen", "" }                 tg:gen is gone (data lost): nothing admitted until rebuilt
  { "rebuilding", gen }           the counters are being rebuilt (tg_begin): nothing admitted
A repeated hold id returns the stored result of the first admission and changes nothing.
Refusals are not stored: they hold nothing, so a resend is evaluated afresh (and a flood of
refused requests costs no writes).
]]
local function tg_reserve(keys, args)
  local n, r, err = check_keys(keys, 1, MAX_ACCOUNTS, 2 * MAX_RATE_ACCOUNTS)
  if not n then
    return err
  end
  if r % 2 ~= 0 then
    return argerr('want two rate keys (previous, current window) per rate account')
  end
  local nr = r / 2
  if #args ~= 3 + 2 * n + 5 * nr then
    return argerr('want hold_id, owner, ttl_s, (limit, amount) for each of ' .. n .. ' budget keys and (limit, need, add, weight, expire_s) for each of ' .. nr .. ' rate accounts')
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
  local rates = {}
  for j = 1, nr do
    local o = 3 + 2 * n + 5 * (j - 1)
    local rl = {
      limit = int_arg(args[o + 1], 0),
      need = int_arg(args[o + 2], 0),
      add = int_arg(args[o + 3], 0),
      weight = int_arg(args[o + 4], 0),
      expire = int_arg(args[o + 5], 1),
    }
    if not rl.limit or not rl.need or not rl.add then
      return argerr('rate ' .. (j - 1) .. ': limit, need and add must be integers in 0..' .. dec(MAX))
    end
    if not rl.weight or rl.weight > 1000 then
      return argerr('rate ' .. (j - 1) .. ': weight must be an integer in 0..1000')
    end
    if not rl.expire or rl.expire > MAX_EXPIRE_S then
      return argerr('rate ' .. (j - 1) .. ': expire_s must be an integer in 1..' .. MAX_EXPIRE_S)
    end
    rl.prev = keys[META + n + 2 * j - 1]
    rl.curr = keys[META + n + 2 * j]
    rates[j] = rl
  end

  local gen, version, early = gate(keys, id)
  if early then
    return early
  end

  for j = 1, nr do
    local rl = rates[j]
    local p, c = window_count(rl.prev), window_count(rl.curr)
    if p == nil or c == nil then
      return staterr('rate key ' .. (j - 1) .. ' has a count that is not an integer')
    end
    local est = math.floor(p * rl.weight / 1000) + c
    if est + rl.need > rl.limit then
      return { 'limited', gen, version, j - 1, est, rl.limit }
    end
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
  local res = { 'ok', dec(version), dec(expires) }
  local ks, ms = {}, {}
  for i = 1, n do
    local k = keys[META + i]
    if amounts[i] ~= 0 then
      redis.call('HINCRBY', k, 'held', dec(amounts[i]))
    end
    if limits[i] >= 0 then
      res[3 + i] = dec(limits[i] - cur[i] - amounts[i])
    else
      res[3 + i] = '-1'
    end
    ks[i] = k
    ms[i] = dec(amounts[i])
  end
  for j = 1, nr do
    window_add(rates[j].curr, rates[j].add, rates[j].expire)
  end
  local rec = { o = owner, e = dec(expires), t = dec(ttl), k = ks, m = ms, r = res }
  redis.call('HSET', keys[2], id, cjson.encode(rec))
  redis.call('ZADD', keys[3], expires, id)
  reap(keys, now, REAP_ON_RESERVE)
  return reply(res, gen)
end

--[[ tg_settle
KEYS: the 5 meta keys, then the budget keys of the hold, in the order they were reserved, then
0..4 rate keys (tg:{T}:r:…, the current window of each rate account that counts usage: tpm).
ARGV: hold_id, then the actual cost (nanos) per budget key, then per rate key: add, expire_s,
then optionally the generation the caller's spend belongs to.
Replies:
  { "stale", gen }                    the generation is not the one expected: nothing changed
  { "settled", gen, overrun_1, … }    held -= amount; committed += actual (all of it)
  { "corrected", gen, overrun_1, … }  the hold had expired and was burned: committed += actual - amount
  { "charged", gen, actual_1, … }     no hold by this id and no record of one (Redis lost it with its
                                       data, or never saw it): the actual cost is committed, once
  { "not_held", gen }                  no hold by this id and every actual is 0: nothing charged;
                                       a "void" tombstone makes a late reserve with this id hold nothing
overrun_i = max(0, actual_i - amount_i): charged in full, reported so the caller can flag it.
Rate adds are applied by the first settle of an id only.
A repeated settle returns the first answer and changes nothing (whatever actuals it carries).
]]
local function tg_settle(keys, args)
  local n, r, err = check_keys(keys, 0, MAX_ACCOUNTS, MAX_RATE_ACCOUNTS)
  if not n then
    return err
  end
  if #args ~= 1 + n + 2 * r and #args ~= 2 + n + 2 * r then
    return argerr('want hold_id, an actual amount for each of ' .. n .. ' budget keys, (add, expire_s) for each of ' .. r .. ' rate keys, and optionally the generation expected')
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
  local adds = {}
  for j = 1, r do
    local add = int_arg(args[1 + n + 2 * j - 1], 0)
    local exp = int_arg(args[1 + n + 2 * j], 1)
    if not add or not exp or exp > MAX_EXPIRE_S then
      return argerr('rate ' .. (j - 1) .. ': add must be an integer in 0..' .. dec(MAX) .. ' and expire_s in 1..' .. MAX_EXPIRE_S)
    end
    adds[j] = { k = keys[META + n + j], add = add, exp = exp }
  end
  local gen = generation()
  local expected = args[2 + n + 2 * r]
  if expected and expected ~= gen then
    return { 'stale', gen }
  end
  local now = now_ms()

  local raw = redis.call('HGET', keys[2], id)
  local state = 'open'
  if not raw then
    raw = redis.call('HGET', keys[4], id)
    state = 'done'
  end
  if not raw then
    local any = false
    local ks, xs = {}, {}
    for i = 1, n do
      ks[i] = keys[META + i]
      xs[i] = dec(actual[i])
      if actual[i] ~= 0 then
        any = true
        redis.call('HINCRBY', keys[META + i], 'committed', dec(actual[i]))
      end
    end
    for j = 1, r do
      window_add(adds[j].k, adds[j].add, adds[j].exp)
    end
    local a
    if any then
      a = { 'charged' }
      for i = 1, n do
        a[1 + i] = xs[i]
      end
    else
      a = { 'not_held' }
    end
    local rec = { s = any and 'charged' or 'void', a = a }
    redis.call('HSET', keys[4], id, cjson.encode(rec))
    redis.call('ZADD', keys[5], now + VOID_KEEP_MS, id)
    return reply(a, gen)
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
        if rec.l then
          redis.call('HINCRBY', k, 'leased', dec(-held))
        end
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
  for j = 1, r do
    window_add(adds[j].k, adds[j].add, adds[j].exp)
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
  local n, _, err = check_keys(keys, 0, 0)
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
  local n, _, err = check_keys(keys, 0, 0)
  if not n then
    return err
  end
  if #args ~= 1 or (args[1] ~= '0' and args[1] ~= '1') then
    return argerr('want one argument: 1 (freeze) or 0 (unfreeze)')
  end
  redis.call('HSET', keys[1], 'frozen', args[1])
  local v = redis.call('HINCRBY', keys[1], 'version', 1)
  -- Instances with a subscriber hear it at once; the version in every reply is the backstop.
  redis.call('PUBLISH', 'tg:events', 'freeze ' .. keys[1] .. ' ' .. args[1] .. ' ' .. dec(v))
  return { 'ok', generation(), v }
end

--[[ tg_status (no writes: FCALL_RO)
KEYS: the 5 meta keys, then 0..16 budget keys. ARGV: none.
Reply: { "status", gen, frozen (0/1), version, open_holds, committed_1, held_1, leased_1, … }
(leased: the part of held that is leases, see tg_lease)
]]
local function tg_status(keys, args)
  local n, _, err = check_keys(keys, 0, MAX_ACCOUNTS)
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
    out[#out + 1] = tonumber(redis.call('HGET', keys[META + i], 'leased') or '0') or 0
  end
  return out
end

--[[ tg_lease
KEYS: the 5 meta keys, then one budget key.
ARGV: lease_id, owner, ttl_s, limit (nanos, or -1), want, min, divisor (1..1000).
A lease is a hold owned by an instance, which admits requests against it locally and settles it
once with what they cost. Its size: min(want, floor((limit - committed - held) / divisor)), so
slices shrink as the budget runs low; below `min` it is refused (the instance then holds per
request). Without a limit the size is `want`. The hold also counts in the budget key's `leased`.
Replies as tg_reserve: { "ok", gen, version, expires_ms, amount } or "refused" (index 0),
"frozen", "void", "nogen", "rebuilding". Idempotent by lease_id.
]]
local function tg_lease(keys, args)
  local n, _, err = check_keys(keys, 1, 1)
  if not n then
    return err
  end
  if #args ~= 7 then
    return argerr('want lease_id, owner, ttl_s, limit, want, min, divisor')
  end
  local id, owner = args[1], args[2]
  if not id_ok(id) or not id_ok(owner) then
    return argerr('lease_id and owner must be 1..' .. MAX_ID .. ' bytes')
  end
  local ttl = int_arg(args[3], 1)
  local limit = int_arg(args[4], -1)
  local want = int_arg(args[5], 0)
  local min = int_arg(args[6], 0)
  local divisor = int_arg(args[7], 1)
  if not ttl or ttl > MAX_TTL_S or not limit or not want or not min or not divisor or divisor > 1000 then
    return argerr('ttl_s 1..' .. MAX_TTL_S .. ', limit -1 or 0..2^53-1, want and min 0..2^53-1, divisor 1..1000')
  end
  local gen, version, early = gate(keys, id)
  if early then
    return early
  end
  local k = keys[META + 1]
  local c, h = balance(k)
  if c == nil then
    return staterr('budget key 0 has a field that is not an integer')
  end
  local amount = want
  if limit >= 0 then
    local fits = math.max(0, limit - c - h)
    amount = math.min(want, math.floor(fits / divisor))
    if amount < min or amount == 0 then
      return { 'refused', gen, version, 0, c, h, limit }
    end
  end
  local now = now_ms()
  local expires = now + ttl * 1000
  if amount ~= 0 then
    redis.call('HINCRBY', k, 'held', dec(amount))
    redis.call('HINCRBY', k, 'leased', dec(amount))
  end
  local res = { 'ok', dec(version), dec(expires), dec(amount) }
  local rec = { o = owner, e = dec(expires), t = dec(ttl), k = { k }, m = { dec(amount) }, r = res, l = 1 }
  redis.call('HSET', keys[2], id, cjson.encode(rec))
  redis.call('ZADD', keys[3], expires, id)
  reap(keys, now, REAP_ON_RESERVE)
  return reply(res, gen)
end

--[[ tg_begin (global keys only: tg:gen, tg:rebuilding)
KEYS: none. ARGV: a fresh generation id, grace_ms (1..600000).
If tg:gen exists, nothing changes. Otherwise (a fresh Redis, or one that lost its data) the
fresh id becomes the generation and tg:rebuilding is set for grace_ms: until it expires every
tg_reserve answers "rebuilding", so the instances have time to report what their own ledgers
hold (tg_join) before anything is admitted against counters that start from zero.
Reply: { "gen", gen, rebuilding_ms }   rebuilding_ms 0 when admission is open
]]
local function tg_begin(keys, args)
  if #keys ~= 0 or #args ~= 2 or not id_ok(args[1]) then
    return argerr('want no keys and two arguments: a generation id and grace_ms')
  end
  local grace = int_arg(args[2], 1)
  if not grace or grace > 600000 then
    return argerr('grace_ms must be an integer in 1..600000')
  end
  if redis.call('SET', 'tg:gen', args[1], 'NX') then
    redis.call('SET', 'tg:rebuilding', args[1], 'PX', grace)
  end
  local left = redis.call('PTTL', 'tg:rebuilding')
  if left < 0 then
    left = 0
  end
  return { 'gen', generation(), left }
end

--[[ tg_join
KEYS: the 5 meta keys, then 0..16 budget keys. ARGV: generation, member (the instance id), then
the amount per budget key that this instance's own ledger holds for it; optionally then a hold
id, ttl_s and an amount per key to hold for the member's requests still in flight.
Once per (generation, member, project): committed += amount on each key. This is how the spend
an instance recorded before it joined this generation (a single instance moving to fleet mode,
or every instance after Redis lost its data) is carried into the fleet's counters.
Replies: { "joined", gen } | { "already", gen } | { "stale", gen }  (gen is not the one in force)
]]
local function tg_join(keys, args)
  local n, _, err = check_keys(keys, 0, MAX_ACCOUNTS)
  if not n then
    return err
  end
  local with_hold = #args == 2 + n + 2 + n
  if (#args ~= 2 + n and not with_hold) or not id_ok(args[1]) or not id_ok(args[2]) then
    return argerr('want generation, member, an amount for each of ' .. n .. ' budget keys, and optionally hold_id, ttl_s and a held amount for each')
  end
  local amounts, held = {}, {}
  for i = 1, n do
    amounts[i] = int_arg(args[2 + i], 0)
    if not amounts[i] then
      return argerr('amount ' .. (i - 1) .. ' must be an integer in 0..' .. dec(MAX))
    end
  end
  local hold_id, ttl
  if with_hold then
    hold_id = args[3 + n]
    ttl = int_arg(args[4 + n], 1)
    if not id_ok(hold_id) or not ttl or ttl > MAX_TTL_S then
      return argerr('hold_id must be 1..' .. MAX_ID .. ' bytes and ttl_s in 1..' .. MAX_TTL_S)
    end
    for i = 1, n do
      held[i] = int_arg(args[4 + n + i], 0)
      if not held[i] then
        return argerr('held ' .. (i - 1) .. ' must be an integer in 0..' .. dec(MAX))
      end
    end
  end
  local gen = generation()
  if gen ~= args[1] then
    return { 'stale', gen }
  end
  if redis.call('HSETNX', keys[1], 'joined:' .. args[1] .. ':' .. args[2], '1') == 0 then
    return { 'already', gen }
  end
  for i = 1, n do
    if amounts[i] ~= 0 then
      redis.call('HINCRBY', keys[META + i], 'committed', dec(amounts[i]))
    end
  end
  if with_hold and not redis.call('HGET', keys[2], hold_id) and not redis.call('HGET', keys[4], hold_id) then
    -- The worst cases of this member's requests still in flight from the lost generation: held
    -- (no limit check: they were admitted) until the member settles this hold when they end.
    local now = now_ms()
    local expires = now + ttl * 1000
    local ks, ms = {}, {}
    for i = 1, n do
      ks[i] = keys[META + i]
      ms[i] = dec(held[i])
      if held[i] ~= 0 then
        redis.call('HINCRBY', ks[i], 'held', dec(held[i]))
      end
    end
    local res = { 'ok', '0', dec(expires) }
    redis.call('HSET', keys[2], hold_id, cjson.encode({ o = args[2], e = dec(expires), t = dec(ttl), k = ks, m = ms, r = res }))
    redis.call('ZADD', keys[3], expires, hold_id)
  end
  return { 'joined', gen }
end

redis.register_function('tg_reserve', tg_reserve)
redis.register_function('tg_settle', tg_settle)
redis.register_function('tg_reap', tg_reap)
redis.register_function('tg_freeze', tg_freeze)
redis.register_function('tg_begin', tg_begin)
redis.register_function('tg_lease', tg_lease)
redis.register_function('tg_join', tg_join)
redis.register_function({ function_name = 'tg_status', callback = tg_status, flags = { 'no-writes' } })
