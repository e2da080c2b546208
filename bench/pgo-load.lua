-- wrk script for bench/pgo-build.sh's training load: each request presents the next line of
-- KEYS_FILE, in rotation, as verify's JSON body (MODE=json: POST PATH_ {"key":"<line>"} with
-- the root key in AUTH as bearer token) or as the gateway's x-api-key header (MODE=header:
-- GET PATH_). A line may carry more JSON fields after the key: `KEY","ip":"10.1.2.3`.
-- Requests are formatted once, in init(), so the load costs one table index per request.
local keys_file = os.getenv("KEYS_FILE")
local mode = os.getenv("MODE") or "json"
local path = os.getenv("PATH_") or "/v1/keys/verify"
local auth = os.getenv("AUTH")

local reqs, n, i = {}, 0, 0

function init(args)
  local f = assert(io.open(keys_file, "r"), "KEYS_FILE is not readable")
  for line in f:lines() do
    if #line > 0 then
      n = n + 1
      if mode == "json" then
        reqs[n] = wrk.format("POST", path, {
          ["Content-Type"] = "application/json",
          ["Authorization"] = "Bearer " .. auth,
        }, '{"key":"' .. line .. '"}')
      else
        reqs[n] = wrk.format("GET", path, { ["x-api-key"] = line })
      end
    end
  end
  f:close()
  assert(n > 0, "no keys in KEYS_FILE")
end

function request()
  i = i % n + 1
  return reqs[i]
end
