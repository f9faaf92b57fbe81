// The signaling session: one websocket, login, requests with their replies, events and relays
// (docs/protocol.md, "Transport", "Frames", "Session"). Reconnects after a lost connection and
// logs in again with the same credentials; the owner decides what the login reply means for
// its call (activeCall).

export const PROTOCOL_VERSION = "1.0";

/** A refused request: `code` and `message` as the server sent them (docs/protocol.md). */
export class CallError extends Error {
  constructor(code, message) {
    super(`${message} (${code})`);
    this.code = code;
    this.serverMessage = message;
  }
}

const REQUEST_TIMEOUT_MS = 10000;
const RETRY_DELAYS_MS = [250, 500, 1000, 2000, 3000];
// Closes after which logging in again is pointless: kicked out, userSig expired.
const FINAL_CLOSE_CODES = new Set([4001, 4003]);
// A cluster node closing because its call owner changed: reconnect at once (within 200 ms).
const SERVICE_RESTART = 1012;
// A refused login worth retrying: the cluster is electing its call owner (CLUSTER_UNAVAILABLE).
const RETRYABLE_LOGIN_CODES = new Set([4505]);

/**
 * Handlers: onEvent(name, data), onRelay(relay), onLoggedIn(reply, {reconnected}),
 * onDisconnected(code, reason), onGone(code, reason) when it will not reconnect.
 */
export class SignalingSession {
  constructor(url, handlers) {
    this.url = url;
    this.handlers = handlers;
    this.ws = null;
    this.nextId = 1;
    this.pending = new Map();
    this.credentials = null;
    this.loggedIn = false;
    this.closed = false;
    this.attempt = 0;
    this.retryTimer = null;
    this.reconnecting = false;
  }

  /** Connect and log in; resolves with the login reply's data, rejects with a CallError. */
  async login(credentials) {
    this.credentials = credentials;
    await this.open();
    const reply = await this.request("login", this.loginData());
    this.loggedIn = true;
    this.handlers.onLoggedIn?.(reply, { reconnected: false });
    return reply;
  }

  loginData() {
    const c = this.credentials;
    const data = {
      sdkAppId: c.sdkAppId, userID: c.userID, userSig: c.userSig,
      protocolVersion: PROTOCOL_VERSION, platform: "Web",
    };
    if (c.nickname) data.nickname = c.nickname;
    return data;
  }

  open() {
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new WebSocket(this.url);
      } catch (err) {
        reject(new CallError(-1, `cannot open ${this.url}: ${err.message}`));
        return;
      }
      this.ws = ws;
      let opened = false;
      ws.onopen = () => { opened = true; resolve(); };
      ws.onmessage = (message) => this.receive(message.data);
      ws.onclose = (close) => {
        if (!opened) reject(new CallError(-1, `cannot connect to ${this.url}`));
        this.lost(ws, close.code, close.reason);
      };
    });
  }

  /** Send a request; resolves with the reply's data, rejects with a CallError. */
  request(type, data = {}) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new CallError(-1, `${type}: not connected`));
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new CallError(-1, `${type}: no reply within ${REQUEST_TIMEOUT_MS / 1000} s`));
      }, REQUEST_TIMEOUT_MS);
      this.pending.set(id, { resolve, reject, timer, type });
      ws.send(JSON.stringify({ type, id, data }));
    });
  }

  receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      console.warn("ignoring a frame that is not JSON");
      return;
    }
    if (frame.type === "reply") {
      const waiter = this.pending.get(frame.id);
      if (!waiter) return;
      this.pending.delete(frame.id);
      clearTimeout(waiter.timer);
      if (frame.ok) waiter.resolve(frame.data || {});
      else waiter.reject(new CallError(frame.error.code, frame.error.message));
    } else if (frame.type === "event") {
      this.handlers.onEvent?.(frame.event, frame.data || {});
    } else if (frame.type === "relay") {
      this.handlers.onRelay?.(frame.data);
    }
    // Anything else: ignored (forward compatibility).
  }

  lost(ws, code, reason) {
    if (ws !== this.ws) return;
    this.ws = null;
    for (const waiter of this.pending.values()) {
      clearTimeout(waiter.timer);
      waiter.reject(new CallError(-1, `${waiter.type}: connection closed`));
    }
    this.pending.clear();
    const wasLoggedIn = this.loggedIn;
    if (this.closed || !wasLoggedIn || FINAL_CLOSE_CODES.has(code)) {
      this.loggedIn = false;
      if (wasLoggedIn) this.handlers.onGone?.(code, reason);
      return;
    }
    if (this.reconnecting) return; // relogin() is in progress and retries on failure
    this.reconnecting = true;
    this.handlers.onDisconnected?.(code, reason);
    this.scheduleRetry(code === SERVICE_RESTART ? Math.random() * 200 : undefined);
  }

  scheduleRetry(at) {
    const delay = at ?? RETRY_DELAYS_MS[Math.min(this.attempt, RETRY_DELAYS_MS.length - 1)];
    this.attempt += 1;
    this.retryTimer = setTimeout(() => this.relogin(), delay);
  }

  async relogin() {
    this.retryTimer = null;
    if (this.closed) return;
    try {
      await this.open();
      const reply = await this.request("login", this.loginData());
      this.attempt = 0;
      this.reconnecting = false;
      this.handlers.onLoggedIn?.(reply, { reconnected: true });
    } catch (err) {
      if (err instanceof CallError && err.code > 0 && !RETRYABLE_LOGIN_CODES.has(err.code)) {
        // Refused (a sig that expired meanwhile, ...): logging in again will not help.
        this.loggedIn = false;
        this.ws?.close();
        this.handlers.onGone?.(err.code, err.serverMessage);
        return;
      }
      this.ws?.close();
      this.ws = null;
      this.scheduleRetry();
    }
  }

  get connected() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN && this.loggedIn;
  }

  /** Log out (if logged in) and close for good. */
  async close() {
    if (this.closed) return;
    if (this.connected) {
      try { await this.request("logout"); } catch { /* closing anyway */ }
    }
    this.closed = true;
    this.loggedIn = false;
    clearTimeout(this.retryTimer);
    this.ws?.close(1000, "logout");
  }
}
