/*! pushsvc.js — the browser client for pushsvc (plain JavaScript, no build step).
 *
 *   <script src="/pushsvc.js"></script>
 *   <script>
 *     const push = new PushClient({user: "alice", groups: ["lobby"]});
 *     push.on("message", (msg) => console.log(msg.to, msg.data, msg.from));
 *     push.on("gap", (gap) => reloadFromTheApplication(gap.channels));
 *     push.connect().then(() => push.send({group: "lobby"}, {text: "hi"}));
 *   </script>
 *
 * What it does for you (docs/clients.md has the whole API):
 * - requests carry a `ref`; `auth`, `join`, `leave`, `send`, `ping`,
 *   `presence` and `resume` return Promises, resolved with the `ok` (or
 *   `pong`, `presence`) frame and rejected with a PushError for an `error`
 *   frame;
 * - a lost connection comes back by itself, after a jittered exponential
 *   backoff (0.5 s doubling to 30 s, ±50 %), authenticates again as before,
 *   joins its groups again, and sends `resume` with the last `pos` it got and
 *   the `epoch` of that `pos` (with Redis shards, the last `pos` of each
 *   shard): the messages missed meanwhile arrive in order, once; the
 *   channels the server could not fill in are told as a `gap`;
 * - `join(group, {token, data})` remembers a subscription token (or a
 *   function giving a fresh one for each join) and data for the re-joins; a
 *   group the server takes the session out of (`left` without `session`:
 *   "server", "destroyed", "token expired") is not joined again;
 * - it does not come back after close code 1008 (authentication refused) or
 *   4000 (kicked), unless told to (`reconnectOnKick`);
 * - a `ping` op after `pingInterval` ms of silence; no answer within
 *   `pingTimeout` ms drops the connection (and reconnects).
 *
 * Works as a classic <script> (it defines `PushClient` and `PushError` on the
 * global object) and under CommonJS (`require("./pushsvc.js")`).
 */
(function (root, factory) {
  "use strict";
  const api = factory();
  if (typeof module === "object" && module.exports) {
    module.exports = api;
  } else {
    root.PushClient = api.PushClient;
    root.PushError = api.PushError;
  }
})(typeof globalThis !== "undefined" ? globalThis : this, function () {
  "use strict";

  // Close codes after which the client stays closed (unless told otherwise).
  const POLICY = 1008;   // authentication refused or expired, sending too fast
  const KICKED = 4000;   // POST /api/kick
  const TRY_LATER = 1013;  // the server is full or we read too slowly: back off more

  const DEFAULTS = {
    url: null,            // default: ws(s)://<this page's host>/ws
    user: null,           // auth with a user name (servers with auth.mode = "none")
    token: null,          // auth with a token: a string, or a function returning one (or a Promise of one)
    groups: [],           // groups to join on connect (and again after each reconnect)
    reconnect: true,      // come back after a lost connection
    reconnectOnKick: false,  // also after close code 4000 (kicked)
    minDelay: 500,        // ms before the first reconnect attempt
    maxDelay: 30000,      // ms, the most the backoff grows to
    jitter: 0.5,          // each delay is multiplied by a random factor in [1 - jitter, 1 + jitter]
    pingInterval: 25000,  // ms of silence before a ping op
    pingTimeout: 10000,   // ms to wait for the answer before dropping the connection
    requestTimeout: 0,    // ms before a request's Promise is rejected (0: never; a lost connection rejects it anyway)
    resume: true,         // send resume after a reconnect
    WebSocket: null,      // the WebSocket class (default: the global one)
  };

  class PushError extends Error {
    /** An `error` frame from the server (`code`, `message`, `frame`), or a
     *  request that failed on the client side: code "disconnected" (the
     *  connection was lost before the answer; the request may or may not have
     *  been served), "closed" (close() was called), "timeout".  `group` names
     *  the group when it answers a join (null otherwise). */
    constructor(code, message, frame) {
      super(code + ": " + message);
      this.name = "PushError";
      this.code = code;
      this.frame = frame || null;
      this.group = null;
    }
  }

  // With Redis shards the welcome's epoch is the shards' epochs joined by
  // "~", a msg frame's pos counts on its "shard", and resume's since is one
  // position per shard (docs/protocol.md#resume-with-redis-shards).
  const SEPARATOR = "~";
  const RECENT_IDS = 1024;

  function fresh(epoch) {  // no position yet on each shard of `epoch`
    return new Array(epoch ? epoch.split(SEPARATOR).length : 1).fill(null);
  }

  function withResume(url) {
    const [base, hash] = url.split("#", 2);
    return base + (base.indexOf("?") >= 0 ? "&" : "?") + "resume=1" + (hash !== undefined ? "#" + hash : "");
  }

  function defaultUrl() {
    if (typeof location === "undefined") {
      throw new Error("PushClient: give a url (there is no page location to derive it from)");
    }
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
  }

  class PushClient {
    /** new PushClient(options) or new PushClient(url, options). */
    constructor(url, options) {
      if (typeof url === "object" && url !== null) {
        options = url;
        url = null;
      }
      this.options = Object.assign({}, DEFAULTS, options || {});
      this.url = url || this.options.url || defaultUrl();
      this.state = "idle";   // idle, connecting, open, ready, waiting, closed
      this.session = null;   // this connection's session id (from welcome)
      this.user = null;      // the user the session is bound to
      this.epoch = null;     // the server's history epoch (from welcome)
      this.positions = [null];  // the pos of the last message received per shard ...
      this.posEpoch = null;  // ... and the epoch they belong to
      this._recent = new Set();  // ids of the last RECENT_IDS kept messages
      this.groups = new Set(this.options.groups || []);
      this._joinOptions = new Map();  // group -> {token?, data?}, for the re-joins
      this.attempt = 0;      // reconnect attempts since the last ready
      this._credentials = null;
      if (this.options.token) this._credentials = {token: this.options.token};
      else if (this.options.user) this._credentials = {user: this.options.user};
      this._listeners = Object.create(null);
      this._ws = null;
      this._refs = 0;
      this._pending = new Map();   // ref -> {resolve, reject, timer}
      this._queue = [];            // requests waiting for the connection to be ready
      this._buffer = null;         // messages held while resuming
      this._seen = null;           // ids held while resuming
      this._retryTimer = null;
      this._pingTimer = null;
      this._lastSeen = 0;
      this._pinged = false;
      this._ready = [];            // connect() promises waiting for "ready"
      this._everReady = false;
    }

    // -- events --------------------------------------------------------------

    /** Listen to an event: message, welcome, gap, state, error, joined, left,
     *  resumed, frame.  Returns the listener.  `joined`/`left` frames with a
     *  `session` are member events; without, they are about this session. */
    on(event, listener) {
      (this._listeners[event] = this._listeners[event] || []).push(listener);
      return listener;
    }

    off(event, listener) {
      const list = this._listeners[event];
      if (list) this._listeners[event] = list.filter((l) => l !== listener);
    }

    once(event, listener) {
      const wrapper = (value) => {
        this.off(event, wrapper);
        listener(value);
      };
      return this.on(event, wrapper);
    }

    _emit(event, value) {
      for (const listener of (this._listeners[event] || []).slice()) {
        try {
          listener.call(this, value);
        } catch (e) {
          // A listener's mistake must not break the connection.
          setTimeout(() => { throw e; });
        }
      }
    }

    _setState(state, detail) {
      const previous = this.state;
      this.state = state;
      this._emit("state", Object.assign({state: state, previous: previous}, detail || {}));
    }

    // -- connecting ------------------------------------------------------------

    /** Open the connection (if it is not open); resolves once it is ready:
     *  welcomed, authenticated, in its groups and resumed. */
    connect() {
      if (this.state === "ready") return Promise.resolve(this);
      const p = new Promise((resolve, reject) => this._ready.push({resolve, reject}));
      if (this.state === "idle" || this.state === "closed") {
        this.attempt = 0;
        this._open();
      } else if (this.state === "waiting") {
        clearTimeout(this._retryTimer);
        this._open();
      }
      return p;
    }

    /** Close for good (no reconnect); pending requests are rejected. */
    close(code, reason) {
      clearTimeout(this._retryTimer);
      this._retryTimer = null;
      const ws = this._ws;
      this._detach();
      if (ws && ws.readyState <= 1) {
        try { ws.close(code || 1000, reason || ""); } catch (e) { ws.close(); }
      }
      this._failAll(new PushError("closed", "the client was closed"), true);
      if (this.state !== "closed") this._setState("closed", {code: code || 1000, reason: reason || ""});
    }

    _open() {
      const WS = this.options.WebSocket || (typeof WebSocket !== "undefined" ? WebSocket : null);
      if (!WS) throw new Error("PushClient: no WebSocket class; pass options.WebSocket");
      this._setState("connecting", {attempt: this.attempt});
      // Coming back: ?resume=1 has the server hold live messages until the
      // resume, so none comes before (or twice with) what the replay gives.
      const resuming = this.options.resume && this._everReady;
      let ws;
      try {
        ws = new WS(resuming ? withResume(this.url) : this.url);
      } catch (e) {          // a malformed url: trying again will not help
        this._emit("error", e);
        for (const waiter of this._ready.splice(0)) waiter.reject(e);
        this._failQueue(e);
        this._setState("closed", {code: 1006, reason: String(e && e.message || e)});
        return;
      }
      this._ws = ws;
      this._resuming = resuming;
      this._welcomed = false;
      ws.onopen = () => this._heartbeat();
      ws.onmessage = (event) => this._received(event.data);
      ws.onerror = () => {};  // onclose follows, with the code
      ws.onclose = (event) => {
        if (ws === this._ws) this._closed(event.code, event.reason);
      };
    }

    _detach() {
      const ws = this._ws;
      if (ws) ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      this._ws = null;
      clearInterval(this._pingTimer);
      this._pingTimer = null;
    }

    _closed(code, reason) {
      this._detach();
      this._failAll(new PushError("disconnected", "the connection closed with " + code +
                                  (reason ? ": " + reason : "")), false);
      const kicked = code === KICKED && !this.options.reconnectOnKick;
      if (!this.options.reconnect || code === POLICY || kicked) {
        const error = new PushError(code === POLICY ? "unauthorized" : kicked ? "kicked" : "closed",
                                    "closed with " + code + (reason ? ": " + reason : ""));
        for (const waiter of this._ready.splice(0)) waiter.reject(error);
        this._failQueue(error);
        this._setState("closed", {code: code, reason: reason});
        return;
      }
      // Jittered exponential backoff; "try again later" starts further out.
      if (code === TRY_LATER) this.attempt = Math.max(this.attempt, 3);
      const o = this.options;
      const base = Math.min(o.maxDelay, o.minDelay * Math.pow(2, this.attempt));
      const delay = Math.round(base * (1 + o.jitter * (2 * Math.random() - 1)));
      this.attempt += 1;
      this._setState("waiting", {code: code, reason: reason, delay: delay, attempt: this.attempt});
      this._retryTimer = setTimeout(() => {
        this._retryTimer = null;
        this._open();
      }, delay);
    }

    _heartbeat() {
      this._lastSeen = Date.now();
      this._pinged = false;
      clearInterval(this._pingTimer);
      const o = this.options;
      if (!(o.pingInterval > 0)) return;
      const tick = Math.max(100, Math.min(o.pingInterval, o.pingTimeout || o.pingInterval) / 2);
      this._pingTimer = setInterval(() => {
        const idle = Date.now() - this._lastSeen;
        if (this._pinged && idle >= o.pingInterval + o.pingTimeout) {
          // No answer: this connection is dead, whatever the socket says.
          const ws = this._ws;
          this._closed(1006, "no answer to ping");
          if (ws) try { ws.close(); } catch (e) { /* already closing */ }
        } else if (!this._pinged && idle >= o.pingInterval) {
          this._pinged = true;
          this._write({op: "ping"});
        }
      }, tick);
    }

    // -- frames ----------------------------------------------------------------

    _write(frame) {
      this._ws.send(JSON.stringify(frame));
    }

    _received(text) {
      this._lastSeen = Date.now();
      this._pinged = false;
      let frame;
      try {
        frame = JSON.parse(text);
      } catch (e) {
        this._emit("error", new PushError("bad_frame", "the server sent a frame that is not JSON"));
        return;
      }
      this._emit("frame", frame);
      switch (frame.op) {
        case "welcome":
          this.session = frame.session;
          this.user = frame.user;
          this.epoch = frame.epoch === undefined ? null : frame.epoch;
          // Until a kept message arrives, "where we stand" is the start of
          // the first history we saw.
          if (this.posEpoch === null && this.epoch !== null) {
            this.posEpoch = this.epoch;
            this.positions = fresh(this.epoch);
          }
          this._emit("welcome", frame);
          if (!this._welcomed) {
            this._welcomed = true;
            this._setState("open", {session: frame.session});
            this._restore();
          }
          break;
        case "msg":
          this._message(frame);
          break;
        case "joined":
        case "left":
          // Without "session": the server changed this session's groups (a
          // group it joined is joined again after a reconnect; one it left
          // is not).  With it: a member event, which changes nothing here.
          if (frame.session === undefined && typeof frame.group === "string") {
            if (frame.op === "joined") this.groups.add(frame.group);
            else this._forget(frame.group);
          }
          this._emit(frame.op, frame);
          break;
        default:
          break;
      }
      if (frame.ref !== undefined && frame.ref !== null && this._pending.has(frame.ref)) {
        const waiter = this._pending.get(frame.ref);
        this._pending.delete(frame.ref);
        clearTimeout(waiter.timer);
        if (frame.op === "error") waiter.reject(new PushError(frame.code, frame.message, frame));
        else waiter.resolve(frame);
      } else if (frame.op === "error") {
        this._emit("error", new PushError(frame.code, frame.message, frame));
      }
    }

    _message(frame) {
      if (this._buffer) {          // resuming: sorted and sent on once it is done
        this._buffer.push(frame);
        return;
      }
      this._deliver(frame);
    }

    /** The last pos received (with Redis shards: one per shard, null for none). */
    get lastPos() {
      return this.positions.length === 1 ? this.positions[0] : this.positions.slice();
    }

    _deliver(frame) {
      // A kept message (with a pos) whose id came lately was had (replayed,
      // or through another shard).  A pos at or below the last of its shard
      // with a new id is that shard's history numbering again (its Redis lost
      // its data): handed on, and the next resume hears of the gap.
      const shard = frame.shard === undefined ? 0 : frame.shard;
      if (typeof frame.pos === "number" && typeof shard === "number") {
        if (this.posEpoch !== this.epoch) {
          this.posEpoch = this.epoch;
          this.positions = fresh(this.epoch);
        }
        if (shard >= 0 && shard < this.positions.length) this.positions[shard] = frame.pos;
        if (this._recent.has(frame.id)) return;
        this._recent.add(frame.id);
        if (this._recent.size > RECENT_IDS) this._recent.delete(this._recent.values().next().value);
      }
      this._emit("message", frame);
    }

    // -- requests --------------------------------------------------------------

    _request(op, fields, now) {
      return new Promise((resolve, reject) => {
        const item = {op: op, fields: fields || {}, resolve: resolve, reject: reject};
        if (this.state === "closed" && !now) {
          reject(new PushError("closed", "the client is closed: call connect() first"));
        } else if (now || this.state === "ready") {
          this._send(item);
        } else {
          this._queue.push(item);  // sent once the connection is ready
          if (this.state === "idle") this.connect().catch(() => {});
        }
      });
    }

    _send(item) {
      if (!this._ws || this._ws.readyState !== 1) {
        item.reject(new PushError("disconnected", "not connected"));
        return;
      }
      const ref = ++this._refs;
      const waiter = {resolve: item.resolve, reject: item.reject, timer: null};
      if (this.options.requestTimeout > 0) {
        waiter.timer = setTimeout(() => {
          if (this._pending.delete(ref)) {
            item.reject(new PushError("timeout", "no answer to " + item.op + " within " +
                                      this.options.requestTimeout + " ms"));
          }
        }, this.options.requestTimeout);
      }
      this._pending.set(ref, waiter);
      this._write(Object.assign({op: item.op, ref: ref}, item.fields));
    }

    _failAll(error, queueToo) {
      const pending = Array.from(this._pending.values());
      this._pending.clear();
      for (const waiter of pending) {
        clearTimeout(waiter.timer);
        waiter.reject(error);
      }
      if (queueToo) {
        this._failQueue(error);
        for (const waiter of this._ready.splice(0)) waiter.reject(error);
      }
    }

    _failQueue(error) {
      for (const item of this._queue.splice(0)) item.reject(error);
    }

    /** Bind the session to a user: auth({user}) or auth({token}); kept for
     *  reconnects.  Resolves with the ok frame. */
    auth(credentials) {
      const fields = credentials.token !== undefined ? {token: credentials.token} : {user: credentials.user};
      return this._resolveToken(fields).then((resolved) =>
        this._request("auth", resolved).then((ok) => {
          this._credentials = fields;
          return ok;
        }));
    }

    /** Join a group; it is joined again after each reconnect, with the same
     *  options (a later join of the group replaces those it gives):
     *  `token`, a subscription token for the group or a function returning
     *  one (or a Promise of one), called for each join: a fresh token on each
     *  reconnect; `data`, any JSON for the backend or the application's
     *  on_join.  Resolves with the ok frame; a refusal rejects with a
     *  PushError whose `group` names the group. */
    join(group, options) {
      const given = {};
      if (options && options.token !== undefined && options.token !== null) given.token = options.token;
      if (options && options.data !== undefined) given.data = options.data;
      return this._joinFields(group, given)
        .then((fields) => this._request("join", fields))
        .then((ok) => {
          this.groups.add(group);
          if (Object.keys(given).length) {
            this._joinOptions.set(group, Object.assign({}, this._joinOptions.get(group), given));
          }
          return ok;
        }, (error) => {
          if (error instanceof PushError && error.group === null) error.group = group;
          throw error;
        });
    }

    /** Leave a group (and stop joining it after reconnects). */
    leave(group) {
      return this._request("leave", {group: group}).then((ok) => {
        this._forget(group);
        return ok;
      });
    }

    /** Who is in a group (a member's question, where its namespace has
     *  presence on); resolves with the presence frame: {op, ref, group,
     *  sessions, anonymous, users: {name: {sessions, data?}}, more?}. */
    presence(group) {
      return this._request("presence", {group: group});
    }

    _forget(group) {
      this.groups.delete(group);
      this._joinOptions.delete(group);
    }

    /** Send `data` to an address ({group: "g"}, {user: "u"}, ...); resolves
     *  with the message id. */
    send(to, data) {
      return this._request("send", {to: to, data: data === undefined ? null : data})
        .then((ok) => ok.id);
    }

    /** An application-level ping; resolves with the pong frame. */
    ping() {
      return this._request("ping", {});
    }

    // -- (re)storing a connection -------------------------------------------------

    _resolveToken(fields) {
      if (typeof fields.token === "function") {
        return Promise.resolve().then(() => fields.token())
          .then((token) => Object.assign({}, fields, {token: token}));
      }
      return Promise.resolve(fields);
    }

    _joinFields(group, options) {
      return this._resolveToken(Object.assign({group: group}, options || {}));
    }

    _restore() {
      const ws = this._ws;
      const resuming = this._resuming;
      // While resuming, messages are held, then sorted and sent on without
      // duplicates (a message can arrive live after a join and in the replay).
      this._buffer = resuming ? [] : null;
      let chain = Promise.resolve();
      if (this._credentials) {
        chain = this._resolveToken(this._credentials)
          .then((fields) => this._request("auth", fields, true));
      }
      chain = chain.then(() => Promise.all(Array.from(this.groups).map((group) =>
        this._joinFields(group, this._joinOptions.get(group))
          .then((fields) => this._request("join", fields, true))
          .catch((e) => {
            if (e && e.code === "disconnected") throw e;
            // Refused now (or its token function failed): no longer one of
            // ours, and said so.
            this._forget(group);
            if (e instanceof PushError) e.group = group;
            this._emit("error", e);
          }))));
      if (resuming) {
        chain = chain.then(() => this._resume());
      }
      chain.then(() => {
        if (ws !== this._ws) return;
        this.attempt = 0;
        this._everReady = true;
        this._setState("ready", {session: this.session});
        for (const waiter of this._ready.splice(0)) waiter.resolve(this);
        for (const item of this._queue.splice(0)) this._send(item);
      }, (error) => {
        if (ws !== this._ws) return;
        this._flushBuffer();
        if (error.code !== "disconnected") this._emit("error", error);
        // An auth refused closes with 1008 from the server: _closed decides.
      });
    }

    _resume() {
      // With no kept message yet: from the start of the first history seen
      // (a server without history, ttl = 0, answers with every channel a gap).
      const positions = this.positions.map((pos) => pos || 0);
      const since = positions.length === 1 ? positions[0] : positions;
      const epoch = this.posEpoch !== null ? this.posEpoch : (this.epoch || "");
      const epochChanged = epoch !== this.epoch;
      return this._request("resume", {since: since, epoch: epoch}, true).then((ok) => {
        if (epochChanged) {        // positions in a shard's old history mean nothing now
          const old = epoch.split(SEPARATOR);
          const now = (this.epoch || "").split(SEPARATOR);
          this.positions = old.length === now.length && now.length === this.positions.length
            ? this.positions.map((pos, i) => (old[i] === now[i] ? pos : null))
            : fresh(this.epoch);
          this.posEpoch = this.epoch;
        }
        this._flushBuffer();
        const info = {since: since, epoch: epoch, replayed: ok.replayed, gaps: ok.gaps || [],
                      epochChanged: epochChanged};
        const unavailable = ok.unavailable || [];
        if (unavailable.length) info.unavailable = unavailable;
        this._emit("resumed", info);
        if (info.gaps.length || unavailable.length) {
          const gap = {channels: Array.from(new Set(info.gaps.concat(unavailable))).sort(),
                       epochChanged: epochChanged, since: since};
          if (unavailable.length) gap.unavailable = unavailable;
          this._emit("gap", gap);
        }
      }, (error) => {
        if (error.code === "disconnected") throw error;
        this._flushBuffer();
        this._emit("error", error);
        this._emit("gap", {channels: null, epochChanged: epochChanged, since: since,
                           error: error});
      });
    }

    _flushBuffer() {
      const held = this._buffer;
      this._buffer = null;
      if (!held || !held.length) return;
      // A message can come live (after a join) and again in the replay: keep
      // one of each, kept ones in pos order, then those without a pos.
      const seen = new Set();
      const kept = [];
      const unkept = [];
      for (const frame of held) {
        if (seen.has(frame.id)) continue;
        seen.add(frame.id);
        (typeof frame.pos === "number" ? kept : unkept).push(frame);
      }
      // With Redis shards the server's order is kept: positions of two
      // shards do not compare.
      if (!kept.some((frame) => frame.shard !== undefined)) kept.sort((a, b) => a.pos - b.pos);
      for (const frame of kept.concat(unkept)) this._deliver(frame);
    }
  }

  PushClient.DEFAULTS = DEFAULTS;
  return {PushClient: PushClient, PushError: PushError};
});
