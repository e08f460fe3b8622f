//! The Lua scripts cluster mode runs in Redis (docs/cluster.md, "Scripts").
//!
//! Each state change that must be atomic across nodes is one script: Redis
//! runs a script to its end before anything else, so two nodes can never
//! both take the last seat, register the same phone, or give two messages
//! one seq. Scripts are loaded with SCRIPT LOAD when the command link comes
//! up and called with EVALSHA.
//!
//! Connections (`chat:{r:<room>}:conns`, `<node>|<conn>` → user): one
//! field per WebSocket connection in the room, so that every change to
//! them is idempotent — a leave sent twice, or for a join whose reply was
//! lost, removes what is there and nothing else.
//!
//! Seat values (`chat:{r:<room>}:seats`, user → integer):
//! - `0`: held, with connections;
//! - `t > 0`: held without connections until `t` (Unix ms, Redis clock);
//! - `-t`: not held; the user left by WebSocket and an HTTP leave before `t`
//!   still answers `leave chatroom`, once.
//!
//! Events published on a room's channel (`chat:{r:<room>}:ch`):
//! - `m<seq> <packet>`: a chat message, exactly as stored in the stream;
//! - `e<kind> <node> <conn> <json>`: a `user` packet (`create`, `join`,
//!   `leave`) for `{"u": name, "a": avatar}`; `<node> <conn>` is the
//!   connection that caused it, which its own node has already answered
//!   (`-` when none did);
//! - `x<json>`: the user was released by HTTP: every node drops that
//!   user's connections from the room and tells the room.

use sha1::{Digest, Sha1};

/// Shared functions, prepended to each script.
const PRELUDE: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Drops lapsed seats and memos; returns how many seats are held and the
-- value of `user`'s entry (nil when it has none).
local function purge(seats, user, now)
  local all = redis.call('HGETALL', seats)
  local held, mine = 0, nil
  for i = 1, #all, 2 do
    local v = tonumber(all[i + 1])
    if (v > 0 and v <= now) or (v < 0 and -v <= now) then
      redis.call('HDEL', seats, all[i])
    else
      if v >= 0 then held = held + 1 end
      if all[i] == user then mine = v end
    end
  end
  return held, mine
end
-- Whether `user` has a connection in the room, on any node.
local function connected(conns, user)
  for _, u in ipairs(redis.call('HVALS', conns)) do
    if u == user then return true end
  end
  return false
end
local function escape(name)
  return (string.gsub(name, '[%%{}]', function(c)
    if c == '%' then return '%25' elseif c == '{' then return '%7B' else return '%7D' end
  end))
end
"#;

/// KEYS: tel key, name key. ARGV: the user record. 1 = registered, 0 = the
/// phone or the name is taken.
const REGISTER: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[1])
return 1
"#;

/// KEYS: rooms index, rooms order. ARGV: name, record, most rooms.
/// 1 = created, 0 = exists, -1 = too many rooms.
const CREATE: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[1])
return 1
"#;

/// `/chatroom/room` status 1. KEYS: seats. ARGV: user, capacity, seat TTL
/// in ms. 1 = seated (a held seat without connections gets a fresh TTL),
/// 0 = full.
const ADMIT: &str = r#"
local now = now_ms()
local held, mine = purge(KEYS[1], ARGV[1], now)
if mine ~= nil and mine >= 0 then
  if mine > 0 then redis.call('HSET', KEYS[1], ARGV[1], now + tonumber(ARGV[3])) end
  return 1
end
if held >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], now + tonumber(ARGV[3]))
return 1
"#;

/// A WebSocket join: the seat and the connection in one step, against the
/// capacity, then the history the joiner is owed.
/// KEYS: seats, conns, seq, log, channel, avatars, events.
/// ARGV: user, capacity, node, conn, event json, history size,
///       mode (`newest` or `since`), n or since, most recovered, the
///       avatar the connection claims.
/// Returns {0} when full, else {1, kind, last seq, first retained seq,
/// this join's event number, packet...}.
const JOIN: &str = r#"
local now = now_ms()
local held, mine = purge(KEYS[1], ARGV[1], now)
if not (mine ~= nil and mine >= 0) and held >= tonumber(ARGV[2]) then return {0} end
local kind = 'join'
if held == 0 then kind = 'create' end
redis.call('HSET', KEYS[1], ARGV[1], 0)
redis.call('HSET', KEYS[2], ARGV[3] .. '|' .. ARGV[4], ARGV[1])
if ARGV[10] ~= '' then redis.call('HSET', KEYS[6], ARGV[1], ARGV[10]) end
local ev = redis.call('INCR', KEYS[7])
redis.call('PUBLISH', KEYS[5], 'e' .. kind .. ' ' .. ev .. ' ' .. ARGV[3] .. ' ' .. ARGV[4] .. ' ' .. ARGV[5])
local last = tonumber(redis.call('GET', KEYS[3]) or '0')
local first = last + 1
local oldest = redis.call('XRANGE', KEYS[4], '-', '+', 'COUNT', 1)
if #oldest > 0 then first = tonumber(string.match(oldest[1][1], '^(%d+)')) end
first = math.max(first, last + 1 - tonumber(ARGV[6]))
local from
if ARGV[7] == 'since' then
  local since = tonumber(ARGV[8])
  if since >= last then from = last + 1
  else from = math.max(since + 1, first, last + 1 - tonumber(ARGV[9])) end
else
  from = math.max(last + 1 - tonumber(ARGV[8]), first)
end
local out = {1, kind, last, first, ev}
if from <= last then
  local entries = redis.call('XRANGE', KEYS[4], from .. '-0', last .. '-0')
  for _, e in ipairs(entries) do out[#out + 1] = e[2][2] end
end
return out
"#;

/// A chat message: its seq, its place in the stream and its delivery, in
/// one step, which is what gives a room one order.
/// KEYS: seq, log, channel. ARGV: packet before the seq, packet after it,
/// stream length kept. Returns the seq.
const PUBLISH: &str = r#"
local seq = redis.call('INCR', KEYS[1])
local body = ARGV[1] .. seq .. ARGV[2]
local ok = redis.pcall('XADD', KEYS[2], 'MAXLEN', ARGV[3], seq .. '-0', 'f', body)
if type(ok) == 'table' and ok.err then return ok end
redis.call('PUBLISH', KEYS[3], 'm' .. seq .. ' ' .. body)
return seq
"#;

/// A connection leaves a room (WebSocket `leave`, or dropped). The leave is
/// published; when it was the user's last connection anywhere, the seat is
/// freed (`leave`: with the memo) or kept for the TTL (`drop`). A
/// connection that is not there (already left, or its join never ran)
/// changes nothing: -1.
/// KEYS: seats, conns, channel, events.
/// ARGV: user, node, conn, mode, seat TTL in ms, event json.
const LEAVE: &str = r#"
if redis.call('HDEL', KEYS[2], ARGV[2] .. '|' .. ARGV[3]) == 0 then return -1 end
local now = now_ms()
local others = connected(KEYS[2], ARGV[1])
if not others and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  local until_ms = now + tonumber(ARGV[5])
  if ARGV[4] == 'leave' then until_ms = -until_ms end
  redis.call('HSET', KEYS[1], ARGV[1], until_ms)
end
local ev = redis.call('INCR', KEYS[4])
redis.call('PUBLISH', KEYS[3], 'eleave ' .. ev .. ' ' .. ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ARGV[6])
if others then return 1 end
return 0
"#;

/// `/chatroom/room` status 0. KEYS: seats, conns, channel, avatars, events.
/// ARGV: user, event json. 1 = released (connections evicted everywhere),
/// 2 = the seat went with a recent WebSocket leave, 0 = no seat.
const RELEASE: &str = r#"
local now = now_ms()
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
v = tonumber(v)
redis.call('HDEL', KEYS[1], ARGV[1])
if v < 0 then
  if -v > now then return 2 end
  return 0
end
if v > 0 and v <= now then return 0 end
redis.call('HDEL', KEYS[4], ARGV[1])
local all = redis.call('HGETALL', KEYS[2])
local evicted = false
for i = 1, #all, 2 do
  if all[i + 1] == ARGV[1] then
    redis.call('HDEL', KEYS[2], all[i])
    evicted = true
  end
end
-- The room hears of it only when connections were put out of it.
if evicted then
  redis.call('PUBLISH', KEYS[3], 'x' .. redis.call('INCR', KEYS[5]) .. ' ' .. ARGV[2])
end
return 1
"#;

/// `/chatroom/list`: every room in creation order with its seats held.
/// KEYS: rooms order. ARGV: key prefix. Reads every room's seats: one of
/// the two scripts that span slots (see docs/cluster.md).
const LIST: &str = r#"
local now = now_ms()
local names = redis.call('LRANGE', KEYS[1], 0, -1)
local out = {}
for _, name in ipairs(names) do
  local all = redis.call('HGETALL', ARGV[1] .. '{r:' .. escape(name) .. '}:seats')
  local held = 0
  for i = 2, #all, 2 do
    local v = tonumber(all[i])
    if v == 0 or v > now then held = held + 1 end
  end
  out[#out + 1] = name
  out[#out + 1] = held
end
return out
"#;

/// `/chatroom/members`. KEYS: seats, conns, avatars. ARGV: key prefix.
/// Returns {name, online (0/1), user record or false, claimed avatar or
/// false, ...}.
const MEMBERS: &str = r#"
local now = now_ms()
local all = redis.call('HGETALL', KEYS[1])
local present = {}
for _, u in ipairs(redis.call('HVALS', KEYS[2])) do present[u] = true end
local out = {}
for i = 1, #all, 2 do
  local v = tonumber(all[i + 1])
  if v == 0 or v > now then
    local online = 0
    if present[all[i]] then online = 1 end
    out[#out + 1] = all[i]
    out[#out + 1] = online
    out[#out + 1] = redis.call('GET', ARGV[1] .. '{users}:name:' .. escape(all[i]))
    out[#out + 1] = redis.call('HGET', KEYS[3], all[i])
  end
end
return out
"#;

/// Releases the seats of every node whose lease is gone (and, at shutdown,
/// the caller's own), publishing each `leave`. Spans slots: it walks the
/// dead nodes' rooms.
/// KEYS: the node set. ARGV: key prefix, own node id, `1` to release own.
/// Returns the number of seats released.
const SWEEP: &str = r#"
local p = ARGV[1]
local released = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local mine = id == ARGV[2]
  local dead
  if mine then dead = ARGV[3] == '1'
  else dead = redis.call('EXISTS', p .. '{nodes}:' .. id) == 0 end
  if dead then
    local rooms_key = p .. '{nodes}:' .. id .. ':rooms'
    for _, room in ipairs(redis.call('SMEMBERS', rooms_key)) do
      local tag = p .. '{r:' .. escape(room) .. '}'
      local conns = tag .. ':conns'
      local all = redis.call('HGETALL', conns)
      local prefix = id .. '|'
      local users = {}
      for i = 1, #all, 2 do
        if string.sub(all[i], 1, #prefix) == prefix then
          redis.call('HDEL', conns, all[i])
          users[all[i + 1]] = true
        end
      end
      for user in pairs(users) do
        if not connected(conns, user) then
          if redis.call('HDEL', tag .. ':seats', user) == 1 then released = released + 1 end
          redis.call('HDEL', tag .. ':avatars', user)
          local ev = redis.call('INCR', tag .. ':ev')
          redis.call('PUBLISH', tag .. ':ch', 'eleave ' .. ev .. ' - - ' .. cjson.encode({u = user, a = ''}))
        end
      end
    end
    redis.call('DEL', rooms_key)
    redis.call('SREM', KEYS[1], id)
  end
end
return released
"#;

/// `/chatroom/history` bounds. KEYS: seq, log. ARGV: history size.
/// Returns {last seq, first retained seq}.
const BOUNDS: &str = r#"
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local first = last + 1
local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #oldest > 0 then first = tonumber(string.match(oldest[1][1], '^(%d+)')) end
return {last, math.max(first, last + 1 - tonumber(ARGV[1]))}
"#;

/// Every script, in the order of `Script`.
const SOURCES: [&str; 11] = [
    REGISTER, CREATE, ADMIT, JOIN, PUBLISH, LEAVE, RELEASE, LIST, MEMBERS, SWEEP, BOUNDS,
];

/// The scripts, by what they do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    Register = 0,
    Create,
    Admit,
    Join,
    Publish,
    Leave,
    Release,
    List,
    Members,
    Sweep,
    Bounds,
}

impl Script {
    pub const ALL: [Script; 11] = [
        Script::Register,
        Script::Create,
        Script::Admit,
        Script::Join,
        Script::Publish,
        Script::Leave,
        Script::Release,
        Script::List,
        Script::Members,
        Script::Sweep,
        Script::Bounds,
    ];
}

/// The scripts' full sources and SHA1s, computed once.
#[derive(Debug)]
pub struct Scripts {
    sources: Vec<String>,
    shas: Vec<String>,
}

impl Default for Scripts {
    fn default() -> Self {
        let sources: Vec<String> = SOURCES
            .iter()
            .map(|body| format!("{PRELUDE}{body}"))
            .collect();
        let shas = sources
            .iter()
            .map(|source| {
                Sha1::digest(source.as_bytes())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect()
            })
            .collect();
        Scripts { sources, shas }
    }
}

impl Scripts {
    pub fn source(&self, script: Script) -> &str {
        &self.sources[script as usize]
    }

    pub fn sha(&self, script: Script) -> &str {
        &self.shas[script as usize]
    }
}
