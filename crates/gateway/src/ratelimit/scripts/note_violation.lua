-- Records one safety violation. Mirrors memory.rs.
--
-- KEYS[1]  sorted set: safety violations, member a unique id, score time (µs)
-- ARGV     id, adaptive window (µs), most violations kept

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
-- Lua's own number-to-string keeps 14 digits, too few for microsecond timestamps.
local function int(x) return string.format('%.0f', x) end
local window = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], int(now), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now - window))
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[3]) + 1))
redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
return 1
