// One Laravel Echo client (over pusher-js), driven by tests/test_pusher_ws_js.py
// as client.js is: JSON lines in, JSON lines out.
//
//   node echo.mjs PORT KEY SECRET USER NAME   (USER and NAME: who it is on
//                                             presence channels; the secret
//                                             plays the Laravel backend)
//   in:  {"do":"listen","channel":C,"event":E}     (E as in Laravel: OrderShipped)
//        {"do":"private","channel":C,"whisper":W}  (listen for the whisper W)
//        {"do":"join","channel":C}
//        {"do":"whisper","channel":C,"event":W,"data":D}   (on private-C)
//        {"do":"disconnect"}
//   out: {"on":"connected","socket_id":S} {"on":"event","channel":C,"data":D}
//        {"on":"whisper","channel":C,"data":D} {"on":"here","users":[..]}
//        {"on":"joining","user":U} {"on":"leaving","user":U} {"on":"subscribed","channel":C}
// An ES module: laravel-echo 2.5's CommonJS build does not load in Node.
import crypto from "node:crypto";
import readline from "node:readline";
import Pusher from "pusher-js";
import Echo from "laravel-echo";

const [port, key, secret, user, name] = process.argv.slice(2);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const sign = (text) => crypto.createHmac("sha256", secret).update(text).digest("hex");

const echo = new Echo({
  broadcaster: "pusher", Pusher, key, wsHost: "127.0.0.1", wsPort: Number(port),
  forceTLS: false, enabledTransports: ["ws"], cluster: "local", enableStats: false,
  // What Laravel's /broadcasting/auth answers, made here.
  channelAuthorization: {
    customHandler: ({ socketId, channelName }, callback) => {
      if (channelName.startsWith("presence-")) {
        const channel_data = JSON.stringify({ user_id: user, user_info: { id: user, name } });
        callback(null, { auth: `${key}:${sign(`${socketId}:${channelName}:${channel_data}`)}`,
                         channel_data });
      } else {
        callback(null, { auth: `${key}:${sign(`${socketId}:${channelName}`)}` });
      }
    },
  },
});
echo.connector.pusher.connection.bind("connected", () => out({ on: "connected",
                                                               socket_id: echo.socketId() }));

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const cmd = JSON.parse(line);
  if (cmd.do === "listen") {
    echo.channel(cmd.channel).subscribed(() => out({ on: "subscribed", channel: cmd.channel }))
      .listen(cmd.event, (data) => out({ on: "event", channel: cmd.channel, data }));
  } else if (cmd.do === "private") {
    echo.private(cmd.channel)
      .subscribed(() => out({ on: "subscribed", channel: `private-${cmd.channel}` }))
      .listenForWhisper(cmd.whisper, (data) => out({ on: "whisper", channel: cmd.channel, data }));
  } else if (cmd.do === "join") {
    echo.join(cmd.channel)
      .here((users) => out({ on: "here", users }))
      .joining((u) => out({ on: "joining", user: u }))
      .leaving((u) => out({ on: "leaving", user: u }));
  } else if (cmd.do === "whisper") {
    echo.private(cmd.channel).whisper(cmd.event, cmd.data);
  } else if (cmd.do === "disconnect") {
    echo.disconnect();
    process.exit(0);
  }
});
process.stdin.on("end", () => process.exit(0));
