-- tarantool_client.lua -- the client side of tests/bench/compare_tarantool.sh:
-- the work of `caremesh bench api` against tests/bench/tarantool_server.lua,
-- over net.box (iproto, msgpack).
-- usage: tarantool tarantool_client.lua PORT INSTANCES EVENTS CONNECTIONS PIPELINE
-- It starts INSTANCES instances (start), then sends each EVENTS "step"
-- events (step), on CONNECTIONS connections with PIPELINE calls in flight on
-- each (one fiber per call in flight; net.box sends the calls of a
-- connection's fibers together and matches the answers by their sync).
-- As in `caremesh bench api`, event k goes to instance k % INSTANCES, only
-- the events are timed, and an event's latency runs from its call to its
-- answer (after the server's commit and fsync). Prints the figures, then a
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
-- order of taking) on nconn * pipe fibers; lat, if given, gets each call's
-- microseconds. Returns the seconds from the first call to the last answer,
-- or raises the first error a call got.
local function run(total, call, lat)
  local next_k, left, failure = 0, nconn * pipe, nil
  local done = fiber.channel(1)
  local t0 = clock.monotonic64()
  for ci = 1, nconn do
    local c = conns[ci]
    for _ = 1, pipe do
      fiber.create(function()
        while failure == nil and next_k < total do
          local k = next_k
          next_k = k + 1
          local t = clock.monotonic64()
          local ok, err = pcall(call, c, k)
          if not ok then
            failure = failure or err
            break
          end
          if lat then lat[#lat + 1] = tonumber(clock.monotonic64() - t) / 1000 end
        end
        left = left - 1
        if left == 0 then done:put(true) end
      end)
    end
  end
  done:get()
  local secs = tonumber(clock.monotonic64() - t0) / 1e9
  if failure ~= nil then error(failure, 0) end
  return secs
end

print(string.format('tarantool bench: %d instances, %d "step" events each, %d connection(s), '
                    .. '%d in flight on each, against 127.0.0.1:%d',
                    ninst, nev, nconn, pipe, port))
local ok, err = pcall(run, ninst, function(c, k)
  return c:call('start', { { workflow = 'bench_api', id = ids[k] } })
end)
if not ok then
  io.stderr:write('tarantool_client.lua: start failed: ', tostring(err), '\n')
  os.exit(1)
end
local lat = {}
local secs
ok, secs = pcall(run, ninst * nev, function(c, k)
  local state = c:call('step', { ids[k % ninst], event })
  if state ~= 'open' then error('step answered state ' .. tostring(state)) end
end, lat)
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
