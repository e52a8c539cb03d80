-- tarantool_client.lua -- the client side of tests/bench/compare_tarantool.sh:
-- the work of `caremesh bench api` against tests/bench/tarantool_server.lua,
-- over net.box (iproto, msgpack).
-- usage: tarantool tarantool_client.lua PORT INSTANCES EVENTS CONNECTIONS PIPELINE
-- It starts INSTANCES instances (start), then sends each EVENTS "step"
-- events (step), on CONNECTIONS connections with PIPELINE calls in flight on
-- each: one fiber per connection keeps PIPELINE is_async calls (futures)
-- out and waits for the oldest, as `caremesh bench api` keeps PIPELINE
-- requests out per connection and reads the answers in order (futures cost
-- the client less CPU than a fiber per call: 4.2-4.3 against 5.5-5.7 us a
-- request, and gave more events/s, in two runs of each). As in `caremesh
-- bench api`, event k goes to instance k % INSTANCES, only the events are
-- timed, and an event's latency runs from its call to the moment the
-- client has its answer (after the server's commit and synced WAL write). Prints the figures, then a
-- last line of JSON with events_per_s, p50_us and p99_us.
local netbox = require('net.box')
local fiber = require('fiber')
local clock = require('clock')

local function num(i, name)
  local v = tonumber(arg[i])
  if v == nil or v < 1 or v ~= math.floor(v) then
    io.stderr:write('tarantool_client.lua: ', name, ' must be a positive integer, got ',
                    tostring(arg[i]), '\n')
    os.exit(2)
  end
  return v
end

local port = num(1, 'PORT')
local ninst, nev, nconn, pipe =
  num(2, 'INSTANCES'), num(3, 'EVENTS'), num(4, 'CONNECTIONS'), num(5, 'PIPELINE')

local conns = {}
for i = 1, nconn do
  local c = netbox.connect('127.0.0.1:' .. port, { wait_connected = 10 })
  if not c:is_connected() then
    io.stderr:write('tarantool_client.lua: cannot connect to 127.0.0.1:', port, ': ',
                    tostring(c.error), '\n')
    os.exit(1)
  end
  conns[i] = c
end

local ids = {}
for i = 0, ninst - 1 do ids[i] = 'bench-' .. i end
local event = { event = 'step' }

-- Runs total calls (call(conn, k) for k = 0 .. total-1, each k once, in
-- order of taking; each returns a future, whose answer check(answer) must
-- accept) with pipe futures out on each of the nconn connections; lat, if
-- given, gets each call's microseconds. Returns the seconds from the first
-- call to the last answer, or raises the first error an answer had.
local function run(total, call, check, lat)
  local next_k, left, failure = 0, nconn, nil
  local done = fiber.channel(1)
  local t0 = clock.monotonic64()
  for ci = 1, nconn do
    local c = conns[ci]
    fiber.create(function()
      local out, sent, head, n = {}, {}, 0, 0 -- a ring of pipe futures
      while failure == nil do
        while n < pipe and next_k < total do
          local k, slot = next_k, (head + n) % pipe
          next_k = k + 1
          sent[slot] = clock.monotonic64()
          out[slot] = call(c, k)
          n = n + 1
        end
        if n == 0 then break end
        local res, err = out[head]:wait_result()
        if res == nil or not check(res[1]) then
          failure = failure or err or ('unexpected answer ' .. tostring(res[1]))
          break
        end
        if lat then lat[#lat + 1] = tonumber(clock.monotonic64() - sent[head]) / 1000 end
        out[head] = nil
        head = (head + 1) % pipe
        n = n - 1
      end
      left = left - 1
      if left == 0 then done:put(true) end
    end)
  end
  done:get()
  local secs = tonumber(clock.monotonic64() - t0) / 1e9
  if failure ~= nil then error(failure, 0) end
  return secs
end

local async = { is_async = true }
local function is_open(state) return state == 'open' end

print(string.format('tarantool bench: %d instances, %d "step" events each, %d connection(s), '
                    .. '%d in flight on each, against 127.0.0.1:%d',
                    ninst, nev, nconn, pipe, port))
local ok, err = pcall(run, ninst, function(c, k)
  return c:call('start', { { workflow = 'bench_api', id = ids[k] } }, async)
end, is_open)
if not ok then
  io.stderr:write('tarantool_client.lua: start failed: ', tostring(err), '\n')
  os.exit(1)
end
local lat = {}
local secs
ok, secs = pcall(run, ninst * nev, function(c, k)
  return c:call('step', { ids[k % ninst], event }, async)
end, is_open, lat)
if not ok then
  io.stderr:write('tarantool_client.lua: step failed: ', tostring(secs), '\n')
  os.exit(1)
end
-- every acknowledged call wrote its rows: one instance per start, one
-- history row per start and per event
local got_inst, got_hist = conns[1]:call('counts')
if got_inst ~= ninst or got_hist ~= ninst * (nev + 1) then
  io.stderr:write(string.format('tarantool_client.lua: the server holds %s instances and %s '
                                .. 'history rows, not %d and %d\n', tostring(got_inst),
                                tostring(got_hist), ninst, ninst * (nev + 1)))
  os.exit(1)
end
for i = 1, nconn do conns[i]:close() end
table.sort(lat)
local n = #lat
-- the same ranks as `caremesh bench api` (0-based n/2 and n*99/100)
local p50 = math.floor(lat[math.floor(n / 2) + 1])
local p99 = math.floor(lat[math.floor(n * 99 / 100) + 1])
print(string.format('%d events answered after their commit in %.2f s: %.0f events/s; latency p50 %d us, p99 %d us',
                    n, secs, n / secs, p50, p99))
print(string.format('{"events_per_s":%.0f,"p50_us":%d,"p99_us":%d,"events":%d,"instances":%d,'
                    .. '"connections":%d,"pipeline":%d}',
                    n / secs, p50, p99, n, ninst, nconn, pipe))
os.exit(0)
