-- zerodown's upstreams on nginx: each request's target chosen from a table in
-- shared memory (dataplane/nginx/upstreams.py renders it), so a deploy step --
-- a new target, a weight, a drain, a health verdict -- is a new table, loaded
-- through the control socket, and never a reload. A reload makes every old
-- worker close its idle keep-alive client connections at once, and a request
-- a client sends on one of them at that moment is lost.
--
-- Loading: init_by_lua loads the table file whenever nginx reads its
-- configuration (start, reload); POST /zerodown/upstreams/load stores the
-- table in its body (the driver writes the file first, so a reload or a
-- restart of nginx finds the same table).
-- A table is for one configuration (its "generation" line) and is kept under
-- it, so the workers of each configuration route by their own: on a reload
-- the master loads the next one while the old workers finish their requests,
-- and a worker respawned after a reload that failed still finds its table.
-- Each load bumps "version"; each worker adopts its generation's latest from
-- a timer (every REPORT seconds), never per request, and reports the version
-- it routes by; the driver reads the reports back (GET
-- /zerodown/upstreams/workers) to confirm a load. (A drain's end it reads
-- from the kernel: sockets.py.)
--
-- Per worker, as nginx's own balancers without a zone: round-robin state,
-- requests in flight (least_conn and random two only: counting them takes a
-- log_by_lua hook, which costs more than the balancer) and passive failures
-- (max_fails in fail_timeout). When every target is out by passive failures
-- the service routes to all of them anyway: a busy app is not a dead app.

local balancer = require "ngx.balancer"

local set_current_peer = balancer.set_current_peer
local get_last_failure = balancer.get_last_failure
local set_more_tries = balancer.set_more_tries
local shared = ngx.shared.zerodown_upstreams
local var = ngx.var
local now = ngx.now
local random = math.random
local crc32 = ngx.crc32_long
local floor = math.floor
local tonumber = tonumber

local M = {}

local HEADER = "zerodown-upstreams 1"
local REPORT = 0.05     -- seconds between a worker's looks at the version and reports
local REPORT_TTL = 2    -- a dead worker's report is gone this long after its last
local RING_POINTS = 160 -- hash: points on the ring per target at the mean weight

local version = -1
local generation = nil  -- of the configuration this worker serves (init_worker)
local services = {}
local busy = {}       -- "host:port" -> requests in flight there (least_conn, random_two)
-- service -> "host:port" -> { count, out_until, first failure's time }: kept
-- across tables, so a new weight does not forgive a failing target.
local failures = {}
local COUNTS_BUSY = { least_conn = true, random_two = true }

-- The table ---------------------------------------------------------------

local function ring(peers, total)
    local points = {}
    for _, p in ipairs(peers) do
        local n = floor(RING_POINTS * #peers * p.weight / total + 0.5)
        for i = 1, (n > 0 and n or 1) do
            points[#points + 1] = { crc32(p.addr .. "-" .. i), p }
        end
    end
    table.sort(points, function(a, b) return a[1] < b[1] end)
    return points
end

-- Text -> { name -> service }, and the generation of the configuration it
-- goes with; nil and the reason when a line is malformed.
local function parse(text)
    local lines = text:gmatch("[^\n]+")
    if lines() ~= HEADER then
        return nil, "not a zerodown upstreams table (first line is not '" .. HEADER .. "')"
    end
    local gen = tonumber((lines() or ""):match("^generation (%d+)$"))
    if gen == nil then
        return nil, "no 'generation N' line after the first"
    end
    local out = {}
    for line in lines do
        local kind, name, a, b, c, d, e = line:match("^(%S+) (%S+) (%S+) (%S+) (%S+) ?(%S*) ?(%S*)$")
        if kind == "service" and tonumber(b) and tonumber(c) and (e == "0" or e == "1") then
            failures[name] = failures[name] or {}
            out[name] = {
                balance = a, max_fails = tonumber(b), fail_timeout = tonumber(c),
                key = d ~= "-" and d or nil, count = e == "1", peers = {}, total = 0,
                busy = COUNTS_BUSY[a] or false, failures = failures[name],
            }
        elseif kind == "peer" and out[name] and tonumber(b) and tonumber(c) and d == "" then
            local s, weight = out[name], tonumber(c)
            s.peers[#s.peers + 1] = {
                host = a, port = tonumber(b), weight = weight, current = 0,
                addr = a .. ":" .. b,
            }
            s.total = s.total + weight
        else
            return nil, "malformed line: " .. line
        end
    end
    for _, s in pairs(out) do
        if s.balance == "hash" and s.total > 0 then
            s.ring = ring(s.peers, s.total)
        end
    end
    return out, gen
end

-- Check a table, store it under its generation and bump the version: the
-- new version, or nil and why (the table in use stays).
local function store(text)
    local parsed, gen = parse(text)
    if not parsed then
        return nil, gen
    end
    local v, err = shared:incr("version", 1, 0)
    if not v then
        return nil, "shared dict: " .. tostring(err)
    end
    local ok, set_err = shared:set("table:" .. gen, v .. "\n" .. text)
    if not ok then
        return nil, "shared dict: " .. tostring(set_err)
    end
    return v
end

-- init_by_lua, in the master: the table file the driver wrote last.
function M.load(path)
    local file, err = io.open(path, "r")
    if not file then
        return nil, "cannot read " .. path .. ": " .. tostring(err)
    end
    local text = file:read("*a")
    file:close()
    local v, why = store(text)
    if not v then
        return nil, path .. ": " .. why
    end
    return v
end

local function adopt()
    local stored = shared:get("table:" .. tostring(generation))
    local v, text = (stored or ""):match("^(%d+)\n(.*)$")
    v = tonumber(v)
    if v ~= nil and v ~= version then
        local parsed = parse(text)
        if parsed then
            services, version = parsed, v
        end
    end
end

local function report(premature)
    if premature then
        return
    end
    adopt()
    shared:set("worker:" .. ngx.worker.pid(), tostring(version), REPORT_TTL)
end

function M.init_worker(gen)
    generation = gen
    math.randomseed(ngx.now() * 1000 + ngx.worker.pid())  -- workers draw apart
    report(false)
    local ok, err = ngx.timer.every(REPORT, report)
    if not ok then
        ngx.log(ngx.ERR, "zerodown upstreams: no report timer: ", err)
    end
end

-- Picking a target ---------------------------------------------------------

local function usable(s, p, t, tried)
    if tried and tried[p.addr] then
        return false
    end
    local f = s.failures[p.addr]
    return f == nil or f[2] <= t
end

local function round_robin(s, t, tried)
    local best, total = nil, 0
    for _, p in ipairs(s.peers) do
        if usable(s, p, t, tried) then
            p.current = p.current + p.weight
            total = total + p.weight
            if best == nil or p.current > best.current then
                best = p
            end
        end
    end
    if best then
        best.current = best.current - total
    end
    return best
end

local function load_of(p)
    return ((busy[p.addr] or 0) + 1) / p.weight
end

local function least_conn(s, t, tried)
    local peers, best, least = s.peers, nil, nil
    local start = random(#peers)  -- ties fall to a random one, not the first
    for i = 0, #peers - 1 do
        local p = peers[(start + i - 1) % #peers + 1]
        if usable(s, p, t, tried) then
            local l = load_of(p)
            if least == nil or l < least then
                best, least = p, l
            end
        end
    end
    return best
end

local function weighted_random(s, t, tried, other)
    local total, chosen = 0, nil
    for _, p in ipairs(s.peers) do
        if p ~= other and usable(s, p, t, tried) then
            total = total + p.weight
            if random() * total < p.weight then
                chosen = p  -- reservoir sampling by weight
            end
        end
    end
    return chosen
end

local function random_two(s, t, tried)
    local a = weighted_random(s, t, tried, nil)
    local b = a and weighted_random(s, t, tried, a)
    if b and load_of(b) < load_of(a) then
        return b
    end
    return a
end

local function hashed(s, t, tried)
    local points = s.ring
    local key = (s.key and var[s.key]) or ""
    local h = crc32(key)
    local lo, hi = 1, #points
    while lo < hi do  -- the first point at or after h, wrapping round
        local mid = floor((lo + hi) / 2)
        if points[mid][1] < h then lo = mid + 1 else hi = mid end
    end
    if points[lo][1] < h then
        lo = 1
    end
    for i = 0, #points - 1 do
        local p = points[(lo + i - 1) % #points + 1][2]
        if usable(s, p, t, tried) then
            return p
        end
    end
    return nil
end

local PICK = {
    round_robin = round_robin,
    least_conn = least_conn,
    random_two = random_two,
    hash = hashed,
}

-- The targets this request tried so far ($upstream_addr: "a:1, b:2, -"), on
-- a retry only: the last one failed, in a way proxy_next_upstream retries.
-- (A failure no retry follows -- the last try, or tries = 1 -- is not seen
-- here: counting it would take a hook at every request's end.)
local function failed_try(s)
    local tried, last = {}, nil
    for addr in (var.upstream_addr or ""):gmatch("[^%s,:][^%s,]*") do
        if addr ~= "-" then
            tried[addr], last = true, addr
        end
    end
    if last then
        local n = busy[last]
        if n and n > 0 then
            busy[last] = n - 1
        end
        if s.max_fails > 0 then
            -- As nginx's max_fails: this many failures within fail_timeout of
            -- the first puts the target out for fail_timeout.
            local t = now()
            local f = s.failures[last]
            if f == nil or t - f[3] > s.fail_timeout then
                f = { 0, 0, t }
                s.failures[last] = f
            end
            f[1] = f[1] + 1
            if f[1] >= s.max_fails then
                f[1], f[2], f[3] = 0, t + s.fail_timeout, t
            end
        end
    end
    return tried
end

function M.balance(name)
    local s = services[name]
    if s == nil or s.total == 0 then
        -- The configuration answers 503 itself while no target takes traffic
        -- (the driver reloads for that): a table without one is a bug.
        ngx.log(ngx.ERR, "zerodown upstreams: no target in the table for ", name)
        return ngx.exit(500)
    end
    local tried
    if get_last_failure() ~= nil then
        tried = failed_try(s)
    else
        if #s.peers > 1 then
            set_more_tries(#s.peers - 1)  -- proxy_next_upstream_tries caps it
        end
        if s.count then
            var.zd_count = "1"  -- request_stats: its access log line goes to zerodown
        end
    end
    local t = next(s.failures) and now() or 0  -- no failure yet: no clock to read
    local pick = PICK[s.balance] or round_robin
    -- All out by passive failures: route anyway; all tried (the table
    -- changed between tries): any one again.
    local p = pick(s, t, tried) or pick(s, math.huge, tried) or pick(s, math.huge, nil)
    if s.busy then
        busy[p.addr] = (busy[p.addr] or 0) + 1
    end
    local ok, err = set_current_peer(p.host, p.port)
    if not ok then
        ngx.log(ngx.ERR, "zerodown upstreams: ", p.addr, ": ", err)
        return ngx.exit(500)
    end
end

-- Log phase of least_conn and random_two services: the request is over; its
-- last try's target has one less in flight.
function M.done()
    local tried = var.upstream_addr
    if tried == nil then
        return
    end
    local last = tried:match("([^%s,]+)$")
    local n = last and busy[last]
    if n and n > 0 then
        busy[last] = n - 1
    end
end

-- Control socket -----------------------------------------------------------

-- POST /zerodown/upstreams/load: the body is the new table. X-Zerodown-Expires
-- (Unix time) is when the driver gives up waiting for the answer: a request
-- read later (workers stopped, then resumed) must not load a table the driver
-- no longer stands behind.
function M.serve_load()
    local expires = tonumber(var.http_x_zerodown_expires or "")
    if expires and now() > expires then
        ngx.status = 409
        ngx.say("expired: the driver stopped waiting at ", expires, ", now ", now())
        return
    end
    ngx.req.read_body()
    local text = ngx.req.get_body_data()
    if text == nil then
        ngx.status = 400
        ngx.say("no table in the request body")
        return
    end
    ngx.update_time()  -- the body may have taken a while
    if expires and now() > expires then
        ngx.status = 409
        ngx.say("expired: the driver stopped waiting at ", expires, ", now ", now())
        return
    end
    local v, err = store(text)
    if not v then
        ngx.status = 422
        ngx.say(err)
        return
    end
    ngx.say(v)
end

-- GET /zerodown/upstreams/workers: "version N", then "PID VERSION" per worker.
function M.serve_workers()
    ngx.say("version ", shared:get("version") or 0)
    for _, key in ipairs(shared:get_keys(0)) do
        if key:sub(1, 7) == "worker:" then
            local line = shared:get(key)
            if line then
                ngx.say(key:sub(8), " ", line)
            end
        end
    end
end

return M
