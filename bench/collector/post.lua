-- wrk script: POST the body in BODY_FILE (set by run.py) to the URL given to wrk.
-- With WRK_DELAY_MS set, each connection waits that long between requests, which keeps the
-- rate near connections * 1000 / (WRK_DELAY_MS + latency in ms) requests per second.
local file = io.open(os.getenv("BODY_FILE"), "rb")
wrk.body = file:read("*a")
file:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "text/plain"
wrk.headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"

local delay_ms = tonumber(os.getenv("WRK_DELAY_MS") or "0")
if delay_ms > 0 then
  function delay()
    return delay_ms
  end
end
