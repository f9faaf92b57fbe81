// The SFU transport: the call's media through a Janus VideoRoom, for a call the server put in
// one (`SFU_ROOM`; docs/protocol.md, "Group media through an SFU"). It has the mesh
// transport's shape (mesh.js) and, with Janus's HTTP API (long poll, from the page):
//
//   1. creates a session at the room's `url` and attaches janus.plugin.videoroom twice;
//   2. joins the room as a publisher (`room`, `pin`, `token`, `display` = our user id) and
//      `configure`s with an offer of one audio and one video track (sendonly);
//   3. on the second handle joins as a subscriber (`private_id` of the publisher join) to the
//      feeds of the members it was told about (add), answering Janus's offer with `start`;
//      `subscribe` / `unsubscribe` as members come and go, one connection for all feeds.
//
// A member's stream is made of the subscriber's tracks whose Janus stream has their user id
// as `feed_display`. A room with a higher `epoch` (move) or a lost session starts over:
// both connections closed, published and subscribed again; nobody left the call.

const NO_ROOM = 426; // the server creates the room while SFU_ROOM travels
const UNAUTHORIZED = 433; // ... and adds our token
const JOIN_RETRY_MS = 8000;
const JOIN_RETRY_INTERVAL_MS = 200;
const REQUEST_TIMEOUT_MS = 10000;
const KEEPALIVE_MS = 15000;
const RESTART_DELAY_MS = 500;
const GATHER_TIMEOUT_MS = 5000;

export class JanusError extends Error {
  constructor(message, code = 0) {
    super(code ? `${message} (Janus ${code})` : message);
    this.code = code;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function transactionId() {
  return Math.random().toString(36).slice(2) + Date.now().toString(36);
}

/** One Janus session over HTTP: requests, and the events read by long poll. */
class JanusSession {
  constructor(rootUrl) {
    this.rootUrl = rootUrl.replace(/\/+$/, "");
    this.url = "";
    this.waiting = new Map(); // transaction -> {resolve, reject}
    this.handlers = new Map(); // handle id -> (data, jsep) for events nobody waits for
    this.onLost = null;
    this.closed = false;
    this.lost = false;
    this.keepalive = null;
    this.abort = new AbortController();
  }

  async post(url, message) {
    if (this.closed) throw new JanusError("session closed");
    const body = { transaction: transactionId(), ...message };
    let reply;
    try {
      const response = await fetch(url, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body), signal: AbortSignal.any([
          this.abort.signal, AbortSignal.timeout(REQUEST_TIMEOUT_MS)]),
      });
      reply = await response.json();
    } catch (err) {
      throw new JanusError(`${url}: ${err.message || err}`);
    }
    if (reply.janus === "error") {
      throw new JanusError(String(reply.error?.reason), Number(reply.error?.code || 0));
    }
    return reply;
  }

  async create() {
    const created = await this.post(this.rootUrl, { janus: "create" });
    this.url = `${this.rootUrl}/${created.data.id}`;
    this.poll();
    this.keepalive = setInterval(() => {
      this.post(this.url, { janus: "keepalive" }).catch((err) => this.lose(String(err)));
    }, KEEPALIVE_MS);
  }

  async attach(onEvent) {
    const attached = await this.post(this.url, {
      janus: "attach", plugin: "janus.plugin.videoroom" });
    const id = attached.data.id;
    this.handlers.set(String(id), onEvent);
    return id;
  }

  /** A plugin message on `handle`: its answer `{data, jsep}` (a JanusError on error_code). */
  async request(handle, body, jsep = null) {
    const transaction = transactionId();
    const answered = new Promise((resolve, reject) => {
      this.waiting.set(transaction, { resolve, reject });
    });
    answered.catch(() => {}); // observed below, or moot when the reply is synchronous
    let result;
    try {
      const reply = await this.post(`${this.url}/${handle}`, {
        janus: "message", transaction, body, ...(jsep && { jsep }) });
      if (reply.janus === "success") {
        result = { data: reply.plugindata?.data ?? {}, jsep: reply.jsep ?? null };
      } else {
        let timer;
        const timeout = new Promise((_, reject) => {
          timer = setTimeout(() => reject(new JanusError(`${body.request}: no answer`)),
                             REQUEST_TIMEOUT_MS);
        });
        try {
          result = await Promise.race([answered, timeout]);
        } finally {
          clearTimeout(timer);
        }
      }
    } finally {
      this.waiting.delete(transaction);
    }
    if (result.data.error_code) {
      throw new JanusError(`${body.request}: ${result.data.error}`, result.data.error_code);
    }
    return result;
  }

  async poll() {
    while (!this.closed) {
      let messages;
      try {
        const response = await fetch(`${this.url}?maxev=10&rid=${Date.now()}`, {
          signal: this.abort.signal, cache: "no-store" });
        messages = await response.json();
      } catch (err) {
        this.lose(String(err));
        return;
      }
      for (const message of Array.isArray(messages) ? messages : [messages]) {
        if (message?.janus === "error") {
          this.lose(String(message.error?.reason));
          return;
        }
        this.dispatch(message);
      }
    }
  }

  dispatch(message) {
    if (message?.janus !== "event") return; // keepalive, ack, webrtcup, media, hangup...
    const data = message.plugindata?.data ?? {};
    const jsep = message.jsep ?? null;
    const waiter = this.waiting.get(message.transaction);
    if (waiter) {
      this.waiting.delete(message.transaction);
      waiter.resolve({ data, jsep });
      return;
    }
    try {
      this.handlers.get(String(message.sender))?.(data, jsep);
    } catch (err) {
      console.warn("janus event handler failed:", err);
    }
  }

  lose(why) {
    if (this.lost || this.closed) return;
    this.lost = true;
    console.info(`janus session ${this.url} lost: ${why}`);
    for (const waiter of this.waiting.values()) waiter.reject(new JanusError(`session lost: ${why}`));
    this.waiting.clear();
    this.onLost?.();
  }

  /** Destroy the session (best effort) and stop reading. Idempotent. */
  destroy() {
    if (this.closed) return;
    const destroy = this.url && !this.lost
      ? this.post(this.url, { janus: "destroy" }).catch(() => {}) : Promise.resolve();
    this.closed = true;
    clearInterval(this.keepalive);
    for (const waiter of this.waiting.values()) waiter.reject(new JanusError("session closed"));
    this.waiting.clear();
    destroy.finally(() => this.abort.abort());
  }
}

/** Wait until `pc` gathered its candidates (Janus gets complete SDP; no trickle). */
function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== "complete") return;
      pc.removeEventListener("icegatheringstatechange", done);
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      pc.removeEventListener("icegatheringstatechange", done);
      resolve(); // send what was gathered: a slow STUN/TURN server must not stall the call
    }, GATHER_TIMEOUT_MS);
    pc.addEventListener("icegatheringstatechange", done);
  });
}

/** What the page knows of one member of an SFU call (the mesh's Peer has the same `pc`). */
class Feed {
  constructor(transport, userId) {
    this.transport = transport;
    this.userId = userId;
    this.stream = new MediaStream();
  }

  /** The subscriber connection, once it carries this member's feed. */
  get pc() {
    return this.transport.carries(this.userId) ? this.transport.subscriber : null;
  }
}

export class SfuTransport {
  /** `room` is the SFU_ROOM event's data; `local` the LocalMedia whose tracks are sent. */
  constructor({ localId, room, iceServers = [], local }) {
    this.localId = localId;
    this.room = room;
    this.iceServers = iceServers;
    this.local = local;
    this.kind = "sfu";
    this.peers = new Map(); // userId -> Feed: the members we subscribe to
    this.onStream = null;
    this.onConnectionState = null;
    this.onError = null;
    this.publisher = null; // RTCPeerConnection
    this.subscriber = null;
    this.session = null;
    this.subscriberHandle = null;
    this.privateId = null;
    this.feeds = new Map(); // userId -> Janus feed (publisher) id
    this.subscribed = new Set(); // feed ids in the subscriber connection
    this.midUser = new Map(); // subscriber mid -> userId whose track it carries
    this.chain = Promise.resolve(); // one subscriber negotiation at a time
    this.generation = 0; // a round of publish + subscribe, in one room
    this.endRound = null; // ends the current round (it starts over unless closed)
    this.closed = false;
    this.run();
  }

  get streams() {
    return new Map([...this.peers].map(([user, feed]) => [user, feed.stream]));
  }

  /** userId -> the connection their media arrives on (shared), for members it carries. */
  connections() {
    const result = new Map();
    for (const userId of this.peers.keys()) {
      if (this.carries(userId)) result.set(userId, this.subscriber);
    }
    return result;
  }

  carries(userId) {
    return this.subscriber !== null && [...this.midUser.values()].includes(userId);
  }

  /** Statistics of what arrives from `userId` (its receivers) and of what we publish. */
  async statsFor(userId) {
    const merged = new Map();
    const reports = [];
    for (const transceiver of this.subscriber?.getTransceivers() ?? []) {
      if (this.midUser.get(transceiver.mid) === userId) reports.push(transceiver.receiver.getStats());
    }
    for (const sender of this.publisher?.getSenders() ?? []) {
      if (sender.track) reports.push(sender.getStats());
    }
    for (const report of await Promise.all(reports)) {
      for (const [id, stats] of report) merged.set(id, stats);
    }
    return merged;
  }

  // ------------------------------------------------------------------ the mesh's methods

  add(userId) {
    if (userId === this.localId) return null;
    let feed = this.peers.get(userId);
    if (!feed) {
      feed = new Feed(this, userId);
      this.peers.set(userId, feed);
      this.reconcile();
    }
    return feed;
  }

  remove(userId) {
    if (!this.peers.delete(userId)) return;
    this.reconcile();
  }

  relay() {
    // Nothing is relayed in an SFU call.
  }

  /** The camera or microphone changed: the publisher sends the current tracks. */
  localTracksChanged() {
    for (const transceiver of this.publisher?.getTransceivers() ?? []) {
      const kind = transceiver.receiver.track.kind;
      const track = kind === "audio" ? this.local.audioTrack : this.local.videoTrack;
      if (transceiver.currentDirection === "stopped") continue;
      if (transceiver.sender.track !== track) {
        transceiver.sender.replaceTrack(track).catch(
          (err) => console.warn(`cannot publish the ${kind} track:`, err));
      }
    }
  }

  /** The call moved to another room (a higher epoch): publish and subscribe there. */
  move(room) {
    if (this.closed || !(room.epoch > this.room.epoch)) return;
    console.info(`call moved to room ${room.room} on ${room.url}`);
    this.room = room;
    this.endRound?.("moved");
  }

  close() {
    this.closed = true;
    this.endRound?.("closed");
    this.teardown();
    this.peers.clear();
  }

  // ------------------------------------------------------------------ rounds

  async run() {
    while (!this.closed) {
      const room = this.room;
      const session = new JanusSession(room.url);
      // The round is over when the session is lost, or (endRound) the call moved, a
      // connection failed or the transport closed: then the session is destroyed at Janus.
      let why = null;
      const over = new Promise((resolve) => {
        session.onLost = () => resolve("session lost");
        this.endRound = (reason) => resolve(reason);
      }).then((reason) => { why = reason; });
      this.session = session;
      const generation = ++this.generation;
      try {
        await Promise.race([this.round(session, room, generation).then(() => over), over]);
        if (why !== "closed" && why !== "moved") console.info(`sfu ${room.url}: ${why}`);
      } catch (err) {
        if (!this.closed && this.room === room) {
          console.warn(`sfu ${room.url}: ${err.message || err}`);
          this.onError?.("sfu", err);
        }
      }
      this.teardown();
      if (this.closed) return;
      if (this.room === room) await sleep(RESTART_DELAY_MS); // not moved: again, same room
    }
  }

  teardown() {
    this.session?.destroy();
    this.session = null;
    for (const pc of [this.publisher, this.subscriber]) pc?.close();
    this.publisher = this.subscriber = null;
    this.subscriberHandle = null;
    this.privateId = null;
    this.feeds.clear();
    this.subscribed.clear();
    this.midUser.clear();
    this.chain = Promise.resolve();
    this.onConnectionState?.();
  }

  async round(session, room, generation) {
    const current = () => {
      if (this.session !== session) throw new JanusError("superseded");
    };
    await session.create();
    current();
    const publisher = await session.attach((data) => this.publisherEvent(data));
    current();
    await this.publish(session, publisher, room);
    current();
    const subscriber = await session.attach(
      (data, jsep) => this.subscriberEvent(data, jsep, generation));
    current();
    this.subscriberHandle = subscriber;
    this.reconcile();
  }

  async join(session, handle, body) {
    const deadline = Date.now() + JOIN_RETRY_MS;
    for (;;) {
      try {
        return await session.request(handle, body);
      } catch (err) {
        if (![NO_ROOM, UNAUTHORIZED].includes(err.code) || Date.now() > deadline) throw err;
      }
      await sleep(JOIN_RETRY_INTERVAL_MS);
    }
  }

  async publish(session, handle, room) {
    const { data } = await this.join(session, handle, {
      request: "join", ptype: "publisher", room: room.room, pin: room.pin,
      token: room.token, display: this.localId,
    });
    this.privateId = data.private_id;
    this.learnPublishers(data.publishers || []);
    const pc = this.publisher = new RTCPeerConnection({
      iceServers: this.iceServers, bundlePolicy: "max-bundle" });
    pc.onconnectionstatechange = () => this.connectionChanged(pc, this.localId);
    for (const kind of ["audio", "video"]) {
      const track = kind === "audio" ? this.local.audioTrack : this.local.videoTrack;
      pc.addTransceiver(track || kind, { direction: "sendonly", streams: [this.local.stream] });
    }
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    const offer = pc.localDescription;
    const { jsep } = await session.request(handle, { request: "configure", audio: true, video: true },
                                           { type: offer.type, sdp: offer.sdp });
    if (!jsep) throw new JanusError("configure: no answer from Janus");
    await pc.setRemoteDescription(jsep);
  }

  connectionChanged(pc, userId) {
    if (pc.connectionState === "failed" && (pc === this.publisher || pc === this.subscriber)) {
      // No ICE restart with Janus here: publish and subscribe again, as after a lost session.
      this.endRound?.(`${pc === this.publisher ? "publisher" : "subscriber"} connection failed`);
    }
    this.onConnectionState?.(userId, pc.connectionState);
  }

  // ------------------------------------------------------------------ who publishes

  learnPublishers(publishers) {
    for (const { id, display } of publishers) {
      if (typeof display === "string" && display !== this.localId) this.feeds.set(display, id);
    }
  }

  publisherEvent(data) {
    if (Array.isArray(data.publishers)) this.learnPublishers(data.publishers);
    for (const key of ["unpublished", "leaving"]) {
      const gone = data[key];
      if (typeof gone !== "number") continue;
      for (const [user, feed] of this.feeds) if (feed === gone) this.feeds.delete(user);
      this.subscribed.delete(gone);
    }
    this.reconcile();
  }

  // ------------------------------------------------------------------ the subscriber

  /** Bring the subscriber connection in line with the members and the feeds published. */
  reconcile() {
    this.enqueue(() => this.reconcileNow());
  }

  enqueue(step) {
    const session = this.session;
    this.chain = this.chain.then(() => (this.session === session && !this.closed ? step() : null))
      .catch((err) => {
        if (this.session !== session || this.closed) return;
        console.warn("sfu subscription failed:", err);
        this.onError?.("sfu", err);
        this.endRound?.(`subscription failed: ${err}`); // start over, not half subscribed
      });
    return this.chain;
  }

  async reconcileNow() {
    const session = this.session, handle = this.subscriberHandle;
    if (!session || !handle || this.privateId === null) return;
    const wanted = new Set([...this.peers.keys()].filter((u) => this.feeds.has(u))
      .map((u) => this.feeds.get(u)));
    const published = new Set(this.feeds.values());
    const add = [...wanted].filter((f) => !this.subscribed.has(f));
    // A feed no longer published went with its publisher (Janus re-offers by itself); one
    // still published by someone no longer in the call is unsubscribed.
    const drop = [...this.subscribed].filter((f) => !wanted.has(f) && published.has(f));
    for (const feed of [...this.subscribed]) if (!published.has(feed)) this.subscribed.delete(feed);
    if (!this.subscriber) {
      if (!add.length) return;
      const { data, jsep } = await this.join(session, handle, {
        request: "join", ptype: "subscriber", room: this.room.room, pin: this.room.pin,
        private_id: this.privateId, streams: add.map((feed) => ({ feed })),
      });
      for (const feed of add) this.subscribed.add(feed);
      const pc = this.subscriber = new RTCPeerConnection({
        iceServers: this.iceServers, bundlePolicy: "max-bundle" });
      pc.onconnectionstatechange = () => this.connectionChanged(pc, null);
      await this.answer(data, jsep);
      return;
    }
    if (add.length) {
      for (const feed of add) this.subscribed.add(feed);
      const { data, jsep } = await session.request(handle, {
        request: "subscribe", streams: add.map((feed) => ({ feed })) });
      await this.answer(data, jsep);
    }
    if (drop.length) {
      for (const feed of drop) this.subscribed.delete(feed);
      const { data, jsep } = await session.request(handle, {
        request: "unsubscribe", streams: drop.map((feed) => ({ feed })) });
      await this.answer(data, jsep);
    }
  }

  subscriberEvent(data, jsep, generation) {
    // Janus re-offers on its own when a subscribed publisher goes away.
    if (generation !== this.generation) return;
    if (jsep?.type === "offer") this.enqueue(() => this.answer(data, jsep));
    else if (Array.isArray(data.streams)) this.mapStreams(data.streams);
  }

  async answer(data, jsep) {
    const pc = this.subscriber, session = this.session, handle = this.subscriberHandle;
    if (!pc || !session || !jsep) return;
    if (Array.isArray(data.streams)) this.mapStreams(data.streams, false);
    await pc.setRemoteDescription(jsep);
    await pc.setLocalDescription(await pc.createAnswer());
    await gathered(pc);
    const answer = pc.localDescription;
    this.rebuildStreams();
    await session.request(handle, { request: "start" }, { type: answer.type, sdp: answer.sdp });
  }

  mapStreams(streams, rebuild = true) {
    for (const stream of streams) {
      const mid = String(stream.mid);
      const user = stream.feed_display;
      const media = stream.type === "audio" || stream.type === "video";
      if (stream.active === false || !media || typeof user !== "string") this.midUser.delete(mid);
      else this.midUser.set(mid, user);
    }
    if (rebuild) this.rebuildStreams();
  }

  /** Each member's stream: the subscriber's live tracks whose mid carries their feed. */
  rebuildStreams() {
    const tracks = new Map([...this.peers.keys()].map((user) => [user, []]));
    for (const transceiver of this.subscriber?.getTransceivers() ?? []) {
      const user = this.midUser.get(transceiver.mid);
      if (!tracks.has(user) || transceiver.currentDirection === "stopped") continue;
      tracks.get(user).push(transceiver.receiver.track);
    }
    for (const [user, wanted] of tracks) {
      const feed = this.peers.get(user);
      const had = feed.stream.getTracks();
      if (had.length === wanted.length && wanted.every((track) => had.includes(track))) continue;
      // A new stream rather than the old one changed: a media element and a WebAudio source
      // made from the old one keep its old tracks (after a move, every track is new).
      feed.stream = new MediaStream(wanted);
      if (wanted.length) this.onStream?.(user, feed.stream);
    }
    this.onConnectionState?.();
  }
}
