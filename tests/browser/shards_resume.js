// pushsvc.js itself in Node (Node's WebSocket: node --experimental-websocket),
// driven by tests/test_redis_shards_resume.py: what the client sees goes out
// as JSON lines on stdout, one per event with its positions; a line
// {"do": "drop"} on stdin closes its socket (it comes back by itself).
//
//   node --experimental-websocket shards_resume.js URL USER GROUP...
"use strict";
const path = require("path");
const readline = require("readline");
const { PushClient } = require(path.join(__dirname, "..", "..", "pushsvc", "static", "pushsvc.js"));

const [url, user, ...groups] = process.argv.slice(2);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const client = new PushClient(url, { user, groups, minDelay: 1000, jitter: 0 });
for (const on of ["message", "resumed", "gap", "state", "error"]) {
  client.on(on, (value) => out({ on, value: on === "error" ? String(value) : value,
                                 lastPos: client.lastPos, posEpoch: client.posEpoch }));
}
client.connect().then(() => out({ on: "ready", epoch: client.epoch }));

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const cmd = JSON.parse(line);
  if (cmd.do === "drop") client._ws.close(3000, "dropped by the test");
});
process.stdin.on("end", () => process.exit(0));
