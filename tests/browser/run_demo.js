// The demo page in a real headless Chromium, driven by playwright-core:
// tests/test_browser.py starts the server and runs
//
//   node tests/browser/run_demo.js BASE_URL SCREENSHOT_PATH
//
// with PUSHSVC_CHROMIUM naming the browser. Two users join a group on the
// demo page, see each other online, send, get a push from the HTTP API; the
// server closes alice's socket with 1012 (service restart) and pushes while
// she is away; her page comes back by itself, resumes, and shows the missed
// message once, in its place. Then a screenshot.
//
// It asks the test for what only the server can do with a line on stdout,
//   STEP {"step": "restart", "user": "alice", "text": "..."}
// and waits for the answer, one line of JSON on stdin. It prints
// DONE {...} and exits 0 when all went well; otherwise it prints the reason
// on stderr and exits 1.
"use strict";

const readline = require("readline");
const { chromium } = require("playwright-core");

const [base, screenshot] = process.argv.slice(2);
const executablePath = process.env.PUSHSVC_CHROMIUM;
const TIMEOUT = 15000;

const answers = readline.createInterface({ input: process.stdin });
const waiting = [];
answers.on("line", (line) => {
  const next = waiting.shift();
  if (next) next(JSON.parse(line));
});

function step(request) {
  return new Promise((resolve) => {
    waiting.push(resolve);
    process.stdout.write("STEP " + JSON.stringify(request) + "\n");
  });
}

function log(text) {
  process.stderr.write(`[${new Date().toISOString().slice(11, 23)}] ${text}\n`);
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

// The texts of the chat lines (not the system lines) on a page.
function chat(page) {
  return page.$$eval("#messages li.client, #messages li.server", (items) =>
    items.map((li) => [li.querySelector(".who").textContent, li.lastChild.textContent]));
}

function waitForText(page, text, selector = "#messages li") {
  return page.waitForFunction(
    ([sel, t]) => Array.from(document.querySelectorAll(sel)).some((li) => li.textContent.includes(t)),
    [selector, text], { timeout: TIMEOUT });
}

function waitOnline(page, names) {
  return page.waitForFunction(
    (wanted) => {
      const shown = Array.from(document.querySelectorAll("#online li")).map((li) => li.textContent);
      return wanted.every((n) => shown.includes(n));
    }, names, { timeout: TIMEOUT });
}

async function push(data) {
  const response = await fetch(base + "/api/push", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ to: { group: "lobby" }, data: data }),
  });
  check(response.status === 202, "POST /api/push answered " + response.status);
  return (await response.json()).id;
}

async function main() {
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
  });
  const problems = [];
  try {
    const context = await browser.newContext({ viewport: { width: 900, height: 560 } });
    const pages = {};
    for (const name of ["alice", "bob"]) {
      const page = await context.newPage();
      page.on("pageerror", (e) => problems.push(`${name}: page error: ${e.message}`));
      page.on("console", (m) => {
        if (m.type() === "error" && !/WebSocket|ERR_CONNECTION/.test(m.text())) {
          problems.push(`${name}: console error: ${m.text()}`);
        }
      });
      await page.goto(`${base}/?name=${name}&group=lobby`);
      pages[name] = page;
    }
    const { alice, bob } = pages;
    for (const page of [alice, bob]) {
      await page.waitForSelector('#state[data-state="ready"]', { timeout: TIMEOUT });
    }
    log("both ready");
    await waitOnline(alice, ["alice", "bob"]);
    await waitOnline(bob, ["alice", "bob"]);
    log("both online");

    await bob.bringToFront();
    await bob.fill('#send input[name="text"]', "hello from bob");
    await bob.click("#send-button");
    for (const page of [alice, bob]) await waitForText(page, "hello from bob", "#messages li.client");
    log("bob's message seen by both");

    await push({ text: "pushed by the backend" });
    for (const page of [alice, bob]) await waitForText(page, "pushed by the backend", "#messages li.server");
    log("the push seen by both");

    // The server closes alice's socket (1012, service restart) and pushes
    // while she is away.
    const text = "pushed while alice was away";
    await step({ step: "restart", user: "alice", text: text });
    await waitForText(alice, "connection lost (1012");
    await waitForText(alice, text, "#messages li.server");
    await alice.waitForSelector('#state[data-state="ready"]', { timeout: TIMEOUT });
    await waitForText(alice, "missed message", "#messages li.resumed");
    const resumed = await alice.$$eval("#messages li.resumed", (items) => items.map((li) => li.textContent));
    check(resumed.length === 1 && /back: [1-9]\d* missed messages? replayed$/.test(resumed[0]),
          "the resume line: " + JSON.stringify(resumed));
    await waitForText(bob, text, "#messages li.server");
    log("alice is back: " + resumed[0]);

    await alice.bringToFront();  // a page in the background runs its timers slowly
    await alice.fill('#send input[name="text"]', "alice is back");
    await alice.click("#send-button");
    for (const page of [alice, bob]) await waitForText(page, "alice is back", "#messages li.client");
    await waitOnline(bob, ["alice", "bob"]);
    log("alice's message seen by both");

    const expected = [
      ["bob", "hello from bob"],
      ["server", "pushed by the backend"],
      ["server", text],
      ["alice", "alice is back"],
    ];
    for (const [name, page] of Object.entries(pages)) {
      const lines = await chat(page);
      check(JSON.stringify(lines) === JSON.stringify(expected),
            `${name}'s messages, in order and once: ${JSON.stringify(lines)}`);
    }
    check(problems.length === 0, problems.join("\n"));

    await alice.screenshot({ path: screenshot });
    log("screenshot taken");
    process.stdout.write("DONE " + JSON.stringify({ resumed: resumed[0] }) + "\n");
  } finally {
    await browser.close();
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    process.stderr.write("FAILED: " + (e && e.stack || e) + "\n");
    process.exit(1);
  });
