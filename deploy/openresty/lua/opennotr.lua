-- opennotr's external gateway: the admin API opennotrd registers with, and
-- the routing of visitors by scheme://host to the client's VIP:port.
--
-- Admin API (the original resty-upstream's, with validation), only with
-- `Authorization: Bearer <secret>` (401 without it, 403 with another one);
-- the secret is read from a file at start (init's secret_file), and nginx
-- does not start without it:
--   POST   /upstreams  {"scheme": "http", "host": "a.example", "ip": "100.64.242.2", "port": "8080"}
--   GET    /upstreams?host=a.example&scheme=http   -> the stored JSON, or 404
--   GET    /upstreams                              -> every mapping, a JSON array
--   DELETE /upstreams?host=a.example&scheme=http   -> OK (also when absent)
-- Mappings live in the shared dict `upstreams` (lost on restart; opennotrd
-- re-pushes them every reconcileInterval).

local bit = require "bit"
local cjson = require "cjson.safe"
local balancer = require "ngx.balancer"

local _M = {}

local SCHEMES = { http = true, https = true, h2c = true }
-- Upstream ranges the admin API accepts (opennotrd's dhcp.cidr); set by init().
local allowed = {}
-- The admin secret, kept only as an HMAC under a key drawn at start: a
-- presented secret is compared as a fixed-length tag, in a time that does
-- not depend on where it differs. Set by init().
local tag_key, secret_tag

-- Fewest characters of the secret (opennotrd's adminSecret has the same).
local MIN_SECRET = 16

local function ipv4(s)
    if type(s) ~= "string" then return nil end
    local a, b, c, d = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
    if not a then return nil end
    local n = 0
    for _, part in ipairs({ a, b, c, d }) do
        local v = tonumber(part)
        if v > 255 or (#part > 1 and part:sub(1, 1) == "0") then return nil end
        n = n * 256 + v
    end
    return n
end

local function read_file(path, n)
    local f, err = io.open(path, "rb")
    if not f then return nil, err end
    local data = f:read(n or "*a")
    f:close()
    return data
end

-- The admin secret from `path` (relative to nginx's prefix): one line of
-- at least MIN_SECRET visible ASCII characters, no spaces.
local function load_secret(path)
    assert(type(path) == "string" and path ~= "",
        "opennotr: init() needs secret_file, the file holding the admin API's secret")
    if path:sub(1, 1) ~= "/" then
        local prefix = ngx.config.prefix()
        if prefix:sub(-1) ~= "/" then prefix = prefix .. "/" end
        path = prefix .. path
    end
    local data, err = read_file(path)
    assert(data, "opennotr: cannot read the admin secret (secret_file): " .. tostring(err))
    local secret = data:gsub("^%s+", ""):gsub("%s+$", "")
    assert(#secret >= MIN_SECRET and secret:match("^[!-~]+$"),
        "opennotr: the admin secret in " .. path .. " must be one line of " .. MIN_SECRET
        .. " or more visible characters without spaces (e.g. openssl rand -hex 32)")
    return secret
end

-- init{ allow = {"100.64.0.0/10", ...}, secret_file = "admin.secret" },
-- from init_by_lua: an error here stops nginx from starting.
function _M.init(conf)
    allowed = {}
    for _, cidr in ipairs(conf.allow or {}) do
        local ip, len = cidr:match("^([%d.]+)/(%d+)$")
        local n, bits = ipv4(ip), tonumber(len)
        assert(n and bits and bits <= 32, "opennotr: bad CIDR " .. tostring(cidr))
        local size = 2 ^ (32 - bits)
        table.insert(allowed, { base = math.floor(n / size), size = size })
    end
    local secret = load_secret(conf.secret_file)
    local key = read_file("/dev/urandom", 32)
    assert(key and #key == 32, "opennotr: cannot read /dev/urandom")
    tag_key, secret_tag = key, ngx.hmac_sha1(key, secret)
end

-- Whether two strings of the same length are equal, looking at every byte.
local function same(a, b)
    if #a ~= #b then return false end
    local diff = 0
    for i = 1, #a do
        diff = bit.bor(diff, bit.bxor(a:byte(i), b:byte(i)))
    end
    return diff == 0
end

local function ip_allowed(s)
    local n = ipv4(s)
    if not n then return false end
    for _, r in ipairs(allowed) do
        if math.floor(n / r.size) == r.base then return true end
    end
    return false
end

-- A DNS name: labels of letters, digits and inner hyphens, 253 chars at most.
local function dns_name(s)
    if type(s) ~= "string" or #s == 0 or #s > 253 then return false end
    for label in (s .. "."):gmatch("([^.]*)%.") do
        if #label == 0 or #label > 63 or not label:match("^[%w-]+$")
            or label:sub(1, 1) == "-" or label:sub(-1) == "-" then
            return false
        end
    end
    return true
end

local function key(scheme, host)
    return scheme .. "://" .. host
end

local function reply(status, body)
    ngx.status = status
    ngx.header["Content-Type"] = status == 200 and body:sub(1, 1) ~= "O" and "application/json" or "text/plain"
    ngx.say(body)
    return ngx.exit(status)
end

-- Whether the request carries the admin secret; if not, it has been
-- answered: 401 without a Bearer credential, 403 with a wrong one.
local function authorized()
    if not secret_tag then
        reply(503, "opennotr: no admin secret configured (init's secret_file)")
        return false
    end
    local presented = (ngx.var.http_authorization or ""):match("^[Bb][Ee][Aa][Rr][Ee][Rr] +([!-~]+) *$")
    if not presented then
        ngx.header["WWW-Authenticate"] = 'Bearer realm="opennotr-gateway"'
        reply(401, "Authorization: Bearer <admin secret> required")
        return false
    end
    if not same(ngx.hmac_sha1(tag_key, presented), secret_tag) then
        reply(403, "wrong admin secret")
        return false
    end
    return true
end

-- content_by_lua of the admin location.
function _M.admin()
    if not authorized() then return end
    local dict = ngx.shared.upstreams
    local method = ngx.req.get_method()
    local args = ngx.req.get_uri_args()
    if method == "POST" or method == "PUT" then
        ngx.req.read_body()
        local m = cjson.decode(ngx.req.get_body_data() or "")
        if type(m) ~= "table" then return reply(400, "body: expected a JSON object") end
        local host = type(m.host) == "string" and m.host:lower():gsub("%.$", "") or nil
        local port = tonumber(m.port)
        if not SCHEMES[m.scheme] then return reply(400, "scheme: expected http, https or h2c") end
        if not dns_name(host) then return reply(400, "host: expected a DNS name") end
        if not ip_allowed(m.ip) then return reply(400, "ip: not an IPv4 address in the allowed ranges") end
        if not port or port ~= math.floor(port) or port < 1 or port > 65535 then
            return reply(400, "port: expected 1-65535")
        end
        -- Stored as the original did: port as a string.
        local v = cjson.encode({ scheme = m.scheme, host = host, ip = m.ip, port = tostring(port) })
        local ok, err = dict:set(key(m.scheme, host), v)
        if not ok then return reply(500, "cannot store: " .. tostring(err)) end
        return reply(200, "OK")
    elseif method == "GET" and args.host == nil and args.scheme == nil then
        local out = {}
        for _, k in ipairs(dict:get_keys(0)) do
            local v = dict:get(k)
            if v then table.insert(out, cjson.decode(v)) end
        end
        return reply(200, #out == 0 and "[]" or cjson.encode(out))
    elseif method == "GET" or method == "DELETE" then
        if type(args.host) ~= "string" or type(args.scheme) ~= "string" then
            return reply(400, "expected ?host=<domain>&scheme=<scheme>")
        end
        local k = key(args.scheme, args.host:lower():gsub("%.$", ""))
        if method == "DELETE" then
            dict:delete(k)
            return reply(200, "OK")
        end
        local v = dict:get(k)
        if not v then return reply(404, "no mapping for " .. k) end
        return reply(200, v)
    end
    return reply(405, "methods: GET, POST, DELETE")
end

-- access_by_lua of the public locations: finds the upstream for
-- scheme://$host (404 if none) and leaves it for balance().
function _M.route(scheme)
    local host = ngx.var.host
    local v = ngx.shared.upstreams:get(key(scheme, host))
    local m = v and cjson.decode(v)
    if not m then
        ngx.status = 404
        ngx.header["Content-Type"] = "text/plain"
        ngx.say("opennotr: no client is connected for ", scheme, "://", host)
        return ngx.exit(404)
    end
    ngx.ctx.upstream_ip, ngx.ctx.upstream_port = m.ip, tonumber(m.port)
end

-- balancer_by_lua of the dynamic upstream.
function _M.balance()
    local ok, err = balancer.set_current_peer(ngx.ctx.upstream_ip, ngx.ctx.upstream_port)
    if not ok then
        ngx.log(ngx.ERR, "opennotr: cannot set the peer: ", err)
        return ngx.exit(502)
    end
end

return _M
