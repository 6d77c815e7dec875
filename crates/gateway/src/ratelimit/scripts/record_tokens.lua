-- Adds the tokens of a finished response to the token bucket. Mirrors memory.rs.
--
-- KEYS[1]  hash: tl, tt (token bucket level and update time)
-- KEYS[2]  sorted set: safety violations, score time (µs)
-- ARGV     tpm, tokens, adaptive threshold (0 = off), adaptive window (µs), adaptive max tier

local WINDOW = 60000000
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
-- Lua's own number-to-string keeps 14 digits, too few for microsecond timestamps.
local function int(x) return string.format('%.0f', x) end
local function float(x) return string.format('%.17g', x) end

local tpm = tonumber(ARGV[1])
local threshold = tonumber(ARGV[3])
local tier = 0
if threshold > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', int(now - tonumber(ARGV[4])))
  tier = math.min(math.floor(redis.call('ZCARD', KEYS[2]) / threshold), tonumber(ARGV[5]))
end
tpm = math.max(1, math.floor(tpm / 2 ^ tier))

local stored = redis.call('HMGET', KEYS[1], 'tl', 'tt')
local level = tonumber(stored[1]) or 0
local updated = tonumber(stored[2]) or now
level = math.max(0, level - math.max(0, now - updated) * tpm / WINDOW) + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'tl', float(level), 'tt', int(math.max(now, updated)))
local ttl = math.ceil(level * WINDOW / tpm / 1000) + 1000
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
