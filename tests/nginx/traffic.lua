-- wrk script: requests spread over the test nginx's routes, as two users
-- (Basic auth gives nginx its $remote_user) and with two methods.
local targets = {
  {"GET", "/items/1"}, {"GET", "/items/22?ref=home"}, {"GET", "/items/333"},
  {"POST", "/orders"}, {"GET", "/orders/9/lines"}, {"GET", "/health"},
  {"GET", "/boom"}, {"GET", "/missing"},
  {"GET", "/u/5f0c8e1a-9b2d-4c3e-8f7a-1b2c3d4e5f60/avatar"},
}
local users = {"YWxpY2U6eA==", "Ym9iOng="} -- alice:x, bob:x
local i = 0

request = function()
  i = i + 1
  local t = targets[i % #targets + 1]
  local headers = {["Authorization"] = "Basic " .. users[i % #users + 1]}
  return wrk.format(t[1], t[2], headers)
end
