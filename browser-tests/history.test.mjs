// History, recovery and presence in the web client (SPEC §8), in real
// headless Chromium against the real server binary. Each test has its own
// server and data directory, and its people are independent browser
// contexts (own storage, own connections):
//   - a late joiner sees what was said before, marked as earlier messages;
//   - older pages load with the button and by scrolling to the top, in
//     order, with no duplicates, keeping the reading position;
//   - a page whose server was SIGKILLed and restarted while the other side
//     kept chatting shows every message exactly once, in order;
//   - the member list shows who is online and who only holds a seat, live;
//   - a recovery longer than the WebSocket sends is completed over HTTP;
//   - messages the server no longer keeps are marked where they were.
//
// Every wait is on a DOM condition, never a fixed sleep. One page is kept
// away from the server by a TCP gate in front of it (startGate), so other
// clients can chat while it is disconnected, deterministically.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import {
  artifactsDir, byId, launchBrowser, openBot, openClient, readTimeline, roomEntry, say, signUp, startGate,
  startServer, steps, waitMember, waitMessage, waitText, waitTimeline,
} from './harness.mjs';

const ANN = { tel: '13900000001', name: 'ann', password: 'ann-secret' };
const MING = { tel: '13900000002', name: '小明', password: '小明的密码123' };
const BOT = { tel: '13900000003', name: 'bot', password: 'bot-secret' };

let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  if (browser) await browser.close();
});

/**
 * A server of its own for one test, with `extraArgs`; `client(via)` opens a
 * page (through a gate when given), and everything is cleaned up after.
 */
async function scene(t, name, extraArgs = []) {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), `chatroom-${name}-`));
  const cleanups = [];
  const world = {
    server: await startServer({ dataDir, extraArgs, logName: `${name}.log` }),
    clients: [],
    async client(via) {
      const client = await openClient(browser, via ? via.url : world.server.url);
      world.clients.push(client);
      cleanups.push(() => client.context.close().catch(() => {}));
      return client;
    },
    async gate() {
      const gate = await startGate(world.server.addr);
      cleanups.push(() => gate.stop());
      return gate;
    },
    async bot(user, roomName) {
      const bot = await openBot(browser, world.server.url, user, roomName);
      cleanups.push(() => bot.close().catch(() => {}));
      return bot;
    },
  };
  t.after(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
    await world.server.stop('SIGTERM');
    rmSync(dataDir, { recursive: true, force: true });
  });
  return world;
}

async function createAndJoin(page, roomName) {
  await page.fill(byId('room-create-name'), roomName);
  await page.click(byId('room-create-submit'));
  await waitText(page, 'status', 'created');
  await join(page, roomName);
}

/** Joins from the room list (which refreshes by itself every few seconds). */
async function join(page, roomName) {
  await page.locator(roomEntry(roomName)).click();
  await waitText(page, 'messages', 'You joined the room.');
}

/** Says each text in turn, each seen by the sender before the next. */
async function sayAll(page, texts) {
  for (const text of texts) {
    await say(page, text);
    await waitMessage(page, text);
  }
}

/** The page tells the network is back (as the browser's `online` event does). */
function networkBack(page) {
  return page.evaluate(() => window.dispatchEvent(new Event('online')));
}

/** Messages of a timeline, with their seqs strictly 1, 2, 3 … from `first`. */
function assertConsecutive(items, first, what) {
  const seqs = items.filter((item) => 'seq' in item).map((item) => item.seq);
  const expected = seqs.map((_, i) => first + i);
  assert.deepEqual(seqs, expected, `${what}: seqs in order, each once, no gap`);
}

const numbered = (prefix, from, to) =>
  Array.from({ length: to - from + 1 }, (_, i) => `${prefix} ${String(from + i).padStart(3, '0')}`);

test('a late joiner sees the earlier messages, marked as earlier', { timeout: 120000 }, async (parent) => {
  const world = await scene(parent, 'late-joiner');
  const t = steps(parent);
  const ROOM = 'history 历史';
  const earlier = ['first, before 小明 came', '第二条：早些时候的消息', 'third <b>still text</b>'];
  let ann;
  let ming;

  await t.test('ann talks alone in a new room', async () => {
    ann = await world.client();
    ming = await world.client();
    await signUp(ann.page, ANN);
    await signUp(ming.page, MING);
    await createAndJoin(ann.page, ROOM);
    await sayAll(ann.page, earlier);
  });

  await t.test('小明 joins later and sees them under "Earlier messages", in order', async () => {
    await join(ming.page, ROOM);
    await waitTimeline(ming.page, earlier);
    const items = await readTimeline(ming.page);
    const messages = items.filter((item) => 'seq' in item);
    assert.deepEqual(messages.map((m) => m.seq), [1, 2, 3]);
    assert.ok(messages.every((m) => m.earlier && m.author === ANN.name), 'every one marked as earlier, by ann');
    const divider = items.findIndex((item) => item.divider);
    assert.equal(items.filter((item) => item.divider).length, 1, 'one divider');
    assert.equal(items[divider].divider, 'Earlier messages');
    assert.equal(items[divider + 1].seq, 1, 'the divider is right above the oldest');
    const joined = items.findIndex((item) => item.notice === 'You joined the room.');
    assert.ok(joined > items.findIndex((item) => item.seq === 3), 'the join notice comes after the history');
    // Seq 1 is shown: nothing earlier exists, so no button, and the page says so.
    assert.equal(await ming.page.locator(byId('load-earlier')).isVisible(), false);
    assert.equal(await ming.page.locator(byId('history-start')).isVisible(), true);
    await ming.page.screenshot({ path: path.join(artifactsDir, 'late-joiner.png') });
  });

  await t.test('what is said after that is live, not earlier, on both sides', async () => {
    await say(ann.page, 'now live');
    await say(ming.page, '我到了');
    const all = [...earlier, 'now live', '我到了'];
    await waitTimeline(ming.page, all);
    await waitTimeline(ann.page, all);
    const mings = await readTimeline(ming.page);
    assert.deepEqual(
      mings.filter((item) => 'seq' in item).map((m) => [m.seq, m.earlier]),
      [[1, true], [2, true], [3, true], [4, false], [5, false]],
    );
    const anns = await readTimeline(ann.page);
    assert.ok(anns.every((item) => !item.earlier && !item.divider), 'ann saw them all live: nothing earlier');
    assertConsecutive(anns, 1, 'ann');
  });

  await t.test('no script errors, CSP violations or requests to other origins', () => {
    for (const client of world.clients) assert.deepEqual(client.problems, []);
  });
});

test('older pages load with the button and at the top, in order, once', { timeout: 180000 }, async (parent) => {
  // Five messages on entering; 120 in the room: three more pages of 50.
  // With --require-token the history endpoint answers only the page's token.
  const world = await scene(parent, 'older-pages', ['--history-on-join', '5', '--ws-rate', '0', '--require-token']);
  const t = steps(parent);
  const ROOM = 'long story';
  const texts = numbered('page message', 1, 120);
  let ann;
  let ming;

  await t.test('120 messages are said before 小明 comes', async () => {
    ann = await world.client();
    ming = await world.client();
    await signUp(ann.page, ANN);
    await signUp(ming.page, MING);
    await createAndJoin(ann.page, ROOM);
    const bot = await world.bot(BOT, ROOM);
    const seqs = await bot.say(texts);
    assert.deepEqual(seqs, texts.map((_, i) => i + 1));
    await waitTimeline(ann.page, texts);
  });

  await t.test('小明 enters and sees the newest five as earlier messages, and the button', async () => {
    await join(ming.page, ROOM);
    await waitTimeline(ming.page, texts.slice(115));
    const items = await readTimeline(ming.page);
    assert.ok(items.filter((item) => 'seq' in item).every((m) => m.earlier));
    const button = ming.page.getByRole('button', { name: 'Load earlier messages' });
    await button.waitFor();
    assert.equal(await ming.page.locator(byId('history-start')).isVisible(), false);
  });

  await t.test('the button loads the 50 before them', async () => {
    await ming.page.getByRole('button', { name: 'Load earlier messages' }).click();
    await waitTimeline(ming.page, texts.slice(65));
  });

  await t.test('scrolling to the top loads the next 50 and keeps the messages in view in place', async () => {
    // Scrolled to the top, message 66 (the oldest shown) sits at some height;
    // after the page above it arrives it must sit there still.
    const offset = () =>
      ming.page.evaluate(() => {
        const timeline = document.querySelector('[data-testid="timeline"]');
        const node = document.querySelector('[data-testid="messages"] [data-seq="66"]');
        return node.getBoundingClientRect().top - timeline.getBoundingClientRect().top;
      });
    const before = await ming.page.evaluate(() => {
      const timeline = document.querySelector('[data-testid="timeline"]');
      timeline.scrollTop = 0;
      const node = document.querySelector('[data-testid="messages"] [data-seq="66"]');
      return node.getBoundingClientRect().top - timeline.getBoundingClientRect().top;
    });
    await waitTimeline(ming.page, texts.slice(15));
    const now = await offset();
    assert.ok(Math.abs(now - before) <= 1, `message 66 stayed in place (${before} px from the top, now ${now})`);
  });

  await t.test('the last page loads by keyboard, the button goes, and all 120 are shown once, in order', async () => {
    await ming.page.getByRole('button', { name: 'Load earlier messages' }).focus();
    await ming.page.keyboard.press('Enter');
    await waitTimeline(ming.page, texts);
    await ming.page.locator(byId('load-earlier')).waitFor({ state: 'hidden' });
    await ming.page.locator(byId('history-start')).waitFor();
    // The focus went from the vanished button to the note that replaced it.
    assert.equal(await ming.page.evaluate(() => document.activeElement.dataset.testid), 'history-start');
    const items = await readTimeline(ming.page);
    assertConsecutive(items, 1, '小明');
    assert.ok(items.filter((item) => 'seq' in item).every((m) => m.earlier), 'all earlier');
    assert.equal(items.filter((item) => item.divider).length, 1, 'one divider');
    assert.equal(items[items.findIndex((item) => item.divider) + 1].seq, 1, 'the divider above the oldest');
    await ming.page.screenshot({ path: path.join(artifactsDir, 'older-pages.png') });
  });

  await t.test('a live message after them is the 121st, not earlier', async () => {
    await say(ann.page, 'and now live');
    await waitTimeline(ming.page, [...texts, 'and now live']);
    const last = (await readTimeline(ming.page)).filter((item) => 'seq' in item).pop();
    assert.deepEqual([last.seq, last.earlier], [121, false]);
  });

  await t.test('no script errors, CSP violations or requests to other origins', () => {
    for (const client of world.clients) assert.deepEqual(client.problems, []);
  });
});

test('a page whose server was killed and restarted shows every message exactly once', { timeout: 180000 }, async (parent) => {
  const world = await scene(parent, 'restart-recovery');
  const t = steps(parent);
  const ROOM = 'restart 重启';
  const beforeKill = ['ann before the kill', '小明 before the kill', 'ann again before the kill'];
  const whileAway = ['小明 while ann is away 1', '小明 while ann is away 2', '小明 while ann is away 3'];
  const afterBack = ['小明 after ann is back', 'ann after she is back'];
  let gate;
  let ann;
  let ming;

  await t.test('ann (behind a gate) and 小明 chat', async () => {
    gate = await world.gate();
    ann = await world.client(gate);
    ming = await world.client();
    await signUp(ann.page, ANN);
    await signUp(ming.page, MING);
    await createAndJoin(ann.page, ROOM);
    await join(ming.page, ROOM);
    await say(ann.page, beforeKill[0]);
    await waitMessage(ming.page, beforeKill[0]);
    await say(ming.page, beforeKill[1]);
    await waitMessage(ann.page, beforeKill[1]);
    await say(ann.page, beforeKill[2]);
    for (const client of [ann, ming]) await waitTimeline(client.page, beforeKill);
  });

  await t.test('the server is SIGKILLed; ann stays cut off while it restarts', async () => {
    const stopped = await world.server.stop('SIGKILL');
    assert.equal(stopped.signal, 'SIGKILL');
    gate.close();
    for (const client of [ann, ming]) {
      await waitText(client.page, 'status', 'Reconnecting');
      await waitText(client.page, 'messages', 'Connection lost.');
    }
    world.server = await world.server.restart();
  });

  await t.test('小明 comes back by himself and keeps chatting while ann is away', async () => {
    await waitText(ming.page, 'messages', 'You are back in the room.', 45000);
    await sayAll(ming.page, whileAway);
    await waitTimeline(ming.page, [...beforeKill, ...whileAway]);
    // Still cut off: nothing of it reached ann.
    assert.deepEqual(await ann.page.locator(`${byId('messages')} .message .text`).allTextContents(), beforeKill);
    await waitText(ann.page, 'status', 'Reconnecting');
  });

  await t.test('ann reconnects, logs in again, rejoins with since, and gets exactly what she missed', async () => {
    gate.open();
    await networkBack(ann.page);
    await waitText(ann.page, 'messages', 'You are back in the room.', 45000);
    await waitTimeline(ann.page, [...beforeKill, ...whileAway]);
  });

  await t.test('both chat on; each side shows every message once, in seq order', async () => {
    await say(ming.page, afterBack[0]);
    await waitMessage(ann.page, afterBack[0]);
    await say(ann.page, afterBack[1]);
    const all = [...beforeKill, ...whileAway, ...afterBack];
    for (const client of [ann, ming]) await waitTimeline(client.page, all);
    const anns = await readTimeline(ann.page);
    assertConsecutive(anns, 1, 'ann');
    const messages = anns.filter((item) => 'seq' in item);
    assert.deepEqual(
      messages.map((m) => m.recovered),
      [false, false, false, true, true, true, false, false],
      'what ann missed is marked recovered, nothing else',
    );
    const at = (predicate) => anns.findIndex(predicate);
    const lost = at((item) => item.notice === 'Connection lost.');
    const back = at((item) => item.notice === 'You are back in the room.');
    assert.ok(lost > at((item) => item.seq === 3) && lost < at((item) => item.seq === 4), 'connection lost after seq 3');
    assert.ok(back > at((item) => item.seq === 6) && back < at((item) => item.seq === 7), 'back after the recovered ones');
    assertConsecutive(await readTimeline(ming.page), 1, '小明');
    await ann.page.screenshot({ path: path.join(artifactsDir, 'restart-recovery.png') });
  });

  await t.test('no script errors, CSP violations or requests to other origins', () => {
    for (const client of world.clients) assert.deepEqual(client.problems, []);
  });
});

test('the member list shows who is online and who only holds a seat, live', { timeout: 120000 }, async (parent) => {
  // With --require-token the members endpoint answers only the page's token.
  const world = await scene(parent, 'presence', ['--require-token']);
  const t = steps(parent);
  const ROOM = 'who is here';
  let ann;
  let ming;

  const summary = (page) => page.locator(byId('members-summary')).textContent();

  await t.test('ann alone in her room sees herself online', async () => {
    ann = await world.client();
    ming = await world.client();
    await signUp(ann.page, ANN);
    await signUp(ming.page, MING);
    await createAndJoin(ann.page, ROOM);
    await waitMember(ann.page, ANN.name, 'online');
    assert.equal(await summary(ann.page), '1 person · 1 online');
  });

  await t.test('小明 joins: both lists show both online', async () => {
    await join(ming.page, ROOM);
    await waitMember(ann.page, MING.name, 'online');
    await waitMember(ming.page, ANN.name, 'online');
    await waitMember(ming.page, MING.name, 'online');
    await waitText(ann.page, 'members-summary', '2 people · 2 online');
    await ann.page.screenshot({ path: path.join(artifactsDir, 'members.png') });
  });

  await t.test('小明 leaves: gone from ann’s list at once (a leave frees the seat)', async () => {
    await ming.page.click(byId('leave-room'));
    await waitMember(ann.page, MING.name, 'absent');
    await waitText(ann.page, 'members-summary', '1 person · 1 online');
  });

  await t.test('小明 comes back: online again', async () => {
    await ming.page.locator(roomEntry(ROOM)).click();
    await waitText(ming.page, 'messages', 'You are back in the room.');
    await waitMember(ann.page, MING.name, 'online');
  });

  await t.test('小明’s page closes: ann sees his seat kept, not connected', async () => {
    await ming.context.close();
    await waitMember(ann.page, MING.name, 'seat');
    await waitText(ann.page, 'members-summary', '2 people · 1 online');
    const text = await ann.page.locator(`${byId('members')} li[data-user="${MING.name}"]`).textContent();
    assert.match(text, /seat kept, not connected/);
    await waitText(ann.page, 'room-list', '2 in room');
  });

  await t.test('no script errors, CSP violations or requests to other origins', () => {
    for (const client of world.clients) assert.deepEqual(client.problems, []);
  });
});

test('a recovery longer than the WebSocket sends is completed over HTTP', { timeout: 180000 }, async (parent) => {
  const world = await scene(parent, 'long-recovery', ['--ws-rate', '0']);
  const t = steps(parent);
  const ROOM = 'busy room';
  const missed = numbered('missed', 1, 330);
  let gate;
  let ann;
  let bot;
  const gapRequests = [];

  await t.test('ann (behind a gate) and a bot are in the room', async () => {
    gate = await world.gate();
    ann = await world.client(gate);
    ann.page.on('request', (request) => {
      if (request.url().includes('chatroom/history') && request.url().includes('after=')) gapRequests.push(request.url());
    });
    await signUp(ann.page, ANN);
    await createAndJoin(ann.page, ROOM);
    bot = await world.bot(BOT, ROOM);
    await bot.say(['before the outage']);
    await waitTimeline(ann.page, ['before the outage']);
  });

  await t.test('ann’s network goes; 330 messages are said meanwhile', async () => {
    gate.close();
    await waitText(ann.page, 'status', 'Reconnecting');
    const seqs = await bot.say(missed);
    assert.deepEqual(seqs, missed.map((_, i) => i + 2));
  });

  await t.test('back online, ann shows all 330 exactly once, in order, the first 30 fetched over HTTP', async () => {
    gate.open();
    await networkBack(ann.page);
    await waitText(ann.page, 'messages', 'You are back in the room.', 45000);
    await waitTimeline(ann.page, ['before the outage', ...missed]);
    const items = await readTimeline(ann.page);
    assertConsecutive(items, 1, 'ann');
    assert.equal(items.filter((item) => item.gap).length, 0, 'nothing reported lost');
    assert.ok(
      items.filter((item) => 'seq' in item && item.seq > 1).every((m) => m.recovered),
      'all 330 marked recovered',
    );
    // The server sends the newest 300 over the WebSocket and says the rest
    // is missing (history incomplete); the page fetched it with after=1.
    assert.ok(gapRequests.some((url) => /[?&]after=1(&|$)/.test(url)), `a gap request after=1: ${gapRequests}`);
  });

  await t.test('no script errors, CSP violations or requests to other origins', () => {
    for (const client of world.clients) assert.deepEqual(client.problems, []);
  });
});

test('messages the server no longer keeps are marked where they were', { timeout: 120000 }, async (parent) => {
  // Retention of 20: of 50 messages missed, the oldest 30 are gone.
  const world = await scene(parent, 'lost-messages', ['--history-size', '20', '--ws-rate', '0']);
  const t = steps(parent);
  const ROOM = 'short memory';
  const missed = numbered('missed', 1, 50);
  let gate;
  let ann;
  let bot;

  await t.test('ann (behind a gate) and a bot are in the room', async () => {
    gate = await world.gate();
    ann = await world.client(gate);
    await signUp(ann.page, ANN);
    await createAndJoin(ann.page, ROOM);
    bot = await world.bot(BOT, ROOM);
    await bot.say(['before the outage']);
    await waitTimeline(ann.page, ['before the outage']);
  });

  await t.test('ann’s network goes; 50 messages are said meanwhile', async () => {
    gate.close();
    await waitText(ann.page, 'status', 'Reconnecting');
    await bot.say(missed);
  });

  await t.test('back online, ann shows the 20 kept and says where 30 could not be recovered', async () => {
    gate.open();
    await networkBack(ann.page);
    await waitText(ann.page, 'messages', 'You are back in the room.', 45000);
    await waitTimeline(ann.page, ['before the outage', ...missed.slice(30)]);
    await waitText(ann.page, 'messages', 'Some messages could not be recovered');
    const items = await readTimeline(ann.page);
    const gaps = items.filter((item) => item.gap);
    assert.equal(gaps.length, 1, 'one notice');
    assert.match(gaps[0].notice, /30 messages \(#2–#31\)/);
    const at = (predicate) => items.findIndex(predicate);
    const gap = at((item) => item.gap);
    assert.ok(gap > at((item) => item.seq === 1) && gap < at((item) => item.seq === 32), 'between seq 1 and seq 32');
    assertConsecutive(items.filter((item) => !('seq' in item) || item.seq >= 32), 32, 'the kept ones');
    await ann.page.screenshot({ path: path.join(artifactsDir, 'lost-messages.png') });
  });

  await t.test('no script errors, CSP violations or requests to other origins', () => {
    for (const client of world.clients) assert.deepEqual(client.problems, []);
  });
});
