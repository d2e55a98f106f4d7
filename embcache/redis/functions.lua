#!lua name=embcache
-- embcache's Redis Functions library. Every write that must be atomic is one of these functions, and each
-- touches only the keys it is given, all in one hash tag (one Cluster slot). Errors start with a code
-- (EMBSEALED, EMBNOTFOUND, EMBARGS, ...) that the client maps to its exception tree.
--
-- Every function runs with the caller's ACL rights (Redis checks each redis.call), so a function can never do
-- more than its caller could do by hand. What the ACL cannot bound is work: any principal may FCALL these
-- functions with arguments of its own making. So each one checks its key and argument counts against what it
-- expects and refuses, before writing anything, what the client itself would refuse; the limits below are the
-- client's (embcache/codec.py, embcache/store.py), and every loop is bounded by one of them.

local LIB_VERSION = '__LIB_VERSION__'

local MAX_ITEMS = 1000             -- items per emb_upsert / emb_delete call (Store.WRITE_CHUNK_ITEMS)
local MAX_GET = 4000               -- ids per emb_get call (Store.READ_CHUNK_ITEMS; unpack() takes ~8000)
local MAX_ID_BYTES = 512           -- codec.MAX_ID_BYTES
local MAX_META_BYTES = 65536       -- codec.MAX_METADATA_BYTES
local MAX_VECTOR_BYTES = 262144    -- codec.MAX_DIM float32 values
local MAX_DESCRIPTION_BYTES = 1024 -- catalogue.MAX_DESCRIPTION_BYTES
local MAX_TAIL_LIMIT = 10000       -- emb_tail's entry limit (Store.TAIL_LIMIT)
local TAIL_IDS = 10000             -- ids one emb_tail call reads and returns
local TAIL_BYTES = 16777216        -- bytes of vectors and metadata one emb_tail call returns
local TAIL_BATCH = 16              -- log entries read per XRANGE inside emb_tail
-- a log entry's id list as emb_upsert writes it: 1000 ids of 512 bytes, each byte escaped to at most 6
local MAX_ENTRY_BYTES = MAX_ITEMS * (6 * MAX_ID_BYTES + 3) + 2

local function libversion(keys, args)
  return LIB_VERSION
end

local function bad(text)
  return redis.error_reply('EMBARGS ' .. text)
end

-- an integer in [1, hi] written in decimal, else nil
local function count_arg(s, hi)
  if type(s) ~= 'string' or not string.match(s, '^[1-9]%d*$') or #s > 9 then
    return nil
  end
  local n = tonumber(s)
  if n > hi then
    return nil
  end
  return n
end

local function valid_name(s)
  return type(s) == 'string' and #s <= 64 and string.match(s, '^[A-Za-z0-9][A-Za-z0-9_.-]*$') ~= nil
end

-- true when s is well-formed UTF-8 (what Python's str.encode produces: no overlongs, no surrogates)
local function valid_utf8(s)
  if not string.find(s, '[\128-\255]') then
    return true
  end
  local i, n = 1, #s
  while i <= n do
    local c = string.byte(s, i)
    if c < 0x80 then
      i = i + 1
    else
      local len, lo, hi
      if c >= 0xC2 and c <= 0xDF then
        len, lo, hi = 2, 0x80, 0xBF
      elseif c >= 0xE0 and c <= 0xEF then
        len, lo, hi = 3, (c == 0xE0 and 0xA0 or 0x80), (c == 0xED and 0x9F or 0xBF)
      elseif c >= 0xF0 and c <= 0xF4 then
        len, lo, hi = 4, (c == 0xF0 and 0x90 or 0x80), (c == 0xF4 and 0x8F or 0xBF)
      else
        return false
      end
      if i + len - 1 > n then
        return false
      end
      local c2 = string.byte(s, i + 1)
      if c2 < lo or c2 > hi then
        return false
      end
      for j = i + 2, i + len - 1 do
        local cj = string.byte(s, j)
        if cj < 0x80 or cj > 0xBF then
          return false
        end
      end
      i = i + len
    end
  end
  return true
end

-- an id as stored: 1..512 bytes of UTF-8 (what a tail or a delete accepts, so ids written before the control
-- character rule stay readable and deletable)
local function stored_id(s)
  return type(s) == 'string' and #s > 0 and #s <= MAX_ID_BYTES and valid_utf8(s)
end

-- an id a write may add: also no C0, DEL or C1 control character (codec.check_ids)
local function valid_id(s)
  return stored_id(s) and not string.find(s, '[%z\1-\31\127]') and not string.find(s, '\194[\128-\159]')
end

-- log positions: "<ms>-<seq>" as Redis writes them
local function valid_pos(s)
  return type(s) == 'string' and #s <= 41 and string.match(s, '^%d+%-%d+$') ~= nil
end

local function num_less(a, b)  -- decimal strings of any length (stream ids go past 2^53)
  a = (string.gsub(a, '^0+(%d)', '%1'))
  b = (string.gsub(b, '^0+(%d)', '%1'))
  if #a ~= #b then
    return #a < #b
  end
  return a < b
end

local function pos_less(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if num_less(am, bm) then
    return true
  end
  if num_less(bm, am) then
    return false
  end
  return num_less(as, bs)
end

-- Sealed flags and version states. Admins may create strings with SETNX and extend them with APPEND, never
-- overwrite or delete them (acl.py), so sealing cannot be undone by any principal: a partition is sealed once
-- its flag exists (whatever its value), and a version's state only ever grows from 'open' to
-- 'open:sealing' (no new partitions) to 'open:sealing:sealed' (every partition flagged, digests recorded).
local SEALING, SEALED = 'open:sealing', 'open:sealing:sealed'

local function sealed(flag)
  return redis.call('EXISTS', flag) == 1
end

-- Partition writes. KEYS: vec, meta, log, state, sealed.
-- ARGV: n (1..1000), then n triples (id, vector bytes, metadata json or '' for none). The change-log entry's
-- id list is built here from the items, so no caller can log ids it did not write.
local function upsert(keys, args)
  if #keys ~= 5 then
    return bad('emb_upsert takes 5 keys (vec, meta, log, state, sealed)')
  end
  local n = count_arg(args[1], MAX_ITEMS)
  if not n or #args ~= 1 + 3 * n then
    return bad('emb_upsert: ARGV is n (1..' .. MAX_ITEMS .. ') then n triples (id, vector, metadata)')
  end
  local width = #args[3]
  local ids, vecs, metas, cleared = {}, {}, {}, {}
  for i = 0, n - 1 do
    local id, vec, meta = args[2 + 3 * i], args[3 + 3 * i], args[4 + 3 * i]
    if not valid_id(id) then
      return bad('item ' .. i .. ': an id is 1..' .. MAX_ID_BYTES .. ' bytes of UTF-8, no control characters')
    end
    if #vec == 0 or #vec > MAX_VECTOR_BYTES or #vec % 2 ~= 0 or #vec ~= width then
      return bad('item ' .. i .. ': vectors are 2..' .. MAX_VECTOR_BYTES .. ' bytes, all of one length')
    end
    if #meta > MAX_META_BYTES or (meta ~= '' and string.byte(meta, 1) ~= 123) then  -- 123: '{'
      return bad('item ' .. i .. ': metadata is a JSON object of at most ' .. MAX_META_BYTES .. ' bytes')
    end
    ids[#ids + 1] = id
    vecs[#vecs + 1] = id
    vecs[#vecs + 1] = vec
    if meta == '' then
      cleared[#cleared + 1] = id
    else
      metas[#metas + 1] = id
      metas[#metas + 1] = meta
    end
  end
  if sealed(keys[5]) then
    return redis.error_reply('EMBSEALED the version is sealed')
  end
  redis.call('HSET', keys[1], unpack(vecs))
  if #metas > 0 then
    redis.call('HSET', keys[2], unpack(metas))
  end
  if #cleared > 0 then
    redis.call('HDEL', keys[2], unpack(cleared))
  end
  local pos = redis.call('XADD', keys[3], '*', 'op', 'u', 'ids', cjson.encode(ids))
  redis.call('HSET', keys[4], 'pos', pos)
  return pos
end

-- KEYS: as emb_upsert. ARGV: 1..1000 ids; only ids that exist are logged. Returns {deleted_json, pos}
-- ({'[]', false} if none).
local function delete(keys, args)
  if #keys ~= 5 then
    return bad('emb_delete takes 5 keys (vec, meta, log, state, sealed)')
  end
  if #args < 1 or #args > MAX_ITEMS then
    return bad('emb_delete takes 1..' .. MAX_ITEMS .. ' ids')
  end
  for i = 1, #args do
    if not stored_id(args[i]) then
      return bad('id ' .. (i - 1) .. ': an id is 1..' .. MAX_ID_BYTES .. ' bytes of UTF-8')
    end
  end
  if sealed(keys[5]) then
    return redis.error_reply('EMBSEALED the version is sealed')
  end
  local gone = {}
  for i = 1, #args do
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

-- Read-only. KEYS: vec, meta. ARGV: 1..4000 ids. Returns {vectors, metadatas} with false for missing.
local function get(keys, args)
  if #keys ~= 2 or #args < 1 or #args > MAX_GET then
    return bad('emb_get takes 2 keys (vec, meta) and 1..' .. MAX_GET .. ' ids')
  end
  return {redis.call('HMGET', keys[1], unpack(args)), redis.call('HMGET', keys[2], unpack(args))}
end

-- the ids of a log entry, or nil when the entry is not one emb_upsert/emb_delete could have written (a writer
-- with raw XADD can append anything to its own partition's log)
local function entry_ids(fields)
  for j = 1, #fields - 1, 2 do
    if fields[j] == 'ids' then
      local text = fields[j + 1]
      if #text > MAX_ENTRY_BYTES then
        return nil
      end
      local ok, list = pcall(cjson.decode, text)
      if not ok or type(list) ~= 'table' or #list > MAX_ITEMS then
        return nil
      end
      for _, id in ipairs(list) do
        if not stored_id(id) then
          return nil
        end
      end
      return list
    end
  end
  return nil
end

-- Read-only. KEYS: vec, meta, log, state. ARGV: from (a log position; '0-0' = from the start), limit
-- (1..10000 entries), and optionally 'PAGE'.
-- Everything changed after `from`, as the net effect: {pos, ids, vectors, metadatas, skipped, more} where a
-- false vector means deleted and `skipped` counts malformed entries left out. {'TRIMMED'} when the log no
-- longer reaches back that far. One call reads at most `limit` entries, TAIL_IDS ids and about TAIL_BYTES of
-- values: past that it answers {'TOOLONG'} (the caller reloads in full), or with 'PAGE' it stops after the
-- last whole entry, sets more = 1 and pos to that entry, and the caller continues from there.
local function tail(keys, args)
  if #keys ~= 4 then
    return bad('emb_tail takes 4 keys (vec, meta, log, state)')
  end
  local page = args[3] == 'PAGE'
  local from, limit = args[1], count_arg(args[2], MAX_TAIL_LIMIT)
  if not (#args == 2 or (#args == 3 and page)) or not valid_pos(from) or not limit then
    return bad('emb_tail: ARGV is a log position, a limit (1..' .. MAX_TAIL_LIMIT .. ') and optionally PAGE')
  end
  local pos = redis.call('HGET', keys[4], 'pos')
  if not valid_pos(pos) then  -- not what emb_upsert writes: the log's own last entry says where it is
    local last = redis.call('XREVRANGE', keys[3], '+', '-', 'COUNT', 1)
    pos = (last[1] and last[1][1]) or '0-0'
  end
  if pos == from then
    return {pos, {}, {}, {}, 0, 0}
  end
  local trimmed = redis.call('HGET', keys[4], 'trimmed_to')
  if valid_pos(trimmed) and pos_less(from, trimmed) then
    return {'TRIMMED'}
  end
  local start = '-'
  if from ~= '0-0' then
    start = '(' .. from
  end
  local seen, ids, vecs, metas = {}, {}, {}, {}
  local used, bytes, skipped, reached = 0, 0, 0, nil
  while true do
    local batch = redis.call('XRANGE', keys[3], start, '+', 'COUNT', TAIL_BATCH)
    for _, e in ipairs(batch) do
      local list = entry_ids(e[2])
      -- the entry is taken whole or not at all: a page never passes TAIL_IDS ids (an entry holds at most 1000)
      if used >= limit or bytes >= TAIL_BYTES or (list and #ids + #list > TAIL_IDS) then
        if not page then
          return {'TOOLONG'}
        end
        return {reached, ids, vecs, metas, skipped, 1}
      end
      if list == nil then
        skipped = skipped + 1
      else
        for _, id in ipairs(list) do
          if not seen[id] then
            seen[id] = true
            local v = redis.call('HGET', keys[1], id)
            local m = redis.call('HGET', keys[2], id)
            ids[#ids + 1] = id
            vecs[#ids] = v
            metas[#ids] = m
            bytes = bytes + #id + (v and #v or 0) + (m and #m or 0)
          end
        end
      end
      for j = 1, #e[2] do  -- what the entry itself weighs counts too (a skipped one was still read)
        bytes = bytes + #e[2][j]
      end
      used = used + 1
      reached = e[1]
    end
    if #batch < TAIL_BATCH then
      break
    end
    start = '(' .. reached
  end
  return {pos, ids, vecs, metas, skipped, 0}
end

-- Space-level. KEYS: versions, seq, vstate (the new version's state). ARGV: name, record json (state 'open',
-- created, description; the name is added here), expected seq ('' for a name the caller chose; else the
-- caller read seq, named the version v<seq+1>, and we check nobody took that number meanwhile: EMBRETRY if
-- they did). Everything is checked before the counter moves, so a refused call changes nothing.
-- The space record is read (never written) without being passed as a key: FCALL asks write access to every
-- key it is given, and the record is the operator's alone. It shares the versions hash's tag, so it lives in
-- the same slot on a Cluster.
local function create_version(keys, args)
  if #keys ~= 3 or #args ~= 3 then
    return bad('emb_create_version takes 3 keys (versions, seq, vstate) and 3 arguments')
  end
  local space_key, found = string.gsub(keys[1], ':versions$', ':space')
  if found ~= 1 then
    return bad('emb_create_version: the first key is a space\'s versions hash')
  end
  local name, expected = args[1], args[3]
  if not valid_name(name) then
    return bad('invalid version name')
  end
  if expected ~= '' and not string.match(expected, '^%d+$') then
    return bad('the expected counter is a decimal number or empty')
  end
  local ok, rec = pcall(cjson.decode, args[2])
  if not ok or type(rec) ~= 'table' then
    return bad('the version record is not a JSON object')
  end
  for k, v in pairs(rec) do
    if k == 'state' then
      if v ~= 'open' then
        return bad('a new version is open')
      end
    elseif k == 'created' then
      if type(v) ~= 'number' then
        return bad('created is a number')
      end
    elseif k == 'description' then
      if type(v) ~= 'string' or #v > MAX_DESCRIPTION_BYTES then
        return bad('a description is a string of at most ' .. MAX_DESCRIPTION_BYTES .. ' bytes')
      end
    else
      return bad('unknown field in the version record')
    end
  end
  if redis.call('EXISTS', space_key) == 0 then
    return redis.error_reply('EMBNOTFOUND no such space')
  end
  if expected ~= '' then
    if (redis.call('GET', keys[2]) or '0') ~= expected then
      return redis.error_reply('EMBRETRY the version counter moved')
    end
    redis.call('INCR', keys[2])
  end
  if redis.call('HEXISTS', keys[1], name) == 1 or redis.call('EXISTS', keys[3]) == 1 then
    if expected ~= '' then
      return redis.error_reply('EMBRETRY ' .. name .. ' is taken')
    end
    return redis.error_reply('EMBEXISTS version ' .. name .. ' already exists')
  end
  rec['name'] = name
  rec['state'] = 'open'
  redis.call('HSET', keys[1], name, cjson.encode(rec))
  redis.call('SETNX', keys[3], 'open')
  return name
end

-- The owners map of a version (id -> partition) lets an upsert check that its ids live nowhere else with one
-- read, however many partitions the version has (embcache/redis/store.py: owners_check, claim). Its claims are
-- hints that the client verifies; this function is the one step that must be atomic: dropping a deleted id's
-- claim only while it still names the partition it was deleted from. The map lives under the version's tag.
local function owners_key(keys)
  return #keys == 1 and string.match(keys[1], ':{[^{}/]+/[^{}/]+}:owners$') ~= nil
end

-- KEYS: owners. ARGV: a partition, then 1..1000 ids deleted from it: their claims go, unless another partition
-- has claimed them meanwhile. Returns how many claims were removed.
local function unclaim(keys, args)
  if not owners_key(keys) then
    return bad('emb_unclaim takes 1 key (a version\'s owners map)')
  end
  if #args < 2 or #args > MAX_ITEMS + 1 or not valid_name(args[1]) then
    return bad('emb_unclaim: ARGV is a partition, then 1..' .. MAX_ITEMS .. ' ids')
  end
  for i = 2, #args do
    if not stored_id(args[i]) then
      return bad('emb_unclaim: invalid id')
    end
  end
  local gone = 0
  for i = 2, #args do
    if redis.call('HGET', keys[1], args[i]) == args[1] then
      gone = gone + redis.call('HDEL', keys[1], args[i])
    end
  end
  return gone
end

-- KEYS: vstate, parts. ARGV: partition. Adds the partition to an open version. The state is a plain string:
-- writers may pass it to this function (FCALL wants write access to every key it is given) but hold no
-- command that could change a string.
local function register(keys, args)
  if #keys ~= 2 or #args ~= 1 then
    return bad('emb_register takes 2 keys (vstate, parts) and a partition name')
  end
  if not valid_name(args[1]) then
    return bad('invalid partition name')
  end
  local state = redis.call('GET', keys[1])
  if not state then
    return redis.error_reply('EMBNOTFOUND no such version')
  end
  if state ~= 'open' then
    return redis.error_reply('EMBSEALED the version is sealed')
  end
  return redis.call('SADD', keys[2], args[1])
end

-- Sealing, step 1 of 3. KEYS: versions, parts, vstate. ARGV: version. Closes the version to new partitions
-- and returns {state, partitions}; the caller then flags every partition (SETNX, step 2) and records the
-- partitions' digests with emb_sealed (step 3). Until step 3 the version is reported 'sealing', never
-- 'sealed', so a seal cut short never shows a sealed version whose partitions still take writes.
local function seal(keys, args)
  if #keys ~= 3 or #args ~= 1 or not valid_name(args[1]) then
    return bad('emb_seal takes 3 keys (versions, parts, vstate) and a version name')
  end
  if redis.call('HEXISTS', keys[1], args[1]) == 0 then
    return redis.error_reply('EMBNOTFOUND no version ' .. args[1])
  end
  local state = redis.call('GET', keys[3])
  if state == 'open' then
    redis.call('APPEND', keys[3], ':sealing')
    state = SEALING
  elseif not state then  -- a version created before the state key existed
    redis.call('SETNX', keys[3], SEALING)
    state = SEALING
  end
  return {state, redis.call('SMEMBERS', keys[2])}
end

-- Sealing, step 3. KEYS: versions, vstate. ARGV: version, digests json ({partition: {...}}). Marks the version
-- sealed and keeps the digests in its record, where writers cannot change them; the worker checks a sealed
-- partition against its digest before it publishes a snapshot of it. A version sealed already keeps the
-- digests it was sealed with (re-sealing must not bless data changed since).
local function sealed_done(keys, args)
  if #keys ~= 2 or #args ~= 2 or not valid_name(args[1]) then
    return bad('emb_sealed takes 2 keys (versions, vstate), a version name and the digests')
  end
  local state = redis.call('GET', keys[2])
  if state and (state == 'sealed' or string.sub(state, 1, #SEALED) == SEALED) then
    return 0
  end
  if state ~= SEALING then
    return redis.error_reply('EMBCONFLICT the version is not being sealed (state ' .. tostring(state) .. ')')
  end
  local raw = redis.call('HGET', keys[1], args[1])
  if not raw then
    return redis.error_reply('EMBNOTFOUND no version ' .. args[1])
  end
  local ok, rec = pcall(cjson.decode, raw)
  local ok2, digests = pcall(cjson.decode, args[2])
  if not ok or type(rec) ~= 'table' or not ok2 or type(digests) ~= 'table' then
    return bad('the version record and the digests are JSON objects')
  end
  rec['state'] = 'sealed'
  rec['digests'] = digests
  redis.call('HSET', keys[1], args[1], cjson.encode(rec))
  redis.call('APPEND', keys[2], ':sealed')
  return 1
end

-- KEYS: versions, aliases, history. ARGV: alias, version. Moves the alias, remembering the old target.
local function set_alias(keys, args)
  if #keys ~= 3 or #args ~= 2 or not valid_name(args[1]) or not valid_name(args[2]) then
    return bad('emb_set_alias takes 3 keys (versions, aliases, history), an alias and a version name')
  end
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

-- KEYS: aliases, history, versions. ARGV: alias. Points the alias back at its previous target; history
-- entries that name no version (dropped, or planted) are discarded on the way (the history holds at most 100).
local function rollback(keys, args)
  if #keys ~= 3 or #args ~= 1 or not valid_name(args[1]) then
    return bad('emb_rollback takes 3 keys (aliases, history, versions) and an alias')
  end
  if redis.call('HEXISTS', keys[1], args[1]) == 0 then
    return redis.error_reply('EMBNOTFOUND no alias ' .. args[1])
  end
  for _ = 1, 100 do
    local prev = redis.call('LPOP', keys[2])
    if not prev then
      break
    end
    if valid_name(prev) and redis.call('HEXISTS', keys[3], prev) == 1 then
      redis.call('HSET', keys[1], args[1], prev)
      return prev
    end
  end
  return redis.error_reply('EMBNOHISTORY alias ' .. args[1] .. ' has no previous target')
end

-- Snapshot publication (the worker's). KEYS: snap (pointer), state, log, the new generation's chunks, the old
-- one's chunks (and those of a pointer that could not be read). ARGV: manifest json, the exact pointer the
-- build started from ('' = none), number of new chunks, grace seconds, log trim point ('' = none), channel,
-- message. Fails with EMBCONFLICT when the pointer changed meanwhile (another build published) or a chunk
-- expired. The pointer is compared byte for byte, not decoded: one that cannot be read is replaced like any.
local function publish(keys, args)
  if #args ~= 7 or #keys < 4 then
    return bad('emb_publish takes at least 4 keys and 7 arguments')
  end
  local n_new, grace = count_arg(args[3], #keys - 3), count_arg(args[4], 1000000000)
  local ok, m = pcall(cjson.decode, args[1])
  if not n_new or not grace or (args[5] ~= '' and not valid_pos(args[5]))
      or not ok or type(m) ~= 'table' or type(m['generation']) ~= 'number' or not valid_pos(m['pos'])
      or type(m['sid']) ~= 'string' or type(m['chunks']) ~= 'number' then
    return bad('emb_publish: malformed arguments')
  end
  local cur = redis.call('GET', keys[1]) or ''
  if cur ~= args[2] then
    return redis.error_reply('EMBCONFLICT another snapshot was published meanwhile')
  end
  for i = 4, 3 + n_new do
    if redis.call('EXISTS', keys[i]) == 0 then
      return redis.error_reply('EMBCONFLICT a chunk of the new snapshot expired before publication')
    end
  end
  for i = 4, 3 + n_new do
    redis.call('PERSIST', keys[i])
  end
  for i = 4 + n_new, #keys do
    redis.call('EXPIRE', keys[i], grace)
  end
  redis.call('SET', keys[1], args[1])
  redis.call('HSET', keys[2], 'generation', m['generation'], 'built_pos', m['pos'],
    'build_seconds', tostring(m['build_seconds']), 'built_at', tostring(m['built_at']),
    'sid', m['sid'], 'chunks', m['chunks'])
  redis.call('HDEL', keys[2], 'corrupt', 'upload:' .. m['sid'])  -- published: no longer a pending upload
  if args[5] ~= '' then
    redis.call('XTRIM', keys[3], 'MINID', args[5])
    redis.call('HSET', keys[2], 'trimmed_to', args[5])
  end
  redis.call('PUBLISH', args[6], args[7])
  return m['generation']
end

-- Delta publication (the worker's, issue 12.3). KEYS: snap (pointer), delta (the chain), state, the new segment's
-- chunks (none when a merge carries the segments after it over to the new snapshot, or starts an empty chain).
-- ARGV: the exact snapshot pointer the chain extends, the exact chain it replaces ('' = none), the new chain json,
-- number of chunks, channel, message. Fails with EMBCONFLICT when the snapshot or the chain changed meanwhile (a
-- merge or another build published) or a chunk expired; both are compared byte for byte.
local function publish_delta(keys, args)
  if #args ~= 6 or #keys < 3 then
    return bad('emb_publish_delta takes at least 3 keys and 6 arguments')
  end
  local n_new = tonumber(args[4])  -- 0: the segments of a merged chain carried over to the new snapshot
  local ok, c = pcall(cjson.decode, args[3])
  if not string.match(args[4], '^%d+$') or n_new ~= #keys - 3 or #args[3] > 36864 or not ok or type(c) ~= 'table'
      or type(c['segments']) ~= 'table' or #c['segments'] > 64 then
    return bad('emb_publish_delta: malformed arguments')
  end
  if args[1] == '' or (redis.call('GET', keys[1]) or '') ~= args[1] then
    return redis.error_reply('EMBCONFLICT another snapshot was published meanwhile')
  end
  if (redis.call('GET', keys[2]) or '') ~= args[2] then
    return redis.error_reply('EMBCONFLICT another delta was published meanwhile')
  end
  for i = 4, #keys do
    if redis.call('EXISTS', keys[i]) == 0 then
      return redis.error_reply('EMBCONFLICT a chunk of the new delta expired before publication')
    end
  end
  for i = 4, #keys do
    redis.call('PERSIST', keys[i])
  end
  redis.call('SET', keys[2], args[3])
  local last = c['segments'][#c['segments']]
  if type(last) == 'table' and type(last['sid']) == 'string' then
    redis.call('HDEL', keys[3], 'upload:' .. last['sid'])  -- published: no longer a pending upload
  end
  redis.call('PUBLISH', args[5], args[6])
  return #c['segments']
end

redis.register_function{function_name='emb_libversion', callback=libversion, flags={'no-writes'}}
redis.register_function('emb_upsert', upsert)
redis.register_function('emb_delete', delete)
redis.register_function{function_name='emb_get', callback=get, flags={'no-writes'}}
redis.register_function{function_name='emb_tail', callback=tail, flags={'no-writes'}}
redis.register_function('emb_create_version', create_version)
redis.register_function('emb_unclaim', unclaim)
redis.register_function('emb_register', register)
redis.register_function('emb_seal', seal)
redis.register_function('emb_sealed', sealed_done)
redis.register_function('emb_set_alias', set_alias)
redis.register_function('emb_rollback', rollback)
redis.register_function('emb_publish', publish)
redis.register_function('emb_publish_delta', publish_delta)
