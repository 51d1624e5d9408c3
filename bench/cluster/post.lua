-- wrk script: POST the body in BODY_FILE (set by run.py), each request from another client
-- address in X-Forwarded-For. The collector trusts that header from 127.0.0.1 (TRUSTED_PROXIES),
-- so every request is another visitor and the events spread over all stream partitions.
local file = io.open(os.getenv("BODY_FILE"), "rb")
local body = file:read("*a")
file:close()
local count = 0

function request()
  count = count + 1
  local address = string.format("10.%d.%d.%d", math.floor(count / 65536) % 256, math.floor(count / 256) % 256,
                                count % 256)
  return wrk.format("POST", nil, {
    ["Host"] = wrk.headers["Host"],
    ["Content-Type"] = "text/plain",
    ["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    ["X-Forwarded-For"] = address,
  }, body)
end
