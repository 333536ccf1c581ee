// The demo page in a real headless Chromium, driven by playwright-core:
// tests/test_browser.py starts two servers and runs
//
//   node tests/browser/run_demo.js BASE_URL SCREENSHOT_PATH EVENTS_BASE_URL
//
// with PUSHSVC_CHROMIUM naming the browser.
//
// 1. BASE_URL is a server with the defaults (member events off, presence
//    on). Two users join a group on the demo page and see each other online
//    through the presence op (bob's page, there first, asks every second
//    with &poll=1; alice's every 5 s, the default), send, get a push from
//    the HTTP API; the server closes alice's socket with 1012 (service
//    restart) and pushes while she is away; her page comes back by itself,
//    resumes, and shows the missed message once, in its place. Then a
//    screenshot; alice leaves, and bob's next presence answer drops her.
// 2. EVENTS_BASE_URL has member events on (namespace "") and subscription
//    tokens for the groups "room:*". carol's page stops asking presence at
//    its own joined event; dave joins and leaves: carol's page shows it live.
// 3. In carol's page, pushsvc.js itself: erin joins room:1 with a token
//    function (a fresh token for each join, from the test), asks presence,
//    hears member events without losing her groups; after a reconnect she
//    is in room:1 again with a new token; after the next one the token is
//    refused: room:1 is dropped and told as an error naming it; a group the
//    server takes her out of is forgotten.
//
// It asks the test for what only the server can do with a line on stdout,
//   STEP {"step": "restart", "user": "alice", "text": "..."}
// and waits for the answer, one line of JSON on stdin. It prints
// DONE {...} and exits 0 when all went well; otherwise it prints the reason
// on stderr and exits 1.
"use strict";

const readline = require("readline");
const { chromium } = require("playwright-core");

const [base, screenshot, eventsBase] = process.argv.slice(2);
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

// Wait until the page lists exactly these users online.
function waitOnline(page, names) {
  return page.waitForFunction(
    (wanted) => {
      const shown = Array.from(document.querySelectorAll("#online li[data-user]")).map((li) => li.dataset.user);
      return JSON.stringify(shown) === JSON.stringify(wanted);
    }, names, { timeout: TIMEOUT });
}

async function post(url, body, status) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  check(response.status === status, `POST ${url} answered ${response.status}`);
  return response.json();
}

async function push(data) {
  return (await post(base + "/api/push", { to: { group: "lobby" }, data: data }, 202)).id;
}

async function open(context, url, name, problems) {
  const page = await context.newPage();
  page.on("pageerror", (e) => problems.push(`${name}: page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error" && !/WebSocket|ERR_CONNECTION/.test(m.text())) {
      problems.push(`${name}: console error: ${m.text()}`);
    }
  });
  await page.goto(url);
  return page;
}

async function hint(page) {
  return page.$eval("#online-hint", (p) => p.textContent);
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
    for (const [name, poll] of [["bob", "&poll=1"], ["alice", ""]]) {
      pages[name] = await open(context, `${base}/?name=${name}&group=lobby${poll}`, name, problems);
      await pages[name].waitForSelector('#state[data-state="ready"]', { timeout: TIMEOUT });
    }
    const { alice, bob } = pages;
    log("both ready");
    // alice sees bob in the presence answer she gets on joining; bob sees
    // alice at his next presence question.
    await waitOnline(alice, ["alice", "bob"]);
    await waitOnline(bob, ["alice", "bob"]);
    check(/every 5 s \(member events are off here\)/.test(await hint(alice)), "alice's hint: " + await hint(alice));
    log("both online, through presence");

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

    await alice.click("#leave-button");
    await waitOnline(bob, ["bob"]);
    log("alice left; bob's next presence answer says so");

    // 2. Member events: carol's page hears dave join and leave, live.
    const carol = await open(context, `${eventsBase}/?name=carol&group=lobby`, "carol", problems);
    await carol.waitForSelector('#state[data-state="ready"]', { timeout: TIMEOUT });
    await waitOnline(carol, ["carol"]);
    check(await carol.evaluate(() => window.demo.presence.live && window.demo.presence.timer === null),
          "carol's page still polls presence");
    check(/^Live/.test(await hint(carol)), "carol's hint: " + await hint(carol));
    const dave = await open(context, `${eventsBase}/?name=dave&group=lobby`, "dave", problems);
    await dave.waitForSelector('#state[data-state="ready"]', { timeout: TIMEOUT });
    await waitForText(carol, "dave joined", "#messages li.member");
    await waitOnline(carol, ["carol", "dave"]);
    await waitOnline(dave, ["carol", "dave"]);
    await dave.click("#leave-button");
    await waitForText(carol, "dave left", "#messages li.member");
    await waitOnline(carol, ["carol"]);
    log("carol saw dave join and leave, live");

    // 3. pushsvc.js: join with a token function and data, presence, events.
    await carol.bringToFront();  // its reconnect timers run at their pace in front
    await carol.exposeFunction("subscriptionToken", (group) =>
      step({ step: "token", user: "erin", group: group }).then((answer) => answer.token));
    const first = await carol.evaluate(async () => {
      const erin = new PushClient({ user: "erin", minDelay: 50, maxDelay: 100 });
      const seen = window.erinSeen = { events: [], errors: [] };
      window.erin = erin;
      erin.on("joined", (f) => seen.events.push(f));
      erin.on("left", (f) => seen.events.push(f));
      erin.on("error", (e) => seen.errors.push([e.code, e.group, e.frame && e.frame.message]));
      await erin.connect();
      const ok = await erin.join("room:1", { token: () => window.subscriptionToken("room:1"),
                                             data: { color: "blue" } });
      let refused = null;
      await erin.join("room:2").catch((e) => { refused = [e.code, e.group]; });
      await erin.join("lobby");
      const presence = await erin.presence("lobby");
      delete presence.ref;
      return { ok: ok.op, refused, presence, session: erin.session, groups: Array.from(erin.groups).sort() };
    });
    check(first.ok === "ok", "erin's join: " + JSON.stringify(first));
    check(JSON.stringify(first.refused) === JSON.stringify(["forbidden", "room:2"]),
          "erin's join without a token: " + JSON.stringify(first.refused));
    check(JSON.stringify(first.groups) === JSON.stringify(["lobby", "room:1"]), "erin's groups: " + first.groups);
    check(JSON.stringify(first.presence) === JSON.stringify({ op: "presence", group: "lobby", sessions: 2, anonymous: 0,
                                                              users: { carol: { sessions: 1 }, erin: { sessions: 1 } } }),
          "erin's presence: " + JSON.stringify(first.presence));
    await waitForText(carol, "erin joined", "#messages li.member");
    const groupsOf = async () => (await step({ step: "groups", user: "erin" })).groups;
    check(JSON.stringify(await groupsOf()) === JSON.stringify(["lobby", "room:1"]), "erin's groups on the server");

    // A reconnect: room:1 joined again with the second token.
    const ready = (session) => carol.waitForFunction(
      (old) => window.erin.state === "ready" && window.erin.session !== old, session, { timeout: TIMEOUT });
    await step({ step: "restart", user: "erin" });
    await ready(first.session);
    check(JSON.stringify(await groupsOf()) === JSON.stringify(["lobby", "room:1"]), "erin's groups after a reconnect");
    const second = await carol.evaluate(() => ({ session: window.erin.session, seen: window.erinSeen }));
    check(second.seen.errors.length === 0, "errors: " + JSON.stringify(second.seen.errors));
    // Member events change no groups; she hears her own join on each connection.
    const own = second.seen.events.filter((f) => f.session !== undefined && f.user === "erin" && f.op === "joined");
    check(own.length === 2, "erin's own joined events: " + JSON.stringify(second.seen.events));

    // The next reconnect: the token function now gives another user's token.
    await step({ step: "restart", user: "erin" });
    await ready(second.session);
    const third = await carol.evaluate(() => ({ groups: Array.from(window.erin.groups).sort(),
                                                errors: window.erinSeen.errors }));
    check(JSON.stringify(third.errors) === JSON.stringify(
      [["forbidden", "room:1", "the token is for another user (claim 'sub')"]]), "the refused re-join: " + JSON.stringify(third.errors));
    check(JSON.stringify(third.groups) === JSON.stringify(["lobby"]), "erin's groups after the refusal: " + third.groups);
    check(JSON.stringify(await groupsOf()) === JSON.stringify(["lobby"]), "erin's groups on the server after the refusal");

    // The server takes her out of lobby: forgotten, not joined again.
    await post(eventsBase + "/api/leave", { user: "erin", group: "lobby" }, 200);
    await carol.waitForFunction(() => window.erin.groups.size === 0, null, { timeout: TIMEOUT });
    const notice = await carol.evaluate(() => window.erinSeen.events.filter((f) => f.session === undefined));
    check(JSON.stringify(notice) === JSON.stringify([{ op: "left", group: "lobby", reason: "server" }]),
          "erin's notices: " + JSON.stringify(notice));
    await carol.evaluate(() => window.erin.close());
    check(problems.length === 0, problems.join("\n"));
    log("pushsvc.js: tokens, presence, events, a refused re-join");

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
