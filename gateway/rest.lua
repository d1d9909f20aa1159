-- REST shaping around Envoy's gRPC-JSON transcoder (native gRPC passes untouched):
--  * marks REST requests (dynamic metadata imagejobs.rest) so that local replies
--    (bad route, body too large, backend down) get the contract's error body;
--  * drops REST headers ending in -bin (grpcio rejects non-base64 values) and passes
--    the Host on as x-imagejobs-host (result URLs point back at it);
--  * moves the servicer's x-http-status metadata into :status (202 for accepted and
--    running jobs; the error's own status for errors);
--  * replaces the transcoder's {"code","message","details":[ErrorResponse]} error body
--    with the ErrorResponse itself, the contract's error body.

local DETAIL = '"@type":"type.googleapis.com/imagejobs.v1.ErrorResponse",'

function envoy_on_request(handle)
  local headers = handle:headers()
  local ctype = headers:get("content-type") or ""
  if string.find(ctype, "application/grpc", 1, true) == 1 then
    return
  end
  handle:streamInfo():dynamicMetadata():set("imagejobs", "rest", true)
  local drop = {}
  for name, _ in pairs(headers) do
    if string.sub(name, -4) == "-bin" or name == "x-http-status" then
      table.insert(drop, name)
    end
  end
  for _, name in ipairs(drop) do
    headers:remove(name)
  end
  headers:replace("x-imagejobs-host", headers:get(":authority") or "")
end

local function generic_body(status, message)
  local kind = "api_error"
  if status < 500 then
    kind = "invalid_request_error"
  end
  message = string.gsub(message, '[%c"\\]', " ")
  return string.format(
    '{"type":"%s","is_bifrost_error":true,"status_code":%d,' ..
    '"error":{"type":"%s","code":"gateway_error","message":"%s"}}',
    kind, status, kind, message)
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
    out = generic_body(status, message)
  end
  body:setBytes(out)
  headers = handle:headers()
  headers:replace(":status", tostring(status))
end
