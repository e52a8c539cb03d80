-- bench_api.lua -- the workflow `caremesh bench api` drives by default: one
-- state that takes any number of "step" events, each changing the context.
local cm = require "caremesh"

return cm.workflow {
  name = "bench_api", version = 1,
  start = "open",
  states = {
    open = {
      on = {
        step = function(wf) wf.ctx.n = (wf.ctx.n or 0) + 1 end,
        close = "closed",
      },
    },
    closed = { final = true },
  },
}
