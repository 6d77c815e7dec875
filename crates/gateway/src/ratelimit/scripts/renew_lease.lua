-- Extends a live request's concurrency lease, if it still holds one.
--
-- KEYS[1]  sorted set: concurrency leases, member request id, score lease expiry (µs)
-- ARGV     request id, lease (µs)

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
-- Lua's own number-to-string keeps 14 digits, too few for microsecond timestamps.
local function int(x) return string.format('%.0f', x) end
local lease = tonumber(ARGV[2])
local renewed = redis.call('ZADD', KEYS[1], 'XX', 'CH', int(now + lease), ARGV[1])
if renewed == 1 then
  redis.call('PEXPIRE', KEYS[1], math.ceil(lease / 1000) + 1000)
end
return renewed
