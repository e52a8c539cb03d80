-- tarantool_server.lua -- the server side of tests/bench/compare_tarantool.sh:
-- a Tarantool store doing per event what a caremesh node does for
-- tests/bench/bench_api.lua's "step", for the "API beside Tarantool" figures
-- of docs/PERFORMANCE.md.
-- usage: tarantool tarantool_server.lua DIR [WAL_MODE]
--   DIR: an empty directory for the WAL, the snapshot and the log;
--   WAL_MODE: 'fsync' (the default and the comparison's), or 'write' (no
--   sync: what the same work costs without it, for the diagnosis). The
--   server listens on a free port of 127.0.0.1 and, once it serves, writes
--   that port to DIR/port (written to DIR/port.tmp, then renamed).
--
-- Durability as caremesh's synchronous=FULL: wal_mode = 'fsync', so the WAL
-- thread's writes are synchronous (Tarantool 2.6 opens the .xlog with
-- O_SYNC: each write returns once its data and metadata are on disk, with
-- no separate fsync call), and a transaction's commit (and so the call's
-- answer) waits for that write; the WAL thread writes the commits that
-- arrived meanwhile in one write, as caremesh's group commit does. The engine is memtx (Tarantool's default: the data in
-- memory, the WAL on disk).
local fio = require('fio')
local fiber = require('fiber')

local dir, wal_mode = arg[1], arg[2] or 'fsync'
if dir == nil or not fio.path.is_dir(dir) then
  io.stderr:write('tarantool_server.lua: the first argument must be a directory, got ',
                  tostring(dir), '\n')
  os.exit(2)
end
if wal_mode ~= 'fsync' and wal_mode ~= 'write' then
  io.stderr:write("tarantool_server.lua: WAL_MODE must be 'fsync' or 'write', got '",
                  wal_mode, "'\n")
  os.exit(2)
end

box.cfg {
  listen = '127.0.0.1:0',
  work_dir = dir,
  log = fio.pathjoin(dir, 'tarantool.log'),
  wal_mode = wal_mode,
  -- no snapshot during a run (caremesh checkpoints its WAL off the commit
  -- path; a snapshot here would be a memtx dump from another thread)
  checkpoint_interval = 0,
}

-- instances: one tuple per workflow instance; version counts its steps
-- (the start is step 1) and names its latest history row.
local instances = box.schema.space.create('instances', {
  format = {
    { name = 'id', type = 'string' },
    { name = 'workflow', type = 'string' },
    { name = 'state', type = 'string' },
    { name = 'version', type = 'unsigned' },
    { name = 'ctx', type = 'map' },
    { name = 'updated', type = 'number' },
  },
})
instances:create_index('primary', { parts = { 'id' } })

-- history: one tuple per step, as caremesh's history rows (the start's
-- row has no from state).
local history = box.schema.space.create('history', {
  format = {
    { name = 'instance', type = 'string' },
    { name = 'seq', type = 'unsigned' },
    { name = 'event', type = 'string' },
    { name = 'from', type = 'string', is_nullable = true },
    { name = 'to', type = 'string' },
    { name = 'at', type = 'number' },
  },
})
history:create_index('primary', { parts = { 'instance', 'seq' } })

-- The workflow of tests/bench/bench_api.lua: state "open" takes any number
-- of "step" events (each adds one to ctx.n) and "close" (to "closed");
-- "closed" is final. A handler returns the next state, or nil to stay.
local workflows = {
  bench_api = {
    start = 'open',
    states = {
      open = {
        on = {
          step = function(ctx) ctx.n = (ctx.n or 0) + 1 end,
          close = 'closed',
        },
      },
      closed = { final = true },
    },
  },
}

local IDX_WORKFLOW, IDX_STATE, IDX_VERSION, IDX_CTX, IDX_UPDATED = 2, 3, 4, 5, 6

-- fn(...) in one transaction: committed if it returns (the commit returns
-- after the WAL's synced write), rolled back if it raises, the error then
-- raised again; returns fn's result.
local function in_txn(fn, ...)
  box.begin()
  local ok, res = pcall(fn, ...)
  if not ok then
    box.rollback()
    error(res, 0)
  end
  box.commit()
  return res
end

local function start_txn(input, wf)
  local now = fiber.time()
  instances:insert { input.id, input.workflow, wf.start, 1, setmetatable({}, { __serialize = 'map' }), now }
  history:insert { input.id, 1, 'start', box.NULL, wf.start, now }
  return wf.start
end

-- start({workflow = NAME, id = ID}): a new instance in its workflow's first
-- state and its first history row, in one transaction; returns the state.
function start(input)
  if type(input) ~= 'table' or type(input.workflow) ~= 'string' or type(input.id) ~= 'string' then
    error('start: input must be a map with string fields workflow and id')
  end
  local wf = workflows[input.workflow]
  if wf == nil then
    error('start: no workflow "' .. input.workflow .. '"')
  end
  return in_txn(start_txn, input, wf)
end

local function step_txn(id, payload)
  local event = payload.event
  local t = instances:get(id)
  if t == nil then
    error('step: no instance "' .. id .. '"')
  end
  local from = t[IDX_STATE]
  local st = workflows[t[IDX_WORKFLOW]].states[from]
  local h = st.on and st.on[event]
  if h == nil then
    error('step: instance "' .. id .. '" in state "' .. from .. '" takes no event "' .. event .. '"')
  end
  local ctx, to = t[IDX_CTX], from -- ctx: a Lua table decoded from the tuple
  if type(h) == 'function' then
    to = h(ctx, payload.payload) or from
  else
    to = h
  end
  local v, now = t[IDX_VERSION] + 1, fiber.time()
  instances:update(id, {
    { '=', IDX_STATE, to }, { '=', IDX_VERSION, v }, { '=', IDX_CTX, ctx }, { '=', IDX_UPDATED, now },
  })
  history:insert { id, v, event, from, to, now }
  return to
end

-- step(ID, {event = NAME}): one event for instance ID in one transaction:
-- read the instance, run its state's handler for the event on the context
-- (a table decoded from the tuple: a copy), write the new state, context
-- and version, add the history row; returns the new state.
function step(id, payload)
  if type(id) ~= 'string' or type(payload) ~= 'table' or type(payload.event) ~= 'string' then
    error('step: arguments must be an instance id and a map with a string field event')
  end
  return in_txn(step_txn, id, payload)
end

-- counts(): the instances and history rows stored, for the client's check
-- that every acknowledged call wrote its rows.
function counts()
  return instances:len(), history:len()
end

box.schema.func.create('start', { setuid = true })
box.schema.func.create('counts', { setuid = true })
box.schema.func.create('step', { setuid = true })
box.schema.user.grant('guest', 'execute', 'function', 'start')
box.schema.user.grant('guest', 'execute', 'function', 'step')
box.schema.user.grant('guest', 'execute', 'function', 'counts')

local port = box.info.listen:match(':(%d+)$')
local f = io.open(fio.pathjoin(dir, 'port.tmp'), 'w')
f:write(port, '\n')
f:close()
fio.rename(fio.pathjoin(dir, 'port.tmp'), fio.pathjoin(dir, 'port'))
