-- REST shaping around Envoy's gRPC-JSON transcoder (native gRPC passes untouched).
-- Shipped as package data and run as it is. Its settings (header limits, fallback error
-- bodies) come from the route's metadata under this filter's name, written by
-- imagejobs/gateway/bootstrap.py: read them with setting(handle, name).
--  * marks REST requests (dynamic metadata imagejobs.rest) so that local replies
--    (bad route, body too large, backend down) get the contract's error body;
--  * refuses REST requests whose headers exceed the limits (431), and whose path or
--    query is not valid UTF-8 once percent-decoded (400; the transcoder would put the
--    bytes into a proto string field, which the gRPC server cannot parse);
--  * keeps only the query parameters the REST API documents (`wait` on a job,
--    `status`/`kind`/`limit`/`page_token` on the list): the transcoder would bind any
--    other request field from the query (`?kind=edits` on a generations route);
--  * drops REST headers ending in -bin (grpcio rejects non-base64 values) or whose names
--    are not valid gRPC metadata keys, and passes the Host on as x-imagejobs-host
--    (result URLs point back at it);
--  * answers a successful submit (any POST: only submits are POSTs) with 202, and
--    moves the servicer's x-http-status metadata into :status (202 for running jobs;
--    the error's own status for errors);
--  * replaces the transcoder's {"code","message","details":[ErrorResponse]} error body
--    with the ErrorResponse itself, the contract's error body.

local DETAIL = '"@type":"type.googleapis.com/imagejobs.v1.ErrorResponse",'

-- A setting from the route's metadata. Every route has them (bootstrap.py; a unit test
-- checks each name read here), so a missing one is a broken config: raise rather than
-- guess a value. Envoy logs the error with the name and passes the request on unshaped.
local function setting(handle, name)
  local value = handle:metadata():get(name)
  if value == nil then
    error("rest.lua: route metadata has no " .. name)
  end
  return value
end

local LIST_PATH = "/v1/async/images/jobs"
local LIST_PARAMS = {status = true, kind = true, limit = true, page_token = true}
local JOB_PARAMS = {wait = true}
local NO_PARAMS = {}

-- gRPC as Envoy tells it (Grpc::Common::hasGrpcContentType): exactly application/grpc,
-- or application/grpc+…; anything else (application/grpc-web, application/grpc;…) is
-- transcoded as REST, so it must be shaped as REST.
local function is_grpc(ctype)
  if string.sub(ctype, 1, 16) ~= "application/grpc" then
    return false
  end
  local rest = string.sub(ctype, 17, 17)
  return rest == "" or rest == "+"
end

-- A header name that may travel as gRPC metadata ([0-9a-z_.-]; pseudo-headers stay):
-- HTTP allows more (`!#$%&'*+^|~`), and grpcio fails the call on such a key.
local function grpc_key(name)
  return string.sub(name, 1, 1) == ":" or string.find(name, "^[0-9a-z_.%-]+$") ~= nil
end

local function percent_decode(text)
  text = string.gsub(text, "+", " ")
  return (string.gsub(text, "%%(%x%x)", function(hex)
    return string.char(tonumber(hex, 16))
  end))
end

-- True when `s` is well-formed UTF-8 (no overlong forms, surrogates or values > U+10FFFF).
local function valid_utf8(s)
  local i, n = 1, #s
  while i <= n do
    local c = string.byte(s, i)
    if c < 0x80 then
      i = i + 1
    else
      local len, low, high
      if c >= 0xC2 and c <= 0xDF then
        len = 2
      elseif c >= 0xE0 and c <= 0xEF then
        len = 3
      elseif c >= 0xF0 and c <= 0xF4 then
        len = 4
      else
        return false
      end
      if i + len - 1 > n then
        return false
      end
      low, high = 0x80, 0xBF
      local second = string.byte(s, i + 1)
      if c == 0xE0 then
        low = 0xA0
      elseif c == 0xED then
        high = 0x9F
      elseif c == 0xF0 then
        low = 0x90
      elseif c == 0xF4 then
        high = 0x8F
      end
      if second < low or second > high then
        return false
      end
      for k = i + 2, i + len - 1 do
        local b = string.byte(s, k)
        if b < 0x80 or b > 0xBF then
          return false
        end
      end
      i = i + len
    end
  end
  return true
end

-- The request's path with only the documented query parameters, or nil when the path or
-- a kept parameter is not valid UTF-8.
local function clean_path(method, path)
  local base, query = string.match(path, "^([^?]*)%?(.*)$")
  if base == nil then
    base, query = path, nil
  end
  if not valid_utf8(percent_decode(base)) then
    return nil
  end
  if query == nil then
    return path
  end
  local allowed = NO_PARAMS
  if method == "GET" or method == "HEAD" then
    if base == LIST_PATH then
      allowed = LIST_PARAMS
    else
      allowed = JOB_PARAMS
    end
  end
  local kept = {}
  for pair in string.gmatch(query, "[^&]+") do
    local name, value = string.match(pair, "^([^=]*)=?(.*)$")
    if allowed[percent_decode(name)] then
      if not valid_utf8(percent_decode(value)) then
        return nil
      end
      table.insert(kept, pair)
    end
  end
  if #kept == 0 then
    return base
  end
  return base .. "?" .. table.concat(kept, "&")
end

local function header_size(headers)
  local count, bytes = 0, 0
  for name, value in pairs(headers) do
    count = count + 1
    local size = #name + #value + 32
    if name == ":path" or name == ":authority" or name == "host" then
      size = size * 2
    end
    bytes = bytes + size
  end
  return count, bytes
end

-- A local reply; local_reply_config (replies.py) gives it the contract's error body.
local function refuse(handle, status, message)
  handle:respond({[":status"] = tostring(status), ["content-type"] = "text/plain"}, message)
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local ctype = headers:get("content-type") or ""
  if is_grpc(ctype) then
    return
  end
  local meta = handle:streamInfo():dynamicMetadata()
  meta:set("imagejobs", "rest", true)
  -- Envoy's request id (generated unless the client sent one): the event_id of an error
  -- body made here, in the rare case that a gRPC error comes without our detail
  local request_id = string.gsub(headers:get("x-request-id") or "", "[^%w%-]", "")
  meta:set("imagejobs", "event_id", string.sub(request_id, 1, 64))
  -- Request header limits. Bytes are counted as HTTP/2 and gRPC count them (name + value
  -- + 32 per header), the path and the host twice (Envoy forwards copies of both), so
  -- that what reaches the API stays under grpcio's 8 KiB metadata limit.
  local count, bytes = header_size(headers)
  if count > setting(handle, "max_request_headers")
      or bytes > setting(handle, "max_request_header_bytes") then
    refuse(handle, 431, "request headers too large")
    return
  end
  local path = headers:get(":path") or "/"
  local cleaned = clean_path(headers:get(":method"), path)
  if cleaned == nil then
    refuse(handle, 400, "invalid request format: the path is not valid UTF-8")
    return
  end
  if cleaned ~= path then
    headers:replace(":path", cleaned)
  end
  if headers:get(":method") == "POST" then -- a submit: a success is 202 (set below)
    meta:set("imagejobs", "submit", true)
  end
  local drop = {}
  for name, _ in pairs(headers) do
    if string.sub(name, -4) == "-bin" or name == "x-http-status" or not grpc_key(name) then
      table.insert(drop, name)
    end
  end
  for _, name in ipairs(drop) do
    headers:remove(name)
  end
  headers:replace("x-imagejobs-host", headers:get(":authority") or "")
end

-- The contract's error body for a gRPC error without our detail: a template from the
-- route metadata (made from the same ErrorBody as every other error body) with its
-- placeholders filled in one pass.
local function fallback_body(handle, status, message, event_id)
  local template = setting(handle, "error_body_5xx")
  if status < 500 then
    template = setting(handle, "error_body_4xx")
  end
  if event_id == nil or event_id == "" then
    event_id = "gateway"
  end
  local values = {
    STATUS_CODE = string.format("%d", status),
    MESSAGE = (string.gsub(message, '[%c"\\]', " ")),
    EVENT_ID = event_id,
  }
  return (string.gsub(template, "@([%u_]+)@", values))
end

function envoy_on_response(handle)
  local meta = handle:streamInfo():dynamicMetadata():get("imagejobs")
  if meta == nil or not meta["rest"] then
    return
  end
  local headers = handle:headers()
  local wanted = headers:get("x-http-status")
  headers:remove("x-http-status")
  local current = headers:get(":status")
  if current == "200" then
    if wanted ~= nil then
      headers:replace(":status", wanted)
    elseif meta["submit"] then
      headers:replace(":status", "202")
    end
    return
  end
  local ctype = headers:get("content-type") or ""
  if string.find(ctype, "application/json", 1, true) ~= 1 then
    return
  end
  -- a transcoded gRPC error: {"code":…,"message":…,"details":[…]} -> the error body
  local body = handle:body()
  if body == nil then
    return
  end
  local text = body:getBytes(0, body:length())
  if string.sub(text, 1, 8) ~= '{"code":' then
    return -- a local reply, already shaped by local_reply_config
  end
  local status = tonumber(wanted or current) or 500
  local out
  local _, last = string.find(text, DETAIL, 1, true)
  if last ~= nil then
    local inner = string.match(string.sub(text, last + 1), "^(.*)%]}%s*$")
    if inner ~= nil then
      out = "{" .. inner
    end
  end
  if out == nil then
    local message = string.match(text, '"message":"(.-)"') or "upstream error"
    out = fallback_body(handle, status, message, meta["event_id"])
  end
  body:setBytes(out)
  headers = handle:headers()
  headers:replace(":status", tostring(status))
end
