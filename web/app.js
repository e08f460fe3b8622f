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
const MAX_LOG = 1000; // entries kept per room
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
  rooms: new Map(), // name -> {name, log: [], joined, joining, everJoined, unread}
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
    entry = { name, log: [], joined: false, joining: false, everJoined: false, unread: 0 };
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

/** Calls an endpoint; resolves to the JSON body, rejects with NetworkError. */
async function api(path, params, method = 'POST') {
  const url = new URL(path, document.baseURI);
  const init = { method, cache: 'no-store', headers: {} };
  if (params) {
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

function sendJoin(name) {
  const data = { user: userField(), room_name: name, msg: '' };
  if (state.token) data.token = state.token;
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

function send(packet) {
  if (!socketOpen()) return false;
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
      if (roomName) addMessage(roomName, who, msg, typeof data.ts === 'number' ? data.ts : Date.now());
      break;
    case 'user':
      if (roomName) onPresence(roomName, who, msg);
      break;
    case 'error':
      onServerError(roomName, msg);
      break;
    default:
      break;
  }
}

function onPresence(name, who, what) {
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
      if (!wasJoined) addEvent(name, again ? 'You are back in the room.' : 'You joined the room.');
      if (!state.active) state.active = name;
    } else {
      addEvent(name, `${who} joined.`);
    }
  } else if (what === 'leave') {
    if (me) {
      entry.joined = false;
      entry.joining = false;
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

function addMessage(name, author, text, ts) {
  const own = state.user !== null && author === state.user.user_name;
  push(name, { kind: 'msg', author, text, ts, own });
}

function addEvent(name, text) {
  push(name, { kind: 'event', text, ts: Date.now() });
}

function push(name, item) {
  const entry = room(name);
  entry.log.push(item);
  if (entry.log.length > MAX_LOG) entry.log.splice(0, entry.log.length - MAX_LOG);
  if (state.active === name) {
    const list = $('messages');
    const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
    list.append(renderItem(item));
    while (list.childElementCount > MAX_LOG) list.firstElementChild.remove();
    if (nearBottom || item.own) list.scrollTop = list.scrollHeight;
  } else if (item.kind === 'msg') {
    entry.unread += 1;
    renderTabs();
  }
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
  const date = new Date(ts);
  const node = el('time', 'time', date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }));
  node.dateTime = date.toISOString();
  node.title = date.toLocaleString();
  return node;
}

function renderItem(item) {
  if (item.kind === 'event') {
    const li = el('li', 'event');
    li.append(timeElement(item.ts), ' · ', el('span', 'event-text', item.text));
    return li;
  }
  const li = el('li', item.own ? 'message own' : 'message other');
  li.dataset.author = item.author;
  const meta = el('div', 'meta');
  meta.append(el('span', 'author', item.own ? `${item.author} (you)` : item.author), timeElement(item.ts));
  li.append(meta, el('p', 'text', item.text));
  return li;
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
  const list = $('messages');
  if (list.dataset.room !== (name || '') || list.childElementCount !== (entry ? entry.log.length : 0)) {
    list.dataset.room = name || '';
    list.replaceChildren(...(entry ? entry.log.map(renderItem) : []));
    list.scrollTop = list.scrollHeight;
  }
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
