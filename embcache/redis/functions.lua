#!lua name=embcache
-- embcache's Redis Functions library. Every write that must be atomic is one of these functions, and each
-- touches only the keys it is given, all in one hash tag (one Cluster slot). Errors start with a code
-- (EMBSEALED, EMBNOTFOUND, ...) that the client maps to its exception tree.

local LIB_VERSION = '__LIB_VERSION__'

local function libversion(keys, args)
  return LIB_VERSION
end

-- Partition writes. KEYS: vec, meta, log, state, sealed. The sealed flag is a key of its own so that ACL can let
-- writers update the state (log position) while only admins may seal.

local function sealed(flag)
  return redis.call('GET', flag) == '1'
end

-- ARGV: ids_json, n, then n triples (id, vector bytes, metadata json or '' for none)
local function upsert(keys, args)
  if sealed(keys[5]) then
    return redis.error_reply('EMBSEALED the version is sealed')
  end
  -- one HSET (and one HSET/HDEL for metadata) per call rather than per item: the caller sends at most 1,000
  -- items, well inside what unpack() takes
  local n = tonumber(args[2])
  local vecs, metas, cleared = {}, {}, {}
  for i = 0, n - 1 do
    local id, meta = args[3 + 3 * i], args[5 + 3 * i]
    vecs[#vecs + 1] = id
    vecs[#vecs + 1] = args[4 + 3 * i]
    if meta == '' then
      cleared[#cleared + 1] = id
    else
      metas[#metas + 1] = id
      metas[#metas + 1] = meta
    end
  end
  redis.call('HSET', keys[1], unpack(vecs))
  if #metas > 0 then
    redis.call('HSET', keys[2], unpack(metas))
  end
  if #cleared > 0 then
    redis.call('HDEL', keys[2], unpack(cleared))
  end
  local pos = redis.call('XADD', keys[3], '*', 'op', 'u', 'ids', args[1])
  redis.call('HSET', keys[4], 'pos', pos)
  return pos
end

-- ARGV: ids_json, ids... ; only ids that exist are logged. Returns {deleted_json, pos} ({'[]', false} if none)
local function delete(keys, args)
  if sealed(keys[5]) then
    return redis.error_reply('EMBSEALED the version is sealed')
  end
  local gone = {}
  for i = 2, #args do
    if redis.call('HDEL', keys[1], args[i]) == 1 then
      gone[#gone + 1] = args[i]
    end
    redis.call('HDEL', keys[2], args[i])
  end
  if #gone == 0 then
    return {'[]', false}
  end
  local ids = cjson.encode(gone)
  local pos = redis.call('XADD', keys[3], '*', 'op', 'd', 'ids', ids)
  redis.call('HSET', keys[4], 'pos', pos)
  return {ids, pos}
end

-- Read-only. ARGV: ids... Returns {vectors, metadatas} with false for missing.
local function get(keys, args)
  return {redis.call('HMGET', keys[1], unpack(args)), redis.call('HMGET', keys[2], unpack(args))}
end

-- Read-only. Everything changed after log position ARGV[1] ('0-0' = from the start), as the net effect:
-- {pos, ids, vectors, metadatas} where a false vector means deleted. {'TRIMMED'} when the log no longer
-- reaches back that far, {'TOOLONG'} when more than ARGV[2] entries follow (the caller reloads in full).
local function tail(keys, args)
  local from, limit = args[1], tonumber(args[2])
  local pos = redis.call('HGET', keys[4], 'pos') or '0-0'
  if pos == from then
    return {pos, {}, {}, {}}
  end
  local trimmed = redis.call('HGET', keys[4], 'trimmed_to')
  if trimmed and from ~= pos then
    local fm, fs = string.match(from, '^(%d+)-(%d+)$')
    local tm, ts = string.match(trimmed, '^(%d+)-(%d+)$')
    fm, fs, tm, ts = tonumber(fm), tonumber(fs), tonumber(tm), tonumber(ts)
    if fm < tm or (fm == tm and fs < ts) then
      return {'TRIMMED'}
    end
  end
  local start = '-'
  if from ~= '0-0' then
    start = '(' .. from
  end
  local entries = redis.call('XRANGE', keys[3], start, '+', 'COUNT', limit + 1)
  if #entries > limit then
    return {'TOOLONG'}
  end
  local seen, ids = {}, {}
  for _, e in ipairs(entries) do
    local fields = e[2]
    for j = 1, #fields, 2 do
      if fields[j] == 'ids' then
        for _, id in ipairs(cjson.decode(fields[j + 1])) do
          if not seen[id] then
            seen[id] = true
            ids[#ids + 1] = id
          end
        end
      end
    end
  end
  if #ids == 0 then
    return {pos, {}, {}, {}}
  end
  local vecs, metas = {}, {}
  for i, id in ipairs(ids) do  -- one by one: unpack() of a long list would overflow Lua's stack
    vecs[i] = redis.call('HGET', keys[1], id)
    metas[i] = redis.call('HGET', keys[2], id)
  end
  return {pos, ids, vecs, metas}
end

-- Space-level. KEYS: space, versions, seq, vstate (the new version's state flag). ARGV: name, record json (the
-- name is added here), expected seq ('' for a name the caller chose; else the caller read seq, named the
-- version v<seq+1>, and we check nobody took that number meanwhile: EMBRETRY if they did).
local function create_version(keys, args)
  if redis.call('EXISTS', keys[1]) == 0 then
    return redis.error_reply('EMBNOTFOUND no such space')
  end
  local name = args[1]
  if args[3] ~= '' then
    if (redis.call('GET', keys[3]) or '0') ~= args[3] then
      return redis.error_reply('EMBRETRY the version counter moved')
    end
    redis.call('INCR', keys[3])
  end
  if redis.call('HEXISTS', keys[2], name) == 1 then
    if args[3] ~= '' then
      return redis.error_reply('EMBRETRY ' .. name .. ' is taken')
    end
    return redis.error_reply('EMBEXISTS version ' .. name .. ' already exists')
  end
  local rec = cjson.decode(args[2])
  rec['name'] = name
  redis.call('HSET', keys[2], name, cjson.encode(rec))
  redis.call('SET', keys[4], 'open')
  return name
end

-- KEYS: vstate, parts. ARGV: partition. Adds the partition to an open version. The state flag is a plain
-- string: writers may pass it to this function (FCALL wants write access to every key it is given) but hold
-- no command that could change a string.
local function register(keys, args)
  local state = redis.call('GET', keys[1])
  if not state then
    return redis.error_reply('EMBNOTFOUND no such version')
  end
  if state ~= 'open' then
    return redis.error_reply('EMBSEALED the version is sealed')
  end
  return redis.call('SADD', keys[2], args[1])
end

-- KEYS: versions, parts, vstate. ARGV: version. Marks it sealed; returns its partitions (the caller flags each).
local function seal(keys, args)
  local rec = redis.call('HGET', keys[1], args[1])
  if not rec then
    return redis.error_reply('EMBNOTFOUND no version ' .. args[1])
  end
  local r = cjson.decode(rec)
  r['state'] = 'sealed'
  redis.call('HSET', keys[1], args[1], cjson.encode(r))
  redis.call('SET', keys[3], 'sealed')
  return redis.call('SMEMBERS', keys[2])
end

-- KEYS: versions, aliases, history. ARGV: alias, version. Moves the alias, remembering the old target.
local function set_alias(keys, args)
  if redis.call('HEXISTS', keys[1], args[2]) == 0 then
    return redis.error_reply('EMBNOTFOUND no version ' .. args[2])
  end
  local old = redis.call('HGET', keys[2], args[1])
  if old == args[2] then
    return old
  end
  if old then
    redis.call('LPUSH', keys[3], old)
    redis.call('LTRIM', keys[3], 0, 99)
  end
  redis.call('HSET', keys[2], args[1], args[2])
  return old or false
end

-- KEYS: aliases, history. ARGV: alias. Points the alias back at its previous target.
local function rollback(keys, args)
  if redis.call('HEXISTS', keys[1], args[1]) == 0 then
    return redis.error_reply('EMBNOTFOUND no alias ' .. args[1])
  end
  local prev = redis.call('LPOP', keys[2])
  if not prev then
    return redis.error_reply('EMBNOHISTORY alias ' .. args[1] .. ' has no previous target')
  end
  redis.call('HSET', keys[1], args[1], prev)
  return prev
end

-- Snapshot publication. KEYS: snap (pointer), state, log, the new generation's chunks, the old one's chunks.
-- ARGV: manifest json, generation it was built on, number of new chunks, grace seconds, log trim point ('' =
-- none), channel, message. Fails with EMBCONFLICT when another build published first or a chunk expired.
local function publish(keys, args)
  local cur = redis.call('GET', keys[1])
  local curgen = 0
  if cur then
    curgen = tonumber(cjson.decode(cur)['generation'])
  end
  if curgen ~= tonumber(args[2]) then
    return redis.error_reply('EMBCONFLICT generation ' .. curgen .. ' was published meanwhile')
  end
  local n_new = tonumber(args[3])
  for i = 4, 3 + n_new do
    if redis.call('EXISTS', keys[i]) == 0 then
      return redis.error_reply('EMBCONFLICT a chunk of the new snapshot expired before publication')
    end
  end
  for i = 4, 3 + n_new do
    redis.call('PERSIST', keys[i])
  end
  for i = 4 + n_new, #keys do
    redis.call('EXPIRE', keys[i], tonumber(args[4]))
  end
  redis.call('SET', keys[1], args[1])
  local m = cjson.decode(args[1])
  redis.call('HSET', keys[2], 'generation', m['generation'], 'built_pos', m['pos'],
    'build_seconds', tostring(m['build_seconds']), 'built_at', tostring(m['built_at']))
  redis.call('HDEL', keys[2], 'corrupt')
  if args[5] ~= '' then
    redis.call('XTRIM', keys[3], 'MINID', args[5])
    redis.call('HSET', keys[2], 'trimmed_to', args[5])
  end
  redis.call('PUBLISH', args[6], args[7])
  return m['generation']
end

redis.register_function{function_name='emb_libversion', callback=libversion, flags={'no-writes'}}
redis.register_function('emb_upsert', upsert)
redis.register_function('emb_delete', delete)
redis.register_function{function_name='emb_get', callback=get, flags={'no-writes'}}
redis.register_function{function_name='emb_tail', callback=tail, flags={'no-writes'}}
redis.register_function('emb_create_version', create_version)
redis.register_function('emb_register', register)
redis.register_function('emb_seal', seal)
redis.register_function('emb_set_alias', set_alias)
redis.register_function('emb_rollback', rollback)
redis.register_function('emb_publish', publish)
