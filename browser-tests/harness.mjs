// Helpers for the browser tests: the real server binary as a child process,
// Debian's Chromium through playwright-core, and waits on DOM conditions.

import { spawn } from 'node:child_process';
import { createWriteStream, mkdirSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '..');
const targetDir = process.env.CARGO_TARGET_DIR || path.join(repoRoot, 'target');

/** The server binary: $CHATROOM_BIN, else the debug build. */
export const serverBin = process.env.CHATROOM_BIN || path.join(targetDir, 'debug', 'chatroom');

/** Where screenshots and logs go (not committed: target/ is ignored). */
export const artifactsDir = process.env.BROWSER_ARTIFACTS || path.join(targetDir, 'browser-artifacts');
mkdirSync(artifactsDir, { recursive: true });

/** How long to wait for the server to report its address. */
const START_TIMEOUT_MS = 20000;

/**
 * Starts the server on `httpAddr` (port 0 picks one) with `dataDir`, cheap
 * password hashing and the `extraArgs` flags, and resolves once it logs the
 * addresses it listens on. The handle's `restart()` starts it again on the
 * same data directory, ports and flags (after a `stop`, e.g. a SIGKILL).
 */
export function startServer({
  dataDir, httpAddr = '127.0.0.1:0', wsAddr = '127.0.0.1:0', logName = 'server.log', extraArgs = [],
}) {
  const args = [
    '--http', httpAddr,
    '--ws', wsAddr,
    '--data-dir', dataDir,
    '--argon2-memory-kib', '8',
    '--argon2-iterations', '1',
    '--hash-threads', '1',
    ...extraArgs,
  ];
  const child = spawn(serverBin, args, {
    env: { ...process.env, RUST_LOG: 'info' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const log = createWriteStream(path.join(artifactsDir, logName), { flags: 'a' });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  return new Promise((resolve, reject) => {
    let seen = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`server did not report its address within ${START_TIMEOUT_MS} ms:\n${seen}`));
    }, START_TIMEOUT_MS);
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(new Error(`cannot start ${serverBin}: ${error.message} (build it with cargo build)`));
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`server exited early (code ${code}, signal ${signal}):\n${seen}`));
    });
    child.stderr.on('data', (chunk) => {
      log.write(chunk);
      if (seen.length < 64 * 1024) seen += chunk.toString();
      const http = /HTTP API listening on (\S+)/.exec(seen);
      const ws = /WebSocket chat listening on (\S+)/.exec(seen);
      if (http && ws) {
        clearTimeout(timer);
        resolve({
          addr: http[1],
          wsAddr: ws[1],
          url: `http://${http[1]}/`,
          /** Ends the process with `signal` and waits until it is gone. */
          async stop(signal = 'SIGTERM') {
            if (child.exitCode === null && child.signalCode === null) child.kill(signal);
            return exited;
          },
          /** The same server again: same data directory, ports and flags. */
          restart(restartLog = `restarted-${logName}`) {
            return startServer({ dataDir, httpAddr: http[1], wsAddr: ws[1], logName: restartLog, extraArgs });
          },
        });
      }
    });
  });
}

export async function launchBrowser() {
  // Keep Chromium to the page under test: no background calls home (this
  // machine's network reaches nothing but localhost and package registries).
  const args = [
    '--disable-gpu',
    '--disable-quic',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--disable-default-apps',
    '--no-first-run',
    '--no-pings',
    '--metrics-recording-only',
  ];
  // Chromium refuses to run as root with its sandbox on; CI runs as root.
  if (typeof process.getuid === 'function' && process.getuid() === 0) args.push('--no-sandbox');
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args,
  });
}

/**
 * A page in its own browser context (its own storage: an independent user),
 * which records uncaught errors, CSP violations and requests to other origins.
 */
export async function openClient(browser, baseUrl, options = {}) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 }, ...options });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  const problems = [];
  page.on('pageerror', (error) => problems.push(`uncaught: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error' && /Content Security Policy|Refused to/i.test(message.text())) {
      problems.push(`console: ${message.text()}`);
    }
  });
  const origin = new URL(baseUrl).origin;
  page.on('request', (request) => {
    const url = new URL(request.url());
    const sameHost = url.host === new URL(origin).host;
    if (!sameHost && url.protocol !== 'data:') problems.push(`request to another origin: ${request.url()}`);
  });
  await page.goto(baseUrl);
  await page.waitForSelector('html[data-ready="true"]');
  return { context, page, problems };
}

export const byId = (id) => `[data-testid="${id}"]`;

/** Waits until the element with `testid` contains `text`; says what it held if not. */
export async function waitText(page, testid, text, timeout = 20000) {
  try {
    await page.waitForFunction(
      ([id, wanted]) => {
        const node = document.querySelector(`[data-testid="${id}"]`);
        return node !== null && node.textContent.includes(wanted);
      },
      [testid, text],
      { timeout, polling: 50 },
    );
  } catch (error) {
    const actual = await page
      .locator(byId(testid))
      .textContent({ timeout: 1000 })
      .catch(() => '<missing>');
    throw new Error(`${testid} never contained ${JSON.stringify(text)}; it says ${JSON.stringify(actual)}`);
  }
}

/** Waits until a message bubble with exactly `text` is in the message list. */
export async function waitMessage(page, text, timeout = 20000) {
  try {
    await page.waitForFunction(
      (wanted) =>
        [...document.querySelectorAll('[data-testid="messages"] .message .text')].some(
          (node) => node.textContent === wanted,
        ),
      text,
      { timeout, polling: 50 },
    );
  } catch (error) {
    const shown = await page.locator(`${byId('messages')} .message .text`).allTextContents();
    throw new Error(`message ${JSON.stringify(text)} never shown; shown: ${JSON.stringify(shown)}`);
  }
  return page.evaluate((wanted) => {
    const bubble = [...document.querySelectorAll('[data-testid="messages"] .message')].find(
      (node) => node.querySelector('.text').textContent === wanted,
    );
    const time = bubble.querySelector('time');
    return {
      own: bubble.classList.contains('own'),
      author: bubble.dataset.author,
      time: time ? time.dateTime : null,
      childElements: bubble.querySelector('.text').childElementCount,
    };
  }, text);
}

/**
 * A TCP gate in front of the server: a page loaded through it reaches the
 * server only while the gate is open. `close()` cuts every connection through
 * it and refuses new ones (to that page alone the network is gone, while the
 * server stays up and other pages go on); `open()` lets it through again.
 * `target` is "host:port"; `url` is the page's address through the gate.
 */
export async function startGate(target) {
  const split = target.lastIndexOf(':');
  const host = target.slice(0, split);
  const port = Number(target.slice(split + 1));
  const sockets = new Set();
  let open = true;
  const server = net.createServer((client) => {
    if (!open) {
      client.destroy();
      return;
    }
    const upstream = net.connect(port, host);
    sockets.add(client);
    sockets.add(upstream);
    const close = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', close).on('close', close);
    upstream.on('error', close).on('close', close);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const addr = `127.0.0.1:${server.address().port}`;
  return {
    addr,
    url: `http://${addr}/`,
    close() {
      open = false;
      for (const socket of sockets) socket.destroy();
      sockets.clear();
    },
    open() {
      open = true;
    },
    stop() {
      this.close();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

/** Fills in and sends the register form. */
export async function register(page, user) {
  await page.fill(byId('register-tel'), user.tel);
  await page.fill(byId('register-name'), user.name);
  await page.fill(byId('register-password'), user.password);
  await page.click(byId('register-submit'));
}

/** Fills in and sends the login form. */
export async function logIn(page, user) {
  await page.fill(byId('login-tel'), user.tel);
  await page.fill(byId('login-password'), user.password);
  await page.click(byId('login-submit'));
}

/** Registers and logs in through the forms, and waits for the connection. */
export async function signUp(page, user) {
  await register(page, user);
  await waitText(page, 'status', `Registered as ${user.name}`);
  await logIn(page, user);
  await waitText(page, 'status', 'Connected');
}

/** Types a message into the composer and sends it. */
export async function say(page, text) {
  await page.fill(byId('message-input'), text);
  await page.click(byId('message-send'));
}

/** The room's entry in the room list (its button). */
export const roomEntry = (name) => `${byId('room-list')} button[data-room="${name}"]`;

/**
 * What the timeline shows, top to bottom: messages as {seq, text, author,
 * earlier, recovered}, notices as {notice, gap}, the divider as {divider}.
 */
export function readTimeline(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll('[data-testid="messages"] > li')].map((li) => {
      if (li.classList.contains('message')) {
        return {
          seq: li.dataset.seq === undefined ? null : Number(li.dataset.seq),
          text: li.querySelector('.text').textContent,
          author: li.dataset.author,
          earlier: li.classList.contains('history'),
          recovered: li.classList.contains('recovered'),
        };
      }
      if (li.classList.contains('divider')) return { divider: li.textContent };
      return { notice: li.querySelector('.event-text').textContent, gap: li.classList.contains('gap') };
    }),
  );
}

/** The message texts shown, top to bottom. */
export function shownTexts(page) {
  return page.locator(`${byId('messages')} .message .text`).allTextContents();
}

/**
 * Waits until the timeline's message texts are exactly `texts`, in order;
 * says what it showed if not. Exactly: a duplicate or a gap never matches.
 */
export async function waitTimeline(page, texts, timeout = 30000) {
  try {
    await page.waitForFunction(
      (wanted) => {
        const shown = [...document.querySelectorAll('[data-testid="messages"] .message .text')].map(
          (node) => node.textContent,
        );
        return shown.length === wanted.length && shown.every((text, i) => text === wanted[i]);
      },
      texts,
      { timeout, polling: 100 },
    );
  } catch (error) {
    const shown = await shownTexts(page);
    const missing = texts.filter((text) => !shown.includes(text));
    const extra = shown.filter((text) => !texts.includes(text));
    throw new Error(
      `the timeline never showed exactly the ${texts.length} expected messages in order; it shows ${shown.length}` +
        `; missing ${JSON.stringify(missing.slice(0, 10))}; unexpected ${JSON.stringify(extra.slice(0, 10))}` +
        `; first shown ${JSON.stringify(shown.slice(0, 5))}, last ${JSON.stringify(shown.slice(-5))}`,
    );
  }
}

/** Waits until the member list shows `user` as 'online', 'seat' or 'absent'. */
export async function waitMember(page, user, presence, timeout = 20000) {
  try {
    await page.waitForFunction(
      ([name, wanted]) => {
        const item = [...document.querySelectorAll('[data-testid="members"] li')].find(
          (li) => li.dataset.user === name,
        );
        const panel = document.querySelector('[data-testid="members-panel"]');
        if (!panel || panel.hidden) return false;
        return wanted === 'absent' ? item === undefined : item !== undefined && item.dataset.presence === wanted;
      },
      [user, presence],
      { timeout, polling: 50 },
    );
  } catch (error) {
    const shown = await page.locator(byId('members-panel')).textContent({ timeout: 1000 }).catch(() => '<missing>');
    throw new Error(`member ${user} never shown as ${presence}; the member list says ${JSON.stringify(shown)}`);
  }
}

/**
 * A scripted chat client in its own browser context, for sending many
 * messages quickly: it uses the HTTP API and the WebSocket from a blank page
 * of the server's origin (/healthz), not the web client. `say(texts)` sends
 * them in order and resolves, once every one has come back, to their seqs.
 */
export async function openBot(browser, baseUrl, user, roomName) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(30000);
  await page.goto(new URL('healthz', baseUrl).href);
  const joined = await page.evaluate(
    async ({ user: who, roomName: name }) => {
      const post = async (path, params) => {
        const response = await fetch(path, { method: 'POST', body: new URLSearchParams(params) });
        return response.json();
      };
      await post('/auth/register', { user_tel: who.tel, user_name: who.name, user_password: who.password });
      const login = await post('/auth/login', { user_tel: who.tel, user_password: who.password });
      if (login.res !== 'login successfully') return `login: ${login.res}`;
      const admission = await post('/chatroom/room', { room_name: name, user_name: who.name, status: '1' });
      if (admission.res !== 'join chatroom') return `admission: ${admission.res}`;
      const ws = new WebSocket(`ws://${location.host}/ws`);
      const bot = { ws, echoes: new Map(), errors: [], waiters: [] };
      window.bot = bot;
      ws.onmessage = (event) => {
        const packet = JSON.parse(event.data);
        if (packet.type === 'msg' && packet.data.user.user_name === who.name && packet.data.history !== true) {
          bot.echoes.set(packet.data.msg, packet.data.seq);
        } else if (packet.type === 'error') {
          bot.errors.push(packet.data.msg);
        }
        for (const waiter of bot.waiters) waiter();
      };
      await new Promise((resolve, reject) => {
        ws.onopen = resolve;
        ws.onerror = () => reject(new Error('bot websocket failed'));
      });
      const user = { user_name: who.name, user_avatar: '' };
      const joinedNow = new Promise((resolve) => {
        const previous = ws.onmessage;
        ws.onmessage = (event) => {
          previous(event);
          const packet = JSON.parse(event.data);
          if (packet.type === 'user' && packet.data.user.user_name === who.name) resolve('joined');
          if (packet.type === 'error') resolve(`join: ${packet.data.msg}`);
        };
      });
      ws.send(JSON.stringify({ type: 'join', data: { user, room_name: name, msg: '', token: login.data.token } }));
      const token = login.data.token;
      bot.send = (text) => ws.send(JSON.stringify({ type: 'msg', data: { user, room_name: name, msg: text, token } }));
      return joinedNow;
    },
    { user, roomName },
  );
  if (joined !== 'joined') throw new Error(`the bot ${user.name} could not join ${roomName}: ${joined}`);
  return {
    context,
    /** Sends `texts` in order; resolves to their seqs once all came back. */
    say(texts) {
      return page.evaluate(
        (list) =>
          new Promise((resolve, reject) => {
            const { bot } = window;
            const check = () => {
              if (bot.errors.length) reject(new Error(`the bot got errors: ${bot.errors.join(', ')}`));
              else if (list.every((text) => bot.echoes.has(text))) resolve(list.map((text) => bot.echoes.get(text)));
            };
            bot.waiters.push(check);
            for (const text of list) bot.send(text);
            check();
          }),
        texts,
      );
    },
    close: () => context.close(),
  };
}

/**
 * Steps of one test that build on each other: `steps(t).test(name, fn)` runs
 * a subtest, and after a failure skips the rest rather than failing them for
 * the same reason.
 */
export function steps(parent) {
  let broken = null;
  return {
    test: (name, fn) =>
      parent.test(name, async (step) => {
        if (broken) {
          step.skip(`skipped: "${broken}" failed`);
          return;
        }
        try {
          await fn(step);
        } catch (error) {
          broken = name;
          throw error;
        }
      }),
  };
}
