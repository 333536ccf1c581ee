/* The demo page at / : pick a name, join a group, send, see the messages and
 * who is online.  It uses pushsvc.js as any page would.
 *
 * "Who is online" comes from the server: the page asks `presence` once it is
 * in the group (and again after each reconnect: events are not replayed),
 * then every few seconds while no member event has come.  Where the group's
 * namespace has `events = true`, the `joined`/`left` frames arrive by
 * themselves (the page's own join first): from the first one on, the page
 * applies them as they come and stops asking.
 *
 * ?name=alice&group=lobby on the URL joins at once; &poll=SECONDS sets how
 * often presence is asked while there are no events (default 5).
 */
(function () {
  "use strict";

  const $ = (selector) => document.querySelector(selector);
  const joinForm = $("#join");
  const sendForm = $("#send");
  const messages = $("#messages");
  const online = $("#online");
  const stateBadge = $("#state");
  const leaveButton = $("#leave-button");
  const onlineHint = $("#online-hint");
  const params = new URLSearchParams(location.search);
  const POLL = Math.max(0.5, Number(params.get("poll")) || 5) * 1000;  // ms

  let client = null;
  let group = null;
  let name = null;
  const members = new Map();  // user name (or "" for anonymous ones) -> sessions
  const presence = {
    live: false,       // member events are coming: no more polling
    timer: null,       // the polling interval
    asking: false,     // a presence request is out ...
    again: false,      // ... and an event came meanwhile: ask once more after it
    off: false,        // the namespace has presence off
  };

  // The WebSocket beside this page: ws://host/ws (or under the same prefix).
  const wsUrl = new URL("ws", location.href);
  wsUrl.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  wsUrl.search = "";

  function time() {
    return new Date().toTimeString().slice(0, 8);
  }

  function line(cls, who, text) {
    const li = document.createElement("li");
    li.className = cls;
    const t = document.createElement("span");
    t.className = "time";
    t.textContent = time();
    li.appendChild(t);
    if (who !== null) {
      const w = document.createElement("span");
      w.className = "who";
      w.textContent = who;
      li.appendChild(w);
    }
    li.appendChild(document.createTextNode(text));
    const atBottom = messages.scrollTop + messages.clientHeight >= messages.scrollHeight - 5;
    messages.appendChild(li);
    if (atBottom) messages.scrollTop = messages.scrollHeight;
    return li;
  }

  function system(text, cls) {
    return line("system" + (cls ? " " + cls : ""), null, text);
  }

  function describe(data) {
    if (typeof data === "string") return data;
    if (data && typeof data.text === "string") return data.text;
    return JSON.stringify(data);
  }

  function renderOnline() {
    online.textContent = "";
    const names = Array.from(members.keys()).filter((who) => who !== "").sort();
    for (const who of names) {
      const li = document.createElement("li");
      li.dataset.user = who;
      li.textContent = who;
      const count = members.get(who);
      if (count > 1) {
        const n = document.createElement("span");
        n.className = "count";
        n.textContent = "\u00d7" + count;  // alice ×2: two tabs or devices
        li.appendChild(n);
      }
      if (who === name) li.className = "me";
      online.appendChild(li);
    }
    if (members.get("")) {
      const li = document.createElement("li");
      li.className = "anonymous";
      li.textContent = members.get("") + " anonymous";
      online.appendChild(li);
    }
    onlineHint.textContent = !client ? "" :
      !client.groups.has(group) ? "You are not in this group." :
      presence.off ? "Presence is off for this group." :
      presence.live ? "Live: the server tells the members who joins and leaves." :
      "Asked from the server every " + POLL / 1000 + " s (member events are off here).";
  }

  /** Ask the server who is in the group; the answer replaces what we knew. */
  function askPresence() {
    if (!client || client.state !== "ready" || presence.off || !client.groups.has(group)) return;
    if (presence.asking) {
      presence.again = true;
      return;
    }
    const c = client;
    presence.asking = true;
    presence.again = false;
    c.presence(group).then((reply) => {
      if (c !== client) return;
      members.clear();
      for (const [who, entry] of Object.entries(reply.users)) members.set(who, entry.sessions);
      if (reply.anonymous) members.set("", reply.anonymous);
      renderOnline();
    }, (e) => {
      if (c !== client) return;
      if (e.code === "forbidden" && c.groups.has(group)) {  // a namespace with presence = false
        presence.off = true;
        stopPolling();
        renderOnline();
      }                              // disconnected: asked again once ready
    }).then(() => {
      if (c !== client) return;  // another group since: its own state
      presence.asking = false;
      if (presence.again) askPresence();
    });
  }

  function startPolling() {
    if (presence.timer === null && !presence.live && !presence.off) {
      presence.timer = setInterval(askPresence, POLL);
    }
  }

  function stopPolling() {
    clearInterval(presence.timer);
    presence.timer = null;
  }

  /** A joined/left frame: a member event (with `session`), or news about us. */
  function onMember(frame) {
    if (frame.group !== group) return;
    if (frame.session === undefined) {  // this session: the server joined or removed it
      if (frame.op === "left") {
        system("the server took you out of " + group + " (" + frame.reason + ")", "gap");
        stopPolling();
        members.clear();
        renderOnline();
      } else {
        system("the server joined you to " + group);
        askPresence();
        startPolling();
      }
      return;
    }
    if (!presence.live) {               // events are on: apply them, stop polling
      presence.live = true;
      stopPolling();
    }
    const who = frame.user || "";
    const count = (members.get(who) || 0) + (frame.op === "joined" ? 1 : -1);
    if (count > 0) members.set(who, count);
    else members.delete(who);
    if (frame.session !== client.session) {
      system((frame.user || "someone anonymous") + (frame.op === "joined" ? " joined" : " left"),
             "member");
    }
    // An answer on its way may or may not count this event: ask once more.
    if (presence.asking) presence.again = true;
    renderOnline();
  }

  function onMessage(msg) {
    const from = msg.from ? (msg.from.user || "anonymous") : "server";
    const li = line(msg.from ? "client" : "server", from, describe(msg.data));
    li.dataset.id = msg.id;
    if (msg.pos !== undefined) li.dataset.pos = msg.pos;
  }

  function setState(event) {
    stateBadge.dataset.state = event.state;
    let text = event.state;
    if (event.state === "waiting") {
      text = "reconnecting in " + (event.delay / 1000).toFixed(1) + " s";
      system("connection lost (" + event.code + (event.reason ? ": " + event.reason : "") +
             "); reconnecting in " + (event.delay / 1000).toFixed(1) + " s");
    } else if (event.state === "closed" && event.code && event.code !== 1000) {
      system("closed (" + event.code + (event.reason ? ": " + event.reason : "") + ")", "gap");
    }
    stateBadge.textContent = text;
    $("#session").textContent = client && client.session && event.state === "ready" ? client.session : "";
    const ready = event.state === "ready";
    sendForm.text.disabled = !ready;
    $("#send-button").disabled = !ready;
    if (ready) askPresence();  // each time: events missed while away are not replayed
  }

  function join(newName, newGroup) {
    if (client) client.close();
    name = newName;
    group = newGroup;
    members.clear();
    stopPolling();
    Object.assign(presence, {live: false, asking: false, again: false, off: false});
    messages.textContent = "";
    $("#group-name").textContent = "in " + group;
    client = new PushClient(wsUrl.href, {user: name, groups: [group]});
    window.demo.client = client;
    renderOnline();
    client.on("state", setState);
    client.on("message", onMessage);
    client.on("joined", onMember);
    client.on("left", onMember);
    client.on("welcome", (w) => { if (w.user) system("signed in as " + w.user); });
    client.on("resumed", (r) => {
      system("back: " + r.replayed + " missed message" + (r.replayed === 1 ? "" : "s") +
             " replayed" + (r.gaps.length ? ", something was lost" : ""), "resumed");
    });
    client.on("gap", (gap) => {
      system("some messages could not be replayed (" +
             (gap.channels ? gap.channels.join(", ") : "history unavailable") + ")", "gap");
    });
    client.on("error", (e) => system("error: " + e.message, "gap"));
    joinForm.name.value = name;
    joinForm.group.value = group;
    leaveButton.disabled = false;
    const c = client;
    return client.connect().then(() => {
      system("joined " + group);
      if (c === client) startPolling();
    }, (e) => system("could not connect: " + e.message, "gap"));
  }

  function leave() {
    if (!client) return;
    client.close();   // the others hear it as a left event, or at their next presence
    client = null;
    stopPolling();
    members.clear();
    renderOnline();
    leaveButton.disabled = true;
    system("left " + group);
  }

  joinForm.addEventListener("submit", (event) => {
    event.preventDefault();
    join(joinForm.name.value.trim(), joinForm.group.value.trim());
  });
  leaveButton.addEventListener("click", leave);
  sendForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = sendForm.text.value;
    if (!text || !client) return;
    sendForm.text.value = "";
    client.send({group: group}, {text: text})
      .catch((e) => system("not sent: " + e.message, "gap"));
  });
  window.demo = {client: null, join: join, leave: leave, members: members, presence: presence};

  if (params.get("name")) {
    join(params.get("name"), params.get("group") || "lobby");
  }
})();
