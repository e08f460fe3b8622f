// The web client in real headless Chromium against the real server binary:
// two independent browser contexts register, log in, create and join a room,
// chat (in Chinese too), survive the server being killed and restarted, see
// markup as text, and leave; plus the phone layout.
//
// Steps run in order and share the two users; every wait is on a DOM
// condition, never a fixed sleep.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import {
  artifactsDir, byId, launchBrowser, logIn, openClient, register, roomEntry, say, startServer, steps, waitMessage,
  waitText,
} from './harness.mjs';

const ROOM = '大厅 lobby';
const ANN = { tel: '13800000001', name: 'ann', password: 'ann-secret' };
const MING = { tel: '13800000002', name: '小明', password: '小明的密码123' };

let dataDir;
let server;
let browser;
let ann;
let ming;

before(async () => {
  dataDir = mkdtempSync(path.join(os.tmpdir(), 'chatroom-browser-'));
  server = await startServer({ dataDir });
  browser = await launchBrowser();
  ann = await openClient(browser, server.url);
  ming = await openClient(browser, server.url);
});

after(async () => {
  if (browser) await browser.close();
  if (server) await server.stop('SIGTERM');
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

test('two people chat in the browser', { timeout: 240000 }, async (parent) => {
  // The steps build on each other: after a failure the rest are skipped
  // rather than failing for the same reason.
  const t = steps(parent);
  await t.test('the page is served and shows the login and register forms', async () => {
    for (const client of [ann, ming]) {
      assert.equal(await client.page.title(), 'Chatroom');
      await client.page.locator(byId('login-submit')).waitFor();
      await client.page.locator(byId('register-submit')).waitFor();
    }
  });

  await t.test('both register; a second registration of a name is explained', async () => {
    await register(ann.page, ANN);
    await waitText(ann.page, 'status', 'Registered as ann');
    await register(ming.page, MING);
    await waitText(ming.page, 'status', `Registered as ${MING.name}`);

    await register(ann.page, { ...ANN, tel: '13800000009' });
    await waitText(ann.page, 'status', 'already registered');
    await waitText(ann.page, 'status', '“user exist”');
  });

  await t.test('a wrong password is explained, then both log in and connect', async () => {
    await logIn(ming.page, { ...MING, password: 'not-the-password' });
    await waitText(ming.page, 'status', 'Wrong password');
    await waitText(ming.page, 'status', '“password wrong”');

    await logIn(ann.page, ANN);
    await logIn(ming.page, MING);
    for (const client of [ann, ming]) {
      await waitText(client.page, 'status', 'Connected');
      await client.page.locator(byId('room-create-name')).waitFor();
    }
  });

  await t.test('ann creates a room with a capacity; both see it in the list', async () => {
    await ann.page.fill(byId('room-create-name'), ROOM);
    await ann.page.fill(byId('room-create-capacity'), '5');
    await ann.page.click(byId('room-create-submit'));
    await waitText(ann.page, 'status', 'created');
    // Ming's list refreshes by itself.
    await ming.page.locator(roomEntry(ROOM)).waitFor({ timeout: 20000 });
    await waitText(ann.page, 'room-list', '0 in room');

    await ann.page.fill(byId('room-create-name'), ROOM);
    await ann.page.click(byId('room-create-submit'));
    await waitText(ann.page, 'status', 'already exists');
  });

  await t.test('both join from the room list and see each other arrive', async () => {
    await ann.page.click(roomEntry(ROOM));
    await waitText(ann.page, 'messages', 'You joined the room.');
    await ming.page.click(roomEntry(ROOM));
    await waitText(ming.page, 'messages', 'You joined the room.');
    await waitText(ann.page, 'messages', `${MING.name} joined.`);
    // Populations in the list follow the seats.
    await waitText(ann.page, 'room-list', '2 in room');
    await waitText(ming.page, 'room-list', '2 in room');
  });

  await t.test('they exchange messages, one in Chinese; own and others are told apart', async () => {
    const hello = 'Hello from ann';
    const chinese = '你好，世界！这是一条中文消息。';
    await say(ann.page, hello);
    await say(ming.page, chinese);
    for (const [client, me] of [[ann, ANN], [ming, MING]]) {
      const first = await waitMessage(client.page, hello);
      const second = await waitMessage(client.page, chinese);
      assert.equal(first.author, ANN.name);
      assert.equal(second.author, MING.name);
      assert.equal(first.own, me === ANN, `${me.name}: own flag of ann's message`);
      assert.equal(second.own, me === MING, `${me.name}: own flag of ming's message`);
      for (const info of [first, second]) {
        assert.ok(info.time && !Number.isNaN(Date.parse(info.time)), 'timestamped');
      }
    }
    await ann.page.screenshot({ path: path.join(artifactsDir, 'two-person-chat.png') });
    await ming.page.screenshot({ path: path.join(artifactsDir, 'two-person-chat-other-side.png') });
  });

  await t.test('markup in a message is shown as text, never run', async () => {
    const markup = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"><b>bold</b>';
    await say(ann.page, markup);
    for (const client of [ann, ming]) {
      const info = await waitMessage(client.page, markup);
      assert.equal(info.childElements, 0, 'the text holds no elements');
      const injected = await client.page.evaluate(() => ({
        pwned: window.__pwned,
        elements: document.querySelectorAll('[data-testid="messages"] script, [data-testid="messages"] img, [data-testid="messages"] b').length,
      }));
      assert.deepEqual(injected, { pwned: undefined, elements: 0 });
    }
  });

  await t.test('the server is killed and restarted: both reconnect, rejoin and chat on', async () => {
    const { addr } = server;
    const stopped = await server.stop('SIGKILL');
    assert.equal(stopped.signal, 'SIGKILL');
    for (const client of [ann, ming]) {
      await waitText(client.page, 'status', 'Reconnecting');
      await waitText(client.page, 'messages', 'Connection lost.');
    }
    // Same port and data: users and rooms are on disk; seats and login
    // tokens are not, so the page must log in again, redo admission and join.
    server = await startServer({ dataDir, httpAddr: addr, logName: 'server-restarted.log' });
    for (const client of [ann, ming]) {
      await waitText(client.page, 'status', 'Connected', 45000);
      await waitText(client.page, 'messages', 'You are back in the room.', 45000);
    }
    const resumed = '重连以后 — still here';
    await say(ann.page, resumed);
    const seen = await waitMessage(ming.page, resumed);
    assert.equal(seen.own, false);
    const reply = 'ming after the restart';
    await say(ming.page, reply);
    await waitMessage(ann.page, reply);
    await waitText(ann.page, 'room-list', '2 in room');
  });

  await t.test('ming leaves; ann sees the notice and the seat is given back', async () => {
    await ming.page.click(byId('leave-room'));
    await waitText(ann.page, 'messages', `${MING.name} left.`);
    await waitText(ming.page, 'status', `You left “${ROOM}”`);
    await waitText(ann.page, 'room-list', '1 in room');
    assert.equal(await ming.page.locator(byId('message-input')).isDisabled(), true);
  });

  await t.test('the layout works on a phone', async () => {
    const phone = await openClient(browser, server.url, {
      viewport: { width: 390, height: 844 },
      isMobile: true,
      hasTouch: true,
      deviceScaleFactor: 2,
    });
    const overflow = () => phone.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok((await overflow()) <= 0, 'the login page fits the width');
    await logIn(phone.page, ANN);
    await waitText(phone.page, 'status', 'Connected');
    await phone.page.tap(roomEntry(ROOM));
    await waitText(phone.page, 'messages', 'You joined the room.');
    await say(phone.page, '手机上也能聊天');
    await waitMessage(ann.page, '手机上也能聊天');
    assert.ok((await overflow()) <= 0, 'the chat fits the width');
    for (const id of ['message-input', 'message-send', 'room-list', 'leave-room']) {
      const box = await phone.page.locator(byId(id)).boundingBox();
      assert.ok(box, `${id} is laid out`);
      assert.ok(box.x >= 0 && box.x + box.width <= 390 + 0.5, `${id} within the screen width`);
      assert.ok(box.y + Math.min(box.height, 40) <= 844, `${id} on the first screen`);
    }
    await phone.page.screenshot({ path: path.join(artifactsDir, 'phone.png') });
    assert.deepEqual(phone.problems, []);
    await phone.context.close();
  });

  await t.test('no script errors, CSP violations or requests to other origins', () => {
    assert.deepEqual(ann.problems, []);
    assert.deepEqual(ming.problems, []);
  });
});
