-- wrk script of `cargo xtask bench`: checks every answer wrk receives.
-- Arguments after `--`: the served file's size in bytes. Counts answers that are not
-- a 200 and bodies whose length is not that size; `done` prints the totals of all
-- threads and wrk's latency percentiles in one line the bench parses.
-- A paced run appends a `delay()` function (see bench/wrk.rs).
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_number", #threads)
end

function init(args)
  expected = tonumber(args[1])
  responses, not_200, wrong_length = 0, 0, 0
  -- Different random delays per thread (a paced run), not the same sequence twice.
  math.randomseed(os.time() * 100 + thread_number)
end

function response(status, headers, body)
  responses = responses + 1
  if status ~= 200 then
    not_200 = not_200 + 1
  end
  if body == nil or #body ~= expected then
    wrong_length = wrong_length + 1
  end
end

function done(summary, latency, requests)
  local r, s, w = 0, 0, 0
  for _, t in ipairs(threads) do
    r = r + t:get("responses")
    s = s + t:get("not_200")
    w = w + t:get("wrong_length")
  end
  io.write(string.format("capture-bench: responses=%d not_200=%d wrong_length=%d p50_us=%d p99_us=%d\n",
    r, s, w, math.floor(latency:percentile(50)), math.floor(latency:percentile(99))))
end
