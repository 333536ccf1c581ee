// One pusher-js client driven by commands, for Node (client.js) and for a
// page in Chromium (browser.js): drive(Pusher, port, key, sign, out) connects
// and returns handle(command).  sign(text) gives the app's signature of text
// (or a promise of it): the test's secret plays the app's backend.
//
//   commands: {"do":"subscribe","channel":C,"user":U,"info":I}  (U, I: presence)
//             {"do":"unsubscribe","channel":C}
//             {"do":"whisper","channel":C,"event":E,"data":D}   (a client-* event)
//             {"do":"signin","user":U}   {"do":"disconnect"}
//   out(...): {"on":"connected","socket_id":S} {"on":"subscribed","channel":C,"members":M}
//             {"on":"event","channel":C,"event":E,"data":D,"user_id":U}
//             {"on":"member_added"|"member_removed","channel":C,"id":U,"info":I}
//             {"on":"subscription_error","channel":C,"error":..} {"on":"error","error":..}
//             {"on":"signed_in"} {"on":"state","current":..} {"on":"closed"}
"use strict";
function drive(Pusher, port, key, sign, out) {
  const members = {};  // presence channel -> {user, info}: who this client says it is
  let signinUser = null;
  const signed = (text, then) => Promise.resolve(sign(text)).then(then);

  const pusher = new Pusher(key, {
    wsHost: "127.0.0.1", wsPort: Number(port), forceTLS: false, enabledTransports: ["ws"],
    cluster: "local", enableStats: false,
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        const member = members[channelName];
        if (member) {
          const channel_data = JSON.stringify({ user_id: member.user, user_info: member.info });
          signed(`${socketId}:${channelName}:${channel_data}`,
                 (sig) => callback(null, { auth: `${key}:${sig}`, channel_data }));
        } else if (channelName.startsWith("private-bad-")) {
          callback(null, { auth: `${key}:${"0".repeat(64)}` });
        } else {
          signed(`${socketId}:${channelName}`, (sig) => callback(null, { auth: `${key}:${sig}` }));
        }
      },
    },
    userAuthentication: {
      customHandler: ({ socketId }, callback) => {
        const user_data = JSON.stringify({ id: signinUser });
        signed(`${socketId}::user::${user_data}`,
               (sig) => callback(null, { auth: `${key}:${sig}`, user_data }));
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
      let listed = null;
      if (m && m.each) {
        listed = {};
        m.each((x) => { listed[x.id] = x.info; });
      }
      out({ on: "subscribed", channel: cmd.channel, members: listed });
    });
    channel.bind("pusher:subscription_error", (e) => out({ on: "subscription_error",
                                                            channel: cmd.channel, error: e }));
    channel.bind("pusher:member_added", (m) => out({ on: "member_added", channel: cmd.channel,
                                                     id: m.id, info: m.info }));
    channel.bind("pusher:member_removed", (m) => out({ on: "member_removed",
                                                       channel: cmd.channel, id: m.id }));
  }

  return function handle(cmd) {
    if (cmd.do === "subscribe") subscribe(cmd);
    else if (cmd.do === "unsubscribe") pusher.unsubscribe(cmd.channel);
    else if (cmd.do === "whisper") {
      out({ on: "whispered", ok: pusher.channel(cmd.channel).trigger(cmd.event, cmd.data) });
    } else if (cmd.do === "signin") { signinUser = cmd.user; pusher.signin(); }
    else if (cmd.do === "disconnect") { pusher.disconnect(); out({ on: "closed" }); }
  };
}

if (typeof module !== "undefined") module.exports = drive;
