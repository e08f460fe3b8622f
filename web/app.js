// Chatroom web client. Plain JavaScript, no dependencies, no build step.
//
// It speaks only the public API (docs/http-api.md, docs/websocket.md):
//   register and log in over HTTP; the login token goes with every WebSocket
//   join; joining a room is admission (POST chatroom/room status=1) and then
//   a WebSocket `join` on `ws` beside this page (same origin, so one reverse
//   proxy location serves both); leaving is a WebSocket `leave` and then
//   POST chatroom/room status=0. After a dropped connection it reconnects with
//   exponential backoff and redoes admission and join for each of its rooms.
//
// History and presence (SPEC §8): every message carries its room's `seq`, and
// the page keys everything by it, so a message is shown once, in seq order,
// whichever way it arrived: live, as history on entering a room (shown under
// "Earlier messages"), from `chatroom/history` (older pages; gaps), or as the
// recovery of a rejoin, which carries `since` = the highest seq shown. A
// recovery the server reports incomplete is completed over HTTP, or the page
// says where messages could not be recovered. The member list comes from
// `chatroom/members` and follows the room's join and leave packets.
//
// Every string that came from the network is put into the page with
// textContent, never parsed as HTML.

// ---------------------------------------------------------------------------
// Server strings in plain words
// ---------------------------------------------------------------------------

// `res` strings of the HTTP API, by what the user was doing when they came
// back (a few mean different things on different endpoints).
const HTTP_WORDS = {
  'user exist': 'That phone number or name is already registered. Log in, or choose another name.',
  'password wrong': 'Wrong password. Try again.',
  'too many attempts': 'Too many failed logins. Wait a few minutes, then try again.',
  'chatroom already exist': 'A room with that name already exists. Pick it in the list, or choose another name.',
  'invalid room': 'That room does not exist (any more).',
  'invalid status': 'The page sent an invalid request (invalid status). Reload the page.',
  'full room': 'That room is full. Try again later or pick another room.',
  'invalid parameters': 'Please check what you typed.',
  'not found': 'The server does not know this request. Is this the right server?',
  'method not allowed': 'The server refused this kind of request.',
  'bad request': 'The server could not understand the request.',
  'payload too large': 'That is too much text for one request.',
  'unsupported media type': 'The server refused the request format.',
  'request timeout': 'The request took too long to arrive. Check your connection and try again.',
  'request header fields too large': 'The request was too large for the server.',
  'storage unavailable': 'The server could not save that just now; nothing was stored. Try again.',
  'server busy': 'The server is busy. Try again in a moment.',
  'too many connections': 'The server has too many connections right now. Try again later.',
  'http version not supported': 'The server refused the HTTP version.',
  'expectation failed': 'The server refused the request.',
  unauthorized: 'Your login is no longer valid (the server may have restarted).',
};

const HTTP_WORDS_BY_ACTION = {
  login: { 'user not exist': 'No account has that phone number. Register first.' },
  join: { 'user not exist': 'The server does not know your name any more. Log out and log in again.' },
  leave: { 'user not exist': 'You no longer had a seat in that room (it may have expired).' },
  create: { 'too many rooms': 'The server already holds as many rooms as it allows; no new room can be created.' },
};

// `data.msg` of WebSocket `error` packets.
const WS_WORDS = {
  'invalid message': 'The server could not read a packet from this page (invalid message).',
  'invalid type': 'The server did not understand a packet from this page (invalid type).',
  'invalid data': 'A packet from this page was incomplete (invalid data).',
  'illegal data': 'A packet from this page had an empty name or room (illegal data).',
  'null message': 'Type a message first.',
  unauthorized: 'Your login is no longer valid (the server may have restarted).',
  'user not exist': 'The server does not know your name. Log out and log in again.',
  'user mismatch': 'This connection belongs to another user. Reload the page.',
  'invalid room': 'That room does not exist (any more).',
  'full room': 'That room is full. Try again later or pick another room.',
  'not in room': 'You are not in that room. Join it first.',
  'too many rooms': 'You are in as many rooms as one connection may join. Leave one first.',
  'message too long': 'That message is too long. Split it into shorter ones.',
  'rate limited': 'You are sending too fast. Slow down a little.',
  'service unavailable': 'The server cannot store messages just now, so that one was not sent. Try again in a moment.',
};

const FIELD_LABELS = {
  user_tel: 'Phone number',
  user_name: 'Name',
  user_password: 'Password',
  user_avatar_url: 'Avatar URL',
  room_name: 'Room name',
  capacity: 'Seats',
};

/** A server string in plain words, with the original kept for reference. */
function explainHttp(res, action, detail) {
  const words =
    (HTTP_WORDS_BY_ACTION[action] && HTTP_WORDS_BY_ACTION[action][res]) ||
    HTTP_WORDS[res] ||
    'The server answered something unexpected.';
  let text = words;
  if (typeof detail === 'string' && detail) {
    const [field, ...rest] = detail.split(': ');
    const label = FIELD_LABELS[field];
    text += ' ' + (label && rest.length ? `${label}: ${rest.join(': ')}` : detail) + '.';
  }
  return `${text} (server said “${res}”)`;
}

function explainWs(msg) {
  const words = WS_WORDS[msg] || 'The server reported an error.';
  return `${words} (server said “${msg}”)`;
}

// ---------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------

const SESSION_KEY = 'chatroom.session';
const MAX_LOG = 1000; // entries kept per room as live messages arrive
const HISTORY_PAGE = 50; // messages per "Load earlier messages"
const GAP_PAGE = 100; // messages per request while filling a gap (the server's maximum)
const EARLIER_SCROLL_PX = 40; // scrolled this close to the top loads earlier messages
const LIST_REFRESH_MS = 5000;
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 30000;
const STABLE_MS = 10000; // a connection open this long resets the backoff

const state = {
  user: null, // {user_tel, user_name, user_avatar_url}
  token: null,
  // Phone number and password of this page's login, held in memory only (never
  // stored), so that after a server restart (which forgets every token) the
  // page can log in again by itself and resume the chat.
  credentials: null,
  rooms: new Map(), // name -> room entry, see room()
  wanted: new Set(), // rooms this page means to be in; rejoined after a reconnect
  leaving: new Set(), // rooms whose WebSocket leave is sent, HTTP leave owed
  active: null,
  listed: [],
  listTimer: null,
  relogin: null, // the promise of a silent re-login in progress
};

const conn = {
  ws: null,
  wantOpen: false,
  attempt: 0,
  timer: null,
  ticker: null,
  openedAt: 0,
};

const $ = (id) => document.getElementById(id);

function room(name) {
  let entry = state.rooms.get(name);
  if (!entry) {
    entry = {
      name,
      // What the timeline shows, sorted by position (see compareItems).
      log: [],
      bySeq: new Map(), // seq -> message item: nothing is shown twice
      base: 0, // added to seqs for positions; grows if the server renumbers (see renumbered)
      maxSeq: 0, // highest seq shown: the `since` of a rejoin
      minSeq: 0, // lowest seq shown (0: none yet)
      earlierDone: false, // the server has nothing before minSeq
      loadingEarlier: false,
      holes: [], // [{from, to}]: seq ranges owed over HTTP after an incomplete recovery
      filling: false,
      // How the history after this connection's join is shown: 'earlier'
      // (first entry: what was said before) or 'recovered' (a rejoin's since).
      joinMode: 'earlier',
      floating: null, // the join notice placed after the history that follows it
      divider: null, // the "Earlier messages" item
      dropped: [], // elements of items taken out of the log, removed by syncList
      members: null, // [{user_name, user_avatar, online}], null until fetched
      membersStale: true,
      membersBusy: false,
      membersAgain: false,
      joined: false,
      joining: false,
      everJoined: false,
      unread: 0,
    };
    state.rooms.set(name, entry);
  }
  return entry;
}

// ---------------------------------------------------------------------------
// Status line: connection state and the last notice
// ---------------------------------------------------------------------------

function setConnState(kind, text) {
  const el = $('conn-state');
  el.className = `conn conn-${kind}`;
  el.textContent = text;
}

function notify(text, kind = 'info') {
  const el = $('notice');
  el.className = `notice ${kind}`;
  el.textContent = text;
}

const CANNOT_REACH = 'Cannot reach the server. Check your connection and try again.';

/** Why a call failed without an answer from the server itself, in plain words. */
function failureText(error) {
  const status = error instanceof NetworkError ? error.status : 0;
  if (status === 429) return 'Too many requests from your address. Wait a minute, then try again. (HTTP 429)';
  if (status >= 500) return `The server is not answering right now. Try again in a moment. (HTTP ${status})`;
  return CANNOT_REACH;
}

// ---------------------------------------------------------------------------
// HTTP API
// ---------------------------------------------------------------------------

/** No JSON answer: no connection (status 0), or a proxy's error page. */
class NetworkError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.status = status;
  }
}

/**
 * Calls an endpoint; resolves to the JSON body, rejects with NetworkError.
 * GET sends `params` in the query string, POST as a form; `auth` adds the
 * login token as `Authorization: Bearer` (never in the URL, which logs keep).
 */
async function api(path, params, method = 'POST', auth = false) {
  const url = new URL(path, document.baseURI);
  const init = { method, cache: 'no-store', headers: {} };
  if (auth && state.token) init.headers.Authorization = `Bearer ${state.token}`;
  if (params && method === 'GET') {
    for (const [key, value] of Object.entries(params)) url.searchParams.set(key, String(value));
  } else if (params) {
    init.headers['Content-Type'] = 'application/x-www-form-urlencoded';
    init.body = new URLSearchParams(params);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (e) {
    throw new NetworkError(String(e));
  }
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  if (!body || typeof body !== 'object') {
    throw new NetworkError(`HTTP ${response.status} without a JSON body`, response.status);
  }
  return body;
}

/**
 * A GET of an endpoint that wants the login token (`--require-token`); when
 * the token is refused (the server restarted) it logs in again once and
 * retries. Resolves to the body, or null when the user had to log out.
 */
async function authedGet(path, params) {
  const token = state.token;
  let body = await api(path, params, 'GET', true);
  if (body.res === 'unauthorized') {
    // Another call may have logged in again meanwhile: then just retry.
    if (state.token === token && !(await reauthenticate())) return null;
    if (!state.user) return null;
    body = await api(path, params, 'GET', true);
  }
  return body;
}

// ---------------------------------------------------------------------------
// Register, log in, log out
// ---------------------------------------------------------------------------

async function onRegister(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const fields = Object.fromEntries(new FormData(form));
  const button = form.querySelector('button');
  button.disabled = true;
  try {
    const body = await api('auth/register', fields);
    if (body.res === 'register successfully') {
      notify(`Registered as ${fields.user_name}. Log in to start chatting.`, 'ok');
      $('login-form').elements.user_tel.value = fields.user_tel;
      form.reset();
      $('login-form').elements.user_password.focus();
    } else {
      notify(explainHttp(body.res, 'register', body.error), 'error');
    }
  } catch (e) {
    notify(failureText(e), 'error');
  } finally {
    button.disabled = false;
  }
}

/** Logs in; resolves to an error text, or null on success. */
async function logIn(tel, password) {
  let body;
  try {
    body = await api('auth/login', { user_tel: tel, user_password: password });
  } catch (e) {
    return failureText(e);
  }
  if (body.res !== 'login successfully' || !body.data || typeof body.data.token !== 'string') {
    return explainHttp(body.res, 'login', body.error);
  }
  state.user = {
    // The server sends the number only when a 32-bit integer holds it
    // (for an older app); the page knows what it logged in with.
    user_tel: typeof body.data.user_tel === 'number' ? String(body.data.user_tel) : tel.replace(/[ -]/g, ''),
    user_name: String(body.data.user_name),
    user_avatar_url: typeof body.data.user_avatar_url === 'string' ? body.data.user_avatar_url : '',
  };
  state.token = body.data.token;
  state.credentials = { tel, password };
  try {
    sessionStorage.setItem(SESSION_KEY, JSON.stringify({ user: state.user, token: state.token }));
  } catch (e) {
    // Private mode may refuse storage; the page still works until reloaded.
  }
  return null;
}

async function onLogin(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const tel = form.elements.user_tel.value;
  const password = form.elements.user_password.value;
  const button = form.querySelector('button');
  button.disabled = true;
  const error = await logIn(tel, password);
  button.disabled = false;
  if (error) {
    notify(error, 'error');
    return;
  }
  form.elements.user_password.value = '';
  notify(`Logged in as ${state.user.user_name}. Choose a room to join, or create one.`, 'ok');
  enterChat();
}

function enterChat() {
  $('auth').hidden = true;
  $('chat').hidden = false;
  $('whoami').hidden = false;
  $('whoami-name').textContent = state.user.user_name;
  connect();
  refreshRooms();
  clearInterval(state.listTimer);
  state.listTimer = setInterval(() => {
    if (!document.hidden) refreshRooms();
  }, LIST_REFRESH_MS);
  render();
}

/** Back to the login form; `why` is shown when it was not the user's idea. */
function leaveChat(why) {
  const seats = [...state.wanted];
  const user = state.user;
  conn.wantOpen = false;
  clearTimeout(conn.timer);
  clearInterval(conn.ticker);
  clearInterval(state.listTimer);
  if (conn.ws) {
    const ws = conn.ws;
    conn.ws = null;
    ws.close(1000, 'log out');
  }
  // Give the seats back at once rather than after the server's seat TTL.
  if (user) {
    for (const name of seats) {
      api('chatroom/room', { room_name: name, user_name: user.user_name, status: '0' }).catch(() => {});
    }
  }
  try {
    sessionStorage.removeItem(SESSION_KEY);
  } catch (e) {
    // nothing stored
  }
  state.user = null;
  state.token = null;
  state.credentials = null;
  state.rooms.clear();
  state.wanted.clear();
  state.leaving.clear();
  state.active = null;
  $('chat').hidden = true;
  $('whoami').hidden = true;
  $('auth').hidden = false;
  setConnState('offline', 'Not connected');
  notify(why || 'Logged out.', why ? 'error' : 'info');
  render();
}

/** The token was refused: log in again with the remembered password, if any. */
function reauthenticate() {
  if (state.relogin) return state.relogin;
  state.relogin = (async () => {
    const creds = state.credentials;
    if (!creds) {
      leaveChat('Your login has expired (the server may have restarted). Please log in again.');
      return false;
    }
    notify('Your login expired (the server may have restarted). Logging in again…');
    const error = await logIn(creds.tel, creds.password);
    if (error) {
      leaveChat(`Could not log in again: ${error}`);
      return false;
    }
    notify(`Logged in again as ${state.user.user_name}.`, 'ok');
    await rejoinAll();
    return true;
  })().finally(() => {
    state.relogin = null;
  });
  return state.relogin;
}

// ---------------------------------------------------------------------------
// Rooms: list, create, join, leave
// ---------------------------------------------------------------------------

async function refreshRooms() {
  if (!state.user) return;
  let body;
  try {
    body = await api('chatroom/list', null, 'GET');
  } catch (e) {
    return; // the connection state already tells the user
  }
  let rooms = [];
  if (Array.isArray(body.rooms)) {
    rooms = body.rooms.map((r) => ({ name: String(r.name), population: Number(r.population) || 0 }));
  } else if (Array.isArray(body.room_list)) {
    rooms = body.room_list.map((r) => ({ name: String(r.room_name), population: Number(r.population) || 0 }));
  }
  state.listed = rooms;
  renderRoomList();
  // Seats change without a packet (an admission over HTTP, a seat whose TTL
  // ran out): when the count disagrees with the member list, fetch it again.
  const active = state.active ? state.rooms.get(state.active) : null;
  if (active && active.joined && active.members) {
    const listed = rooms.find((r) => r.name === active.name);
    if (listed && listed.population !== active.members.length) loadMembers(active.name);
  }
}

async function onCreate(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const name = form.elements.room_name.value;
  const capacity = form.elements.capacity.value.trim();
  const params = { room_name: name };
  if (capacity) params.capacity = capacity;
  const button = form.querySelector('button');
  button.disabled = true;
  try {
    const body = await api('chatroom/create', params);
    if (body.res === 'chatroom create successfully') {
      notify(`Room “${name}” created. Choose it in the list to join.`, 'ok');
      form.reset();
      await refreshRooms();
    } else {
      notify(explainHttp(body.res, 'create', body.error), 'error');
    }
  } catch (e) {
    notify(failureText(e), 'error');
  } finally {
    button.disabled = false;
  }
}

function socketOpen() {
  return conn.ws !== null && conn.ws.readyState === WebSocket.OPEN;
}

/** Clicking a room: show it if already in it, else join it. */
function chooseRoom(name) {
  const entry = room(name);
  state.active = name;
  entry.unread = 0;
  if (entry.joined || entry.joining) {
    render();
    return;
  }
  state.wanted.add(name);
  render();
  if (socketOpen()) {
    admitAndJoin(name);
  } else {
    notify(`Not connected; you will join “${name}” when the connection is back.`);
  }
}

/** The documented join: admission over HTTP, then `join` on the WebSocket. */
async function admitAndJoin(name) {
  const entry = room(name);
  if (!state.user || entry.joining) return;
  entry.joining = true;
  render();
  let body;
  try {
    body = await api('chatroom/room', { room_name: name, user_name: state.user.user_name, status: '1' });
  } catch (e) {
    entry.joining = false;
    render();
    return; // the socket will drop too, and the reconnect retries
  }
  if (body.res !== 'join chatroom') {
    entry.joining = false;
    state.wanted.delete(name);
    notify(`Cannot join “${name}”: ${explainHttp(body.res, 'join', body.error)}`, 'error');
    if (state.active === name && !entry.joined) state.active = null;
    render();
    refreshRooms();
    return;
  }
  if (!state.wanted.has(name) || !sendJoin(name)) {
    entry.joining = false;
    render();
  }
}

/**
 * The WebSocket join. The first entry into a room asks for nothing and gets
 * the newest messages as history ("Earlier messages"); a rejoin carries
 * `since`, the highest seq shown, and gets exactly what it missed.
 */
function sendJoin(name) {
  const entry = room(name);
  const data = { user: userField(), room_name: name, msg: '' };
  if (entry.everJoined) data.since = entry.maxSeq;
  entry.joinMode = entry.everJoined ? 'recovered' : 'earlier';
  return send({ type: 'join', data });
}

function userField() {
  return { user_name: state.user.user_name, user_avatar: state.user.user_avatar_url || '' };
}

async function rejoinAll() {
  for (const name of [...state.wanted]) {
    if (!socketOpen()) return;
    const entry = room(name);
    entry.joining = false;
    if (!entry.joined) await admitAndJoin(name);
  }
}

/** The documented leave: `leave` on the WebSocket, then status=0 over HTTP. */
function leaveRoom(name) {
  const entry = room(name);
  state.wanted.delete(name);
  entry.joining = false;
  if (socketOpen() && entry.joined) {
    state.leaving.add(name);
    send({ type: 'leave', data: { user: userField(), room_name: name, msg: '' } });
  } else {
    entry.joined = false;
    releaseSeat(name);
  }
  if (state.active === name) state.active = nextActive(name);
  render();
}

async function releaseSeat(name) {
  if (!state.user) return;
  let body;
  try {
    body = await api('chatroom/room', { room_name: name, user_name: state.user.user_name, status: '0' });
  } catch (e) {
    notify(`You left “${name}”; the server will free your seat shortly.`);
    return;
  }
  if (body.res === 'leave chatroom' || body.res === 'user not exist') {
    notify(`You left “${name}”.`, 'ok');
  } else {
    notify(`Leaving “${name}”: ${explainHttp(body.res, 'leave', body.error)}`, 'error');
  }
  refreshRooms();
}

function nextActive(leaving) {
  for (const name of tabRooms()) {
    if (name !== leaving) return name;
  }
  return null;
}

/** Rooms shown as tabs: the ones joined, being joined, or wanted. */
function tabRooms() {
  const names = [];
  for (const [name, entry] of state.rooms) {
    if (entry.joined || entry.joining || state.wanted.has(name)) names.push(name);
  }
  return names;
}

// ---------------------------------------------------------------------------
// WebSocket: connect, reconnect with backoff, packets
// ---------------------------------------------------------------------------

function wsUrl() {
  const url = new URL('ws', document.baseURI);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  url.search = '';
  url.hash = '';
  return url.href;
}

function connect() {
  if (!state.user) return;
  clearTimeout(conn.timer);
  clearInterval(conn.ticker);
  conn.timer = null;
  conn.wantOpen = true;
  setConnState(conn.attempt ? 'reconnecting' : 'connecting', conn.attempt ? 'Reconnecting…' : 'Connecting…');
  let ws;
  try {
    ws = new WebSocket(wsUrl());
  } catch (e) {
    scheduleReconnect();
    return;
  }
  conn.ws = ws;
  ws.onopen = () => {
    if (conn.ws !== ws) return;
    conn.openedAt = Date.now();
    setConnState('online', 'Connected');
    rejoinAll();
  };
  ws.onmessage = (event) => {
    if (conn.ws !== ws) return;
    if (typeof event.data === 'string') onPacket(event.data);
  };
  ws.onclose = () => {
    if (conn.ws !== ws) return;
    conn.ws = null;
    if (conn.openedAt && Date.now() - conn.openedAt >= STABLE_MS) conn.attempt = 0;
    conn.openedAt = 0;
    // The server treats a dropped connection as a leave from every room.
    for (const entry of state.rooms.values()) {
      if (entry.joined) addEvent(entry.name, 'Connection lost.');
      entry.joined = false;
      entry.joining = false;
      entry.floating = null;
      entry.membersStale = true;
    }
    for (const name of state.leaving) releaseSeat(name);
    state.leaving.clear();
    render();
    if (conn.wantOpen) scheduleReconnect();
  };
}

/** Exponential backoff with jitter, capped: 0.25–0.5 s, 0.5–1 s, … ≤ 30 s. */
function backoffDelay(attempt) {
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(attempt, 16));
  return Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
}

function scheduleReconnect() {
  const delay = backoffDelay(conn.attempt);
  conn.attempt += 1;
  const due = Date.now() + delay;
  const show = () => {
    const seconds = Math.max(0, Math.ceil((due - Date.now()) / 1000));
    setConnState('reconnecting', `Connection lost. Reconnecting in ${seconds} s (attempt ${conn.attempt})…`);
  };
  show();
  clearInterval(conn.ticker);
  conn.ticker = setInterval(show, 1000);
  clearTimeout(conn.timer);
  conn.timer = setTimeout(connect, delay);
}

/** Retry at once when the browser says the network is back. */
function retryNow() {
  if (state.user && conn.wantOpen && !conn.ws && conn.timer) connect();
}

/**
 * Sends a packet, with the login token in it: with `--require-token` the
 * server wants one in every packet, not only in the join.
 */
function send(packet) {
  if (!socketOpen()) return false;
  if (state.token) packet.data.token = state.token;
  conn.ws.send(JSON.stringify(packet));
  return true;
}

function onPacket(text) {
  let packet;
  try {
    packet = JSON.parse(text);
  } catch (e) {
    return;
  }
  if (!packet || typeof packet !== 'object' || !packet.data || typeof packet.data !== 'object') return;
  const data = packet.data;
  const who = data.user && typeof data.user.user_name === 'string' ? data.user.user_name : '';
  const roomName = typeof data.room_name === 'string' ? data.room_name : '';
  const msg = typeof data.msg === 'string' ? data.msg : '';
  switch (packet.type) {
    case 'msg':
      if (roomName) onMessagePacket(roomName, data, who, msg);
      break;
    case 'user':
      if (roomName) onPresence(roomName, who, msg, data.user);
      break;
    case 'error':
      if (msg === 'history incomplete' && roomName) onHistoryIncomplete(roomName, data);
      else onServerError(roomName, msg);
      break;
    default:
      break;
  }
}

function onPresence(name, who, what, user) {
  const me = state.user && who === state.user.user_name;
  const entry = room(name);
  if (what === 'create' || what === 'join') {
    if (me) {
      if (!state.wanted.has(name)) {
        // Left again while the join was on its way: leave properly.
        entry.joined = false;
        entry.joining = false;
        state.leaving.add(name);
        send({ type: 'leave', data: { user: userField(), room_name: name, msg: '' } });
        return;
      }
      const again = entry.everJoined;
      const wasJoined = entry.joined;
      entry.joined = true;
      entry.joining = false;
      entry.everJoined = true;
      if (!wasJoined) {
        // The history of this join follows this packet; the notice moves
        // down past it (see onMessagePacket), so it reads in order.
        entry.floating = addEvent(name, again ? 'You are back in the room.' : 'You joined the room.');
        loadMembers(name);
        if (entry.holes.length) fillHoles(name);
      }
      if (!state.active) state.active = name;
    } else {
      addEvent(name, `${who} joined.`);
      memberJoined(entry, who, user);
    }
  } else if (what === 'leave') {
    if (me) {
      entry.joined = false;
      entry.joining = false;
      entry.floating = null;
      entry.members = null;
      entry.membersStale = true;
      if (state.leaving.delete(name)) {
        addEvent(name, 'You left the room.');
        releaseSeat(name);
      } else {
        // Our seat was given up elsewhere (another tab, or it expired).
        state.wanted.delete(name);
        addEvent(name, 'You are no longer in this room.');
        if (state.active === name) state.active = nextActive(name);
      }
    } else {
      addEvent(name, `${who} left.`);
      // A leave frees the seat, or keeps it for the seat TTL when the
      // connection dropped, or changes nothing when another of their
      // connections is still in the room: only the server knows which.
      memberLeft(entry);
    }
  }
  render();
  refreshRooms();
}

function onServerError(name, msg) {
  if (msg === 'unauthorized') {
    reauthenticate();
    return;
  }
  if (name && state.rooms.has(name)) {
    const entry = room(name);
    if (entry.joining && !entry.joined) {
      // The join failed: do not keep retrying it after reconnects.
      entry.joining = false;
      state.wanted.delete(name);
      if (state.active === name) state.active = nextActive(name);
      notify(`Cannot join “${name}”: ${explainWs(msg)}`, 'error');
      render();
      return;
    }
    if (msg === 'not in room') {
      entry.joined = false;
      render();
    }
  }
  notify(explainWs(msg), 'error');
}

// ---------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------

// The timeline of a room is one sorted array. Every item has a position:
// a message sits at its seq; a notice (joined, left, connection lost) sits
// after the highest seq shown when it happened; the "Earlier messages"
// divider sits just before the oldest message shown. So a message that
// arrives late (an older page, a recovered gap) lands where it belongs, and
// the notices stay between the messages they happened between.
//
//   anchor: the seq the item belongs at or after (plus the room's base)
//   rank:   0 divider (before the message at anchor), 1 the message at
//           anchor, 2 notices after it (and messages without a seq)
//   order:  arrival order among notices at one anchor

let arrivals = 0;

function compareItems(a, b) {
  return a.anchor - b.anchor || a.rank - b.rank || a.order - b.order;
}

/** Puts `item` at its place in the room's log (binary search: the log is sorted). */
function insertItem(entry, item) {
  const log = entry.log;
  let low = 0;
  let high = log.length;
  while (low < high) {
    const mid = (low + high) >> 1;
    if (compareItems(log[mid], item) <= 0) low = mid + 1;
    else high = mid;
  }
  log.splice(low, 0, item);
}

function removeItem(entry, item) {
  const index = entry.log.indexOf(item);
  if (index >= 0) entry.log.splice(index, 1);
  if (item.node) entry.dropped.push(item.node);
}

/** A seq as the server sends it: a positive integer, else null (an older server). */
function seqOf(value) {
  return Number.isSafeInteger(value) && value > 0 ? value : null;
}

/**
 * Adds a message unless its seq is already shown; returns the item, or null
 * for a duplicate. `source`: 'live', 'earlier' (history from before this
 * page entered the room) or 'recovered' (missed while disconnected).
 */
function addMessage(entry, message, source) {
  const seq = seqOf(message.seq);
  if (seq !== null && entry.bySeq.has(seq)) {
    const shown = entry.bySeq.get(seq);
    if (shown.author === message.author && shown.text === message.text) return null;
    // The same seq for another message: not a duplicate. The server has
    // numbered anew (SPEC §8 forbids it; a lost message log would do it).
    // Hiding it would lose it silently: show it after everything instead.
    renumbered(entry);
  }
  const own = state.user !== null && message.author === state.user.user_name;
  const item = {
    kind: 'msg',
    seq,
    anchor: entry.base + (seq !== null ? seq : entry.maxSeq),
    rank: seq !== null ? 1 : 2,
    order: seq !== null ? 0 : ++arrivals,
    author: message.author,
    text: message.text,
    ts: message.ts,
    own,
    source,
    node: null,
  };
  insertItem(entry, item);
  if (seq !== null) {
    entry.bySeq.set(seq, item);
    if (seq > entry.maxSeq) entry.maxSeq = seq;
    if (entry.minSeq === 0 || seq < entry.minSeq) entry.minSeq = seq;
  }
  if (source === 'earlier') placeDivider(entry);
  if (source !== 'earlier' && !own && state.active !== entry.name) entry.unread += 1;
  return item;
}

/** The "Earlier messages" divider goes right before the oldest message shown. */
function placeDivider(entry) {
  const anchor = entry.base + entry.minSeq;
  if (entry.divider && entry.divider.anchor === anchor) return;
  if (entry.divider) removeItem(entry, entry.divider);
  entry.divider = { kind: 'divider', anchor, rank: 0, order: 0, node: null };
  insertItem(entry, entry.divider);
}

/**
 * The server reused a seq for another message: what is shown stays, and
 * the seqs from now on count from after it, with a notice where it happened.
 */
function renumbered(entry) {
  entry.base += entry.maxSeq;
  entry.bySeq = new Map();
  entry.maxSeq = 0;
  entry.minSeq = 0;
  entry.earlierDone = false;
  entry.holes = [];
  entry.floating = null;
  const item = {
    kind: 'gap',
    text: 'The server numbered this room’s messages anew (its message history was reset); some messages may be missing here.',
    ts: Date.now(),
    anchor: entry.base,
    rank: 2,
    order: ++arrivals,
    node: null,
  };
  insertItem(entry, item);
}

/** A notice in the timeline, after everything shown so far; returns its item. */
function addEvent(name, text, kind = 'event') {
  const entry = room(name);
  const item = { kind, text, ts: Date.now(), anchor: entry.base + entry.maxSeq, rank: 2, order: ++arrivals, node: null };
  insertItem(entry, item);
  trimLog(entry);
  if (state.active === name) syncList(entry);
  return item;
}

/**
 * Keeps at most MAX_LOG items as the conversation grows, dropping the
 * oldest; up to five times that while the reader is scrolled up (perhaps
 * reading the earlier pages they loaded), which are dropped once they are
 * back at the newest.
 */
function trimLog(entry) {
  if (entry.log.length <= MAX_LOG) return;
  let limit = MAX_LOG;
  if (state.active === entry.name) {
    const timeline = $('timeline');
    if (timeline.scrollHeight - timeline.scrollTop - timeline.clientHeight >= 80) limit = MAX_LOG * 5;
  }
  if (entry.log.length <= limit) return;
  const dropped = entry.log.splice(0, entry.log.length - limit);
  for (const item of dropped) {
    if (item.node) entry.dropped.push(item.node);
    if (item.kind === 'msg' && item.seq !== null && entry.bySeq.get(item.seq) === item) entry.bySeq.delete(item.seq);
    if (item === entry.divider) entry.divider = null;
  }
  const first = entry.log.find((item) => item.kind === 'msg' && item.seq !== null && entry.bySeq.get(item.seq) === item);
  entry.minSeq = first ? first.seq : 0;
  entry.earlierDone = false; // what was dropped can be loaded again
}

function onMessagePacket(name, data, author, text) {
  const entry = room(name);
  const seq = seqOf(data.seq);
  const history = data.history === true;
  const source = history ? entry.joinMode : 'live';
  // A live message past a gap (never from a correct server, but cheap to
  // check): fetch what lies between over HTTP.
  if (!history && seq !== null && entry.maxSeq > 0 && seq > entry.maxSeq + 1) {
    addHole(entry, entry.maxSeq + 1, seq - 1);
  }
  const item = addMessage(entry, { seq, author, text, ts: typeof data.ts === 'number' ? data.ts : Date.now() }, source);
  if (!history) {
    entry.floating = null;
  } else if (item && entry.floating && item.anchor > entry.floating.anchor) {
    // The join notice follows the history of its join.
    removeItem(entry, entry.floating);
    entry.floating.anchor = item.anchor;
    insertItem(entry, entry.floating);
  }
  if (source === 'live') trimLog(entry);
  if (state.active === name) syncList(entry, item && item.own ? 'bottom' : 'keep');
  else if (item) renderTabs();
  if (entry.holes.length) fillHoles(name);
}

// ---------------------------------------------------------------------------
// History: earlier pages and gaps, over HTTP
// ---------------------------------------------------------------------------

/** Adds messages of a `chatroom/history` answer; returns how many were new. */
function addHistoryRows(entry, rows, source) {
  let added = 0;
  for (const row of rows) {
    if (!row || typeof row !== 'object' || seqOf(row.seq) === null) continue;
    const author = row.user && typeof row.user.user_name === 'string' ? row.user.user_name : '';
    const message = {
      seq: row.seq,
      author,
      text: typeof row.msg === 'string' ? row.msg : '',
      ts: typeof row.ts === 'number' ? row.ts : Date.now(),
    };
    if (addMessage(entry, message, source)) added += 1;
  }
  return added;
}

function canLoadEarlier(entry) {
  return entry.minSeq > 1 && !entry.earlierDone;
}

/** "Load earlier messages": the page before the oldest message shown. */
async function loadEarlier(name) {
  const entry = room(name);
  if (!state.user || entry.loadingEarlier || !canLoadEarlier(entry)) return;
  entry.loadingEarlier = true;
  renderHistoryControls();
  let body = null;
  let failure = null;
  try {
    body = await authedGet('chatroom/history', { room_name: name, before: entry.minSeq, limit: HISTORY_PAGE });
  } catch (e) {
    failure = failureText(e);
  }
  entry.loadingEarlier = false;
  if (!state.user || state.rooms.get(name) !== entry) return;
  if (body && body.res === 'get history successfully' && Array.isArray(body.messages)) {
    addHistoryRows(entry, body.messages, 'earlier');
    if (body.has_more !== true) entry.earlierDone = true;
    if (state.active === name) syncList(entry, 'prepend');
  } else if (body) {
    notify(`Cannot load earlier messages of “${name}”: ${explainHttp(body.res, 'history', body.error)}`, 'error');
  } else if (failure) {
    notify(`Cannot load earlier messages: ${failure}`, 'error');
  }
  renderHistoryControls();
}

/** Remembers a seq range to fetch over HTTP, merged with those already owed. */
function addHole(entry, from, to) {
  if (to < from) return;
  entry.holes.push({ from, to });
  entry.holes.sort((a, b) => a.from - b.from);
  const merged = [];
  for (const hole of entry.holes) {
    const last = merged[merged.length - 1];
    if (last && hole.from <= last.to + 1) last.to = Math.max(last.to, hole.to);
    else merged.push({ ...hole });
  }
  entry.holes = merged;
}

/**
 * The rejoin's `since` reached back further than the server recovers over
 * the WebSocket (more than 300 missed, or some no longer kept): it sends the
 * newest part (first_seq..last_seq) and the page fetches the rest.
 */
function onHistoryIncomplete(name, data) {
  const entry = room(name);
  const since = Number.isSafeInteger(data.since) && data.since >= 0 ? data.since : entry.maxSeq;
  const first = seqOf(data.first_seq);
  if (first === null) return;
  addHole(entry, since + 1, first - 1);
  fillHoles(name);
}

/**
 * Fetches the owed ranges with `after=`, oldest first, in pages. Messages
 * the server no longer keeps are marked where they were, once. A failed
 * request keeps the range owed: the next successful join tries again.
 */
async function fillHoles(name) {
  const entry = room(name);
  if (entry.filling || !state.user) return;
  entry.filling = true;
  try {
    while (entry.holes.length && state.rooms.get(name) === entry && state.user) {
      const hole = entry.holes[0];
      const limit = Math.min(GAP_PAGE, hole.to - hole.from + 1);
      let body;
      try {
        body = await authedGet('chatroom/history', { room_name: name, after: hole.from - 1, limit });
      } catch (e) {
        return; // offline: the reconnect's join calls again
      }
      if (!body || body.res !== 'get history successfully' || !Array.isArray(body.messages)) {
        entry.holes.shift(); // the room is gone, or the server refuses: nothing to fill
        continue;
      }
      // Oldest first: the first seq returned is the oldest kept after hole.from - 1.
      const seqs = body.messages.map((row) => seqOf(row && row.seq)).filter((seq) => seq !== null);
      const firstKept = seqs.length ? Math.min(...seqs) : Infinity;
      if (firstKept > hole.from) markLost(entry, hole.from, Math.min(hole.to, firstKept - 1));
      addHistoryRows(entry, body.messages, 'recovered');
      const next = seqs.length ? Math.max(...seqs) + 1 : hole.to + 1;
      if (next <= hole.from) {
        entry.holes.shift(); // nothing after what was asked for: do not ask forever
      } else if (next > hole.to || body.has_more !== true) {
        entry.holes.shift();
        // Nothing more after `next`, yet the range is not complete: not kept.
        if (next <= hole.to && body.has_more !== true) markLost(entry, next, hole.to);
      } else {
        hole.from = next;
      }
      if (state.active === name) syncList(entry, 'keep');
      renderTabs();
    }
  } finally {
    entry.filling = false;
  }
}

/** The notice "some messages could not be recovered", placed where they were. */
function markLost(entry, from, to) {
  const count = to - from + 1;
  const what = count === 1 ? `message #${from} is` : `${count} messages (#${from}–#${to}) are`;
  const item = {
    kind: 'gap',
    text: `Some messages could not be recovered: ${what} no longer kept by the server.`,
    ts: Date.now(),
    anchor: entry.base + from - 1,
    rank: 2,
    order: ++arrivals,
    node: null,
  };
  insertItem(entry, item);
}

// ---------------------------------------------------------------------------
// Presence: who holds a seat, and who is connected
// ---------------------------------------------------------------------------

/**
 * Fetches the member list of a room; one request at a time per room, and
 * one more afterwards when something changed meanwhile.
 */
async function loadMembers(name) {
  const entry = room(name);
  if (!state.user) return;
  if (entry.membersBusy) {
    entry.membersAgain = true;
    return;
  }
  entry.membersBusy = true;
  try {
    do {
      entry.membersAgain = false;
      let body;
      try {
        body = await authedGet('chatroom/members', { room_name: name });
      } catch (e) {
        return; // offline; the next join fetches again
      }
      if (!body || state.rooms.get(name) !== entry || !entry.joined) return;
      if (body.res === 'get members successfully' && Array.isArray(body.members)) {
        entry.members = body.members
          .filter((m) => m && typeof m.user_name === 'string')
          .map((m) => ({
            user_name: m.user_name,
            user_avatar: typeof m.user_avatar === 'string' ? m.user_avatar : '',
            online: m.online === true,
          }));
        entry.membersStale = false;
        if (state.active === name) renderMembers();
      }
    } while (entry.membersAgain);
  } finally {
    entry.membersBusy = false;
  }
}

/** Someone joined: they hold a seat and are connected; no request needed. */
function memberJoined(entry, who, user) {
  // A list on its way may predate this join: fetch once more after it.
  if (entry.membersBusy) entry.membersAgain = true;
  if (!entry.members || !who) return;
  const avatar = user && typeof user.user_avatar === 'string' ? user.user_avatar : '';
  const member = entry.members.find((m) => m.user_name === who);
  if (member) member.online = true;
  else entry.members.push({ user_name: who, user_avatar: avatar, online: true });
  if (state.active === entry.name) renderMembers();
}

/** Someone left: whether they keep a seat or another connection, the server says. */
function memberLeft(entry) {
  if (!entry.joined) return;
  if (state.active === entry.name) loadMembers(entry.name);
  else entry.membersStale = true;
}

function onSend(event) {
  event.preventDefault();
  const input = $('message-input');
  const text = input.value;
  const name = state.active;
  if (!name) {
    notify('Choose a room first.', 'error');
    return;
  }
  if (text.trim() === '') {
    notify(explainWs('null message'), 'error');
    return;
  }
  if (!room(name).joined || !socketOpen()) {
    notify('Not connected to this room right now; your message was not sent. It will be possible again once reconnected.', 'error');
    return;
  }
  send({ type: 'msg', data: { user: userField(), room_name: name, msg: text } });
  input.value = '';
  input.focus();
}

// ---------------------------------------------------------------------------
// Rendering (text only: textContent everywhere)
// ---------------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function timeElement(ts) {
  const date = new Date(Number.isFinite(ts) ? ts : Date.now());
  // Earlier messages may be days old: those show their date too.
  const today = new Date().toDateString() === date.toDateString();
  const text = today
    ? date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    : date.toLocaleString([], { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
  const node = el('time', 'time', text);
  node.dateTime = date.toISOString();
  node.title = date.toLocaleString();
  return node;
}

function renderItem(item) {
  if (item.kind === 'divider') {
    const li = el('li', 'divider', 'Earlier messages');
    li.dataset.testid = 'earlier-divider';
    return li;
  }
  if (item.kind === 'event' || item.kind === 'gap') {
    const li = el('li', item.kind === 'gap' ? 'event gap' : 'event');
    if (item.kind === 'gap') li.dataset.testid = 'history-gap';
    li.append(timeElement(item.ts), ' · ', el('span', 'event-text', item.text));
    return li;
  }
  const li = el('li', item.own ? 'message own' : 'message other');
  if (item.source === 'earlier') li.classList.add('history');
  if (item.source === 'recovered') li.classList.add('recovered');
  li.dataset.author = item.author;
  if (item.seq !== null) li.dataset.seq = String(item.seq);
  const meta = el('div', 'meta');
  meta.append(el('span', 'author', item.own ? `${item.author} (you)` : item.author), timeElement(item.ts));
  li.append(meta, el('p', 'text', item.text));
  return li;
}

/**
 * Brings the timeline in line with the active room's log, moving only what
 * changed (each item keeps its element). `scroll`: 'keep' follows the newest
 * when the view was at the bottom and otherwise keeps what is in view in
 * place (a recovered message may go in above it), 'bottom' goes to the
 * newest, 'prepend' keeps what is in view in place as older ones go above.
 */
function syncList(entry, scroll = 'keep') {
  if (!entry || state.active !== entry.name) return;
  const timeline = $('timeline');
  const list = $('messages');
  const switched = list.dataset.room !== entry.name;
  if (switched) {
    list.replaceChildren();
    list.dataset.room = entry.name;
    entry.dropped = [];
  }
  const atBottom = timeline.scrollHeight - timeline.scrollTop - timeline.clientHeight < 80;
  // What the reader looks at: the first message reaching below the top edge
  // (not the divider, which moves up with the history), and where it is,
  // to put it back there after older items went above it.
  let anchor = null;
  let anchorTop = 0;
  const stay = !switched && (scroll === 'prepend' || (scroll === 'keep' && !atBottom));
  if (stay) {
    const top = timeline.getBoundingClientRect().top;
    for (const node of list.children) {
      if (!node.classList.contains('message')) continue;
      const box = node.getBoundingClientRect();
      if (box.bottom > top) {
        anchor = node;
        anchorTop = box.top;
        break;
      }
    }
  }
  for (const node of entry.dropped) node.remove();
  entry.dropped = [];
  let child = list.firstElementChild;
  for (const item of entry.log) {
    if (!item.node) item.node = renderItem(item);
    if (child === item.node) {
      child = child.nextElementSibling;
    } else {
      list.insertBefore(item.node, child);
    }
  }
  while (child) {
    const next = child.nextElementSibling;
    child.remove();
    child = next;
  }
  renderHistoryControls(); // above the list: before measuring
  if (!stay) {
    timeline.scrollTop = timeline.scrollHeight;
  } else if (anchor && anchor.isConnected) {
    timeline.scrollTop += anchor.getBoundingClientRect().top - anchorTop;
  }
}

/** The "Load earlier messages" button, and the note where history begins. */
function renderHistoryControls() {
  const entry = state.active ? state.rooms.get(state.active) : null;
  const button = $('load-earlier');
  const start = $('history-start');
  const focused = document.activeElement === button;
  const more = Boolean(entry && canLoadEarlier(entry));
  button.hidden = !more;
  const busy = Boolean(entry && entry.loadingEarlier);
  // Not `disabled`: that would take the keyboard focus away while loading
  // (a click meanwhile is ignored by loadEarlier).
  button.setAttribute('aria-disabled', String(busy));
  button.setAttribute('aria-busy', String(busy));
  button.textContent = busy ? 'Loading earlier messages…' : 'Load earlier messages';
  start.hidden = !(entry && entry.minSeq > 0 && !more);
  // A keyboard user whose button went away lands on the note that replaced it.
  if (focused && button.hidden && !start.hidden) {
    start.tabIndex = -1;
    start.focus({ preventScroll: true });
  }
}

function renderMembers() {
  const entry = state.active ? state.rooms.get(state.active) : null;
  const panel = $('members-panel');
  if (!entry || !entry.members) {
    panel.hidden = true;
    $('members').replaceChildren();
    return;
  }
  panel.hidden = false;
  const me = state.user ? state.user.user_name : '';
  const members = [...entry.members].sort(
    (a, b) => Number(b.user_name === me) - Number(a.user_name === me) ||
      Number(b.online) - Number(a.online) ||
      a.user_name.localeCompare(b.user_name),
  );
  const online = members.filter((m) => m.online).length;
  const people = members.length === 1 ? '1 person' : `${members.length} people`;
  let summary = `${people} · ${online} online`;
  if (entry.membersStale && !entry.joined) summary += ' (as last seen)';
  $('members-summary').textContent = summary;
  $('members').replaceChildren(
    ...members.map((m) => {
      const li = el('li');
      li.dataset.user = m.user_name;
      li.dataset.presence = m.online ? 'online' : 'seat';
      li.append(
        el('span', 'member-name', m.user_name === me ? `${m.user_name} (you)` : m.user_name),
        el('span', 'presence', m.online ? 'online' : 'seat kept, not connected'),
      );
      return li;
    }),
  );
}

function renderRoomList() {
  const list = $('room-list');
  const items = state.listed.map((r) => {
    const li = el('li');
    const button = el('button');
    button.type = 'button';
    button.dataset.room = r.name;
    const entry = state.rooms.get(r.name);
    if (entry && entry.joined) button.classList.add('joined');
    button.title = entry && entry.joined ? `Show ${r.name}` : `Join ${r.name}`;
    button.append(el('span', 'room-name', r.name), el('span', 'population', `${r.population} in room`));
    button.addEventListener('click', () => chooseRoom(r.name));
    li.append(button);
    return li;
  });
  list.replaceChildren(...items);
  $('room-list-empty').hidden = items.length > 0;
}

function renderTabs() {
  const tabs = tabRooms().map((name) => {
    const entry = room(name);
    const button = el('button', '', name);
    button.type = 'button';
    button.dataset.room = name;
    button.setAttribute('aria-current', String(state.active === name));
    if (entry.unread > 0) button.append(el('span', 'unread', `(${entry.unread})`));
    if (!entry.joined) button.append(el('span', 'unread', '…'));
    button.addEventListener('click', () => {
      state.active = name;
      entry.unread = 0;
      render();
      if (entry.joined && entry.membersStale) loadMembers(name);
    });
    return button;
  });
  $('tabs').replaceChildren(...tabs);
}

function render() {
  renderTabs();
  renderRoomList();
  const name = state.active;
  const entry = name ? room(name) : null;
  const title = $('room-title');
  if (!entry) {
    title.textContent = 'Pick a room to join it';
  } else if (entry.joined) {
    title.textContent = name;
  } else {
    title.textContent = `${name} — joining…`;
  }
  if (entry) {
    syncList(entry);
  } else {
    const list = $('messages');
    list.replaceChildren();
    list.dataset.room = '';
    renderHistoryControls();
  }
  renderMembers();
  const canChat = Boolean(entry && entry.joined);
  $('message-input').disabled = !canChat;
  $('message-send').disabled = !canChat;
  $('leave-room').disabled = !entry || !(entry.joined || entry.joining || state.wanted.has(name));
}

// ---------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------

function restoreSession() {
  let saved = null;
  try {
    saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) || 'null');
  } catch (e) {
    saved = null;
  }
  if (!saved || !saved.user || typeof saved.user.user_name !== 'string' || typeof saved.token !== 'string') {
    return false;
  }
  state.user = saved.user;
  state.token = saved.token;
  return true;
}

function start() {
  $('register-form').addEventListener('submit', onRegister);
  $('login-form').addEventListener('submit', onLogin);
  $('create-form').addEventListener('submit', onCreate);
  $('send-form').addEventListener('submit', onSend);
  $('leave-room').addEventListener('click', () => {
    if (state.active) leaveRoom(state.active);
  });
  $('logout').addEventListener('click', () => leaveChat(null));
  $('load-earlier').addEventListener('click', () => {
    if (state.active) loadEarlier(state.active);
  });
  // Scrolling up to the top loads the page before, as the button does.
  $('timeline').addEventListener(
    'scroll',
    () => {
      const entry = state.active ? state.rooms.get(state.active) : null;
      if (entry && $('timeline').scrollTop <= EARLIER_SCROLL_PX && canLoadEarlier(entry)) loadEarlier(entry.name);
    },
    { passive: true },
  );
  window.addEventListener('online', retryNow);
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) retryNow();
  });
  if (restoreSession()) {
    notify(`Welcome back, ${state.user.user_name}.`);
    enterChat();
  } else {
    notify('Log in, or register if you are new.');
  }
  document.documentElement.dataset.ready = 'true';
}

start();
