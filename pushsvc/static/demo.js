/* The demo page at / : pick a name, join a group, send, see the messages and
 * who is online.  It uses pushsvc.js as any page would.
 *
 * "Who is online" is learnt from the group itself: a member says hello when
 * it joins (and after each reconnect), the others answer "here", and a member
 * that leaves says goodbye.  (The server's member list, GET /api/groups/G,
 * may need an API key, which never belongs in a browser.)
 *
 * ?name=alice&group=lobby on the URL joins at once.
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
  const PRESENCE = "pushsvc-demo-presence";

  let client = null;
  let group = null;
  let name = null;
  const members = new Map();  // session id -> user name

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
    const names = new Set(members.values());
    online.textContent = "";
    for (const who of Array.from(names).sort()) {
      const li = document.createElement("li");
      li.textContent = who;
      if (who === name) li.className = "me";
      online.appendChild(li);
    }
  }

  function presence(state) {
    if (!client || !group) return Promise.resolve();
    return client.send({group: group}, {type: PRESENCE, state: state, name: name})
      .catch((e) => system("could not announce: " + e.message));
  }

  function onPresence(msg) {
    const session = msg.from && msg.from.session;
    if (!session) return;
    const who = (msg.from.user || msg.data.name || "?").toString();
    if (msg.data.state === "bye") {
      members.delete(session);
    } else {
      members.set(session, who);
      if (msg.data.state === "hello" && session !== client.session) presence("here");
    }
    renderOnline();
  }

  function onMessage(msg) {
    if (msg.data && msg.data.type === PRESENCE) {
      onPresence(msg);
      return;
    }
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
    if (ready) {
      members.set(client.session, name);
      renderOnline();
      presence("hello");
    }
  }

  function join(newName, newGroup) {
    if (client) client.close();
    name = newName;
    group = newGroup;
    members.clear();
    messages.textContent = "";
    $("#group-name").textContent = "in " + group;
    client = new PushClient(wsUrl.href, {user: name, groups: [group]});
    window.demo.client = client;
    client.on("state", setState);
    client.on("message", onMessage);
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
    return client.connect().then(() => system("joined " + group),
                                 (e) => system("could not connect: " + e.message, "gap"));
  }

  function leave() {
    if (!client) return;
    const c = client;
    presence("bye").then(() => c.close());
    client = null;
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
  window.addEventListener("pagehide", () => { if (client && client.state === "ready") presence("bye"); });

  window.demo = {client: null, join: join, leave: leave, members: members};

  const params = new URLSearchParams(location.search);
  if (params.get("name")) {
    join(params.get("name"), params.get("group") || "lobby");
  }
})();
