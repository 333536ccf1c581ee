// One pusher-js client in a page of a real headless Chromium (pusher-js's
// browser build, the browser's own WebSocket), driven as client.js is:
// drive.js's commands as JSON lines on stdin, what it sees on stdout.
//
//   PUSHSVC_CHROMIUM=/path/to/chromium node browser.js PORT KEY SECRET
//
// playwright-core comes from tests/browser/node_modules (`make browser`).
"use strict";
const crypto = require("crypto");
const path = require("path");
const readline = require("readline");
const { chromium } = require("../browser/node_modules/playwright-core");

const [port, key, secret] = process.argv.slice(2);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.PUSHSVC_CHROMIUM, headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
           "--disable-features=LocalNetworkAccessChecks"],
  });
  const page = await browser.newPage();
  page.on("pageerror", (e) => process.stderr.write(`page error: ${e}\n`));
  // The app's backend (the secret) stays in Node; the page asks it.
  await page.exposeFunction("sign", (text) =>
    crypto.createHmac("sha256", secret).update(text).digest("hex"));
  await page.exposeFunction("report", out);
  // A page with an origin the handshake accepts (about:blank's is "null"),
  // made up here, so that no HTTP connection to the server is left open by
  // it; being made up, it is no address Chromium knows to be local, hence
  // LocalNetworkAccessChecks off above (a real page would come from a host
  // of the same network as pushsvc, or have the user's permission).
  await page.route("http://127.0.0.1/pusher-test", (route) =>
    route.fulfill({ contentType: "text/html", body: "<!doctype html><title>pusher</title>" }));
  await page.goto("http://127.0.0.1/pusher-test");
  await page.addScriptTag({ path: require.resolve("pusher-js/dist/web/pusher.js") });
  await page.addScriptTag({ path: path.join(__dirname, "drive.js") });
  await page.evaluate(([p, k]) => {
    window.handle = drive(window.Pusher, p, k, window.sign, window.report);
  }, [port, key]);
  // Commands run one after the other, then the end of stdin closes the browser.
  let queue = Promise.resolve();
  const then = (step) => { queue = queue.then(step); };
  const quit = async () => { await browser.close(); process.exit(0); };
  readline.createInterface({ input: process.stdin }).on("line", (line) => {
    const cmd = JSON.parse(line);
    then(() => page.evaluate((c) => window.handle(c), cmd));
    if (cmd.do === "disconnect") then(quit);
  });
  process.stdin.on("end", () => then(quit));
})().catch((e) => { process.stderr.write(`${e.stack || e}\n`); process.exit(1); });
