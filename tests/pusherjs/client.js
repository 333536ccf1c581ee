// One pusher-js client in Node, driven by tests/test_pusher_ws_js.py: the
// commands of drive.js come as JSON lines on stdin, what the client sees goes
// out as JSON lines on stdout.
//
//   node client.js PORT KEY SECRET     (the secret plays the app's backend:
//                                       it signs channel auth and sign-ins)
"use strict";
const crypto = require("crypto");
const readline = require("readline");
const Pusher = require("pusher-js");
const drive = require("./drive.js");

const [port, key, secret] = process.argv.slice(2);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const sign = (text) => crypto.createHmac("sha256", secret).update(text).digest("hex");
const handle = drive(Pusher, port, key, sign, out);

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const cmd = JSON.parse(line);
  handle(cmd);
  if (cmd.do === "disconnect") process.exit(0);
});
process.stdin.on("end", () => process.exit(0));
