// Helpers for the browser tests: the real server binary as a child process,
// Debian's Chromium through playwright-core, and waits on DOM conditions.

import { spawn } from 'node:child_process';
import { createWriteStream, mkdirSync } from 'node:fs';
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
 * password hashing, and resolves once it logs the address it listens on.
 */
export function startServer({ dataDir, httpAddr = '127.0.0.1:0', logName = 'server.log' }) {
  const args = [
    '--http', httpAddr,
    '--ws', '127.0.0.1:0',
    '--data-dir', dataDir,
    '--argon2-memory-kib', '8',
    '--argon2-iterations', '1',
    '--hash-threads', '1',
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
      const match = /HTTP API listening on (\S+)/.exec(seen);
      if (match) {
        clearTimeout(timer);
        resolve({
          addr: match[1],
          url: `http://${match[1]}/`,
          /** Ends the process with `signal` and waits until it is gone. */
          async stop(signal = 'SIGTERM') {
            if (child.exitCode === null && child.signalCode === null) child.kill(signal);
            return exited;
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
