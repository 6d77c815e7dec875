-- Admits or refuses one request, atomically, on Redis's clock. Mirrors bucket.rs and
-- memory.rs: keep them in step.
--
-- KEYS[1]  hash: rl, rt (request bucket level and update time), tl, tt (the token bucket)
-- KEYS[2]  sorted set: concurrency leases, member request id, score lease expiry (µs)
-- KEYS[3]  sorted set: safety violations, score time (µs)
-- ARGV     rpm, tpm, max_concurrent (0 = unlimited), request id, lease (µs),
--          adaptive threshold (0 = off), adaptive window (µs), adaptive max tier,
--          concurrency retry (µs)
-- Returns  {admitted, reason (0 none, 1 requests, 2 tokens, 3 concurrency), retry_after_us,
--           rpm, requests remaining, requests reset_us, tpm, tokens remaining, tokens reset_us}
--          with rpm/tpm 0 when unlimited.

local WINDOW = 60000000
local EPSILON = 1e-6
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
-- Lua's own number-to-string keeps 14 digits, too few for microsecond timestamps.
local function int(x) return string.format('%.0f', x) end
local function float(x) return string.format('%.17g', x) end

local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local max_concurrent = tonumber(ARGV[3])
local lease = tonumber(ARGV[5])
local threshold = tonumber(ARGV[6])

local tier = 0
if threshold > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', int(now - tonumber(ARGV[7])))
  tier = math.min(math.floor(redis.call('ZCARD', KEYS[3]) / threshold), tonumber(ARGV[8]))
end
local function scaled(limit)
  if limit == 0 then return 0 end
  return math.max(1, math.floor(limit / 2 ^ tier))
end
rpm = scaled(rpm)
tpm = scaled(tpm)

local stored = redis.call('HMGET', KEYS[1], 'rl', 'rt', 'tl', 'tt')
local function level_at(level, updated, limit)
  level = tonumber(level) or 0
  updated = tonumber(updated) or now
  return math.max(0, level - math.max(0, now - updated) * limit / WINDOW)
end
local function window(level, limit)
  return {limit, math.floor(math.max(0, limit - level)), math.ceil(level * WINDOW / limit)}
end

local reason, retry = 0, 0
local function refuse(why, wait)
  if reason == 0 or wait > retry then reason, retry = why, wait end
end

local requests, tokens = {0, 0, 0}, {0, 0, 0}
local request_level = 0
if rpm > 0 then
  local level = level_at(stored[1], stored[2], rpm)
  request_level = level + 1
  if request_level <= rpm + EPSILON then
    requests = window(request_level, rpm)
  else
    refuse(1, math.ceil((request_level - rpm) * WINDOW / rpm))
    requests = window(level, rpm)
  end
end
local token_level = 0
if tpm > 0 then
  token_level = level_at(stored[3], stored[4], tpm)
  if token_level >= tpm then
    refuse(2, math.max(1, math.ceil((token_level - tpm) * WINDOW / tpm)))
  end
  tokens = window(token_level, tpm)
end
if max_concurrent > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', int(now))
  if redis.call('ZCARD', KEYS[2]) >= max_concurrent then
    refuse(3, tonumber(ARGV[9]))
  end
end

if reason == 0 then
  if rpm > 0 then
    redis.call('HSET', KEYS[1], 'rl', float(request_level), 'rt', int(now))
    local drained = request_level * WINDOW / rpm
    if tpm > 0 then drained = math.max(drained, token_level * WINDOW / tpm) end
    local ttl = math.ceil(drained / 1000) + 1000
    if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
  end
  if max_concurrent > 0 then
    redis.call('ZADD', KEYS[2], int(now + lease), ARGV[4])
    redis.call('PEXPIRE', KEYS[2], math.ceil(lease / 1000) + 1000)
  end
end

return {reason == 0 and 1 or 0, reason, retry,
        requests[1], requests[2], requests[3], tokens[1], tokens[2], tokens[3]}
