// One pusher-js client, driven by tests/test_pusher_ws_js.py: commands come as
// JSON lines on stdin, what the client sees goes out as JSON lines on stdout.
//
//   node client.js PORT KEY SECRET        (the secret plays the app's backend:
//                                          it signs channel auth and sign-ins)
//   in:  {"do":"subscribe","channel":C,"user":U,"info":I}   (U, I: presence)
//        {"do":"unsubscribe","channel":C}
//        {"do":"whisper","channel":C,"event":E,"data":D}    (a client-* event)
//        {"do":"signin","user":U}
//        {"do":"disconnect"}
//   out: {"on":"connected","socket_id":S} {"on":"subscribed","channel":C,"members":M}
//        {"on":"event","channel":C,"event":E,"data":D,"user_id":U}
//        {"on":"member_added"|"member_removed","channel":C,"id":U,"info":I}
//        {"on":"subscription_error","channel":C,"error":..} {"on":"error","error":..}
//        {"on":"signed_in"} {"on":"state","current":..} {"on":"closed"}
"use strict";
const crypto = require("crypto");
const readline = require("readline");
const Pusher = require("pusher-js");

const [port, key, secret] = process.argv.slice(2);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const sign = (text) => crypto.createHmac("sha256", secret).update(text).digest("hex");
const members = {};  // presence channel -> {user, info}: who this client says it is
let signinUser = null;

const pusher = new Pusher(key, {
  wsHost: "127.0.0.1", wsPort: Number(port), forceTLS: false, enabledTransports: ["ws"],
  cluster: "local", enableStats: false,
  channelAuthorization: {
    customHandler: ({ socketId, channelName }, callback) => {
      const member = members[channelName];
      if (member) {
        const channel_data = JSON.stringify({ user_id: member.user, user_info: member.info });
        callback(null, { auth: `${key}:${sign(`${socketId}:${channelName}:${channel_data}`)}`,
                         channel_data });
      } else if (channelName.startsWith("private-bad-")) {
        callback(null, { auth: `${key}:${"0".repeat(64)}` });
      } else {
        callback(null, { auth: `${key}:${sign(`${socketId}:${channelName}`)}` });
      }
    },
  },
  userAuthentication: {
    customHandler: ({ socketId }, callback) => {
      const user_data = JSON.stringify({ id: signinUser });
      callback(null, { auth: `${key}:${sign(`${socketId}::user::${user_data}`)}`, user_data });
    },
  },
});

pusher.connection.bind("state_change", (s) => out({ on: "state", current: s.current }));
pusher.connection.bind("connected", () => out({ on: "connected",
                                                socket_id: pusher.connection.socket_id }));
pusher.connection.bind("error", (e) => out({ on: "error", error: e && (e.error || e) }));
// Every event as it comes, with its channel (none: an event to the connection).
pusher.connection.bind("message", (e) => {
  if (e.event === "pusher:signin_success") out({ on: "signed_in" });
  if (!e.event.startsWith("pusher:") && !e.event.startsWith("pusher_internal:")) {
    out({ on: "event", channel: e.channel || null, event: e.event, data: e.data,
          user_id: e.user_id || null });
  }
});

function subscribe(cmd) {
  if (cmd.user !== undefined) members[cmd.channel] = { user: cmd.user, info: cmd.info };
  const channel = pusher.subscribe(cmd.channel);
  channel.bind("pusher:subscription_succeeded", (m) => {
    const listed = m && m.each ? (() => { const all = {}; m.each((x) => { all[x.id] = x.info; });
                                          return all; })() : null;
    out({ on: "subscribed", channel: cmd.channel, members: listed });
  });
  channel.bind("pusher:subscription_error", (e) => out({ on: "subscription_error",
                                                          channel: cmd.channel, error: e }));
  channel.bind("pusher:member_added", (m) => out({ on: "member_added", channel: cmd.channel,
                                                   id: m.id, info: m.info }));
  channel.bind("pusher:member_removed", (m) => out({ on: "member_removed", channel: cmd.channel,
                                                     id: m.id }));
}

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const cmd = JSON.parse(line);
  if (cmd.do === "subscribe") subscribe(cmd);
  else if (cmd.do === "unsubscribe") pusher.unsubscribe(cmd.channel);
  else if (cmd.do === "whisper") {
    out({ on: "whispered", ok: pusher.channel(cmd.channel).trigger(cmd.event, cmd.data) });
  } else if (cmd.do === "signin") { signinUser = cmd.user; pusher.signin(); }
  else if (cmd.do === "disconnect") { pusher.disconnect(); out({ on: "closed" }); process.exit(0); }
});
process.stdin.on("end", () => process.exit(0));
