// The call client: the rules of docs/protocol.md for one logged-in user, in the shape of the
// TUICallEngine web SDK. It keeps the current call, answers the server's events (logged as
// they arrive: the TUICallEvent stream), runs the call's media transport and reports
// media state, volumes and network quality. The page (app.js) only renders it.

import { CallError, SignalingSession } from "./signaling.js";
import { LevelMeter, LocalMedia } from "./media.js";
import { MeshTransport } from "./mesh.js";
import { SfuTransport } from "./sfu.js";
import { LinkRater, Quality, worst } from "./quality.js";

export { CallError };

export const MediaType = Object.freeze({ AUDIO: 1, VIDEO: 2 });
export const Status = Object.freeze({
  CALLING: "calling", RINGING: "ringing", CONNECTED: "connected",
});

const QUALITY_INTERVAL_MS = 2000;

/** Keep only well-formed RTCIceServer objects of the login reply's `iceServers`. */
export function iceServersFrom(reply) {
  const list = Array.isArray(reply?.iceServers) ? reply.iceServers : [];
  return list.filter((server) => server && (typeof server.urls === "string" ||
    (Array.isArray(server.urls) && server.urls.every((url) => typeof url === "string"))))
    .map(({ urls, username, credential }) => ({
      urls, ...(username != null && { username }), ...(credential != null && { credential }),
    }));
}

class Member {
  constructor(userId, nickname = "") {
    this.userId = userId;
    this.nickname = nickname;
    this.video = null; // null: not reported (yet)
    this.audio = null;
    this.reportedQuality = Quality.UNKNOWN; // its own uplink, from ON_USER_NETWORK_QUALITY_CHANGED
    this.quality = Quality.UNKNOWN;
    this.rater = new LinkRater();
    this.meter = null;
    this.stream = null;
  }
}

export class CallClient {
  constructor({ serverUrl, trickle = true, constraints = {} }) {
    this.serverUrl = serverUrl;
    this.trickle = trickle;
    this.local = new LocalMedia(constraints);
    this.session = null;
    this.userId = null;
    this.nickname = "";
    this.iceServers = [];
    this.call = null;
    this.log = [];
    this.listeners = new Map();
    this.audioContext = null;
    this.localMeter = null;
    this.qualityTimer = null;
    this.uplink = Quality.UNKNOWN;
    this.connection = "offline";
  }

  // ------------------------------------------------------------------ events to the page

  on(name, listener) {
    if (!this.listeners.has(name)) this.listeners.set(name, []);
    this.listeners.get(name).push(listener);
  }

  emit(name, ...args) {
    for (const listener of this.listeners.get(name) || []) {
      try { listener(...args); } catch (err) { console.error(`${name} listener failed`, err); }
    }
  }

  record(source, event, data) {
    const entry = { t: Date.now(), source, event, data };
    this.log.push(entry);
    this.emit("log", entry);
  }

  changed() {
    this.emit("change");
  }

  // ------------------------------------------------------------------ session

  async login({ sdkAppId, userID, userSig, nickname = "" }) {
    if (this.session) throw new CallError(-1204, `already logged in as ${this.userId}`);
    // Made during the click that logs in, so later sounds (ring, remote audio) may play.
    this.audioContext ??= new AudioContext();
    this.audioContext.resume().catch(() => {});
    const session = new SignalingSession(this.serverUrl, {
      onEvent: (name, data) => this.serverEvent(name, data),
      onRelay: (relay) => this.relayed(relay),
      onLoggedIn: (reply, { reconnected }) => this.loggedIn(reply, reconnected),
      onDisconnected: (code, reason) => {
        this.connection = "reconnecting";
        this.record("client", "CONNECTION_LOST", { code, reason });
        this.changed();
      },
      onGone: (code, reason) => this.sessionGone(code, reason),
    });
    this.session = session;
    this.userId = userID;
    this.nickname = nickname;
    try {
      await session.login({ sdkAppId, userID, userSig, nickname });
    } catch (err) {
      this.session = null;
      this.userId = null;
      session.close();
      throw err;
    }
  }

  loggedIn(reply, reconnected) {
    this.iceServers = iceServersFrom(reply);
    this.connection = "online";
    if (reconnected) {
      this.record("client", "RECONNECTED", { activeCall: reply.activeCall ?? null });
      const call = this.call;
      if (call && reply.activeCall?.callId !== call.callId) {
        // The server no longer has the call (it restarted, or the grace passed).
        this.endCall("gone after reconnecting");
      }
    }
    this.changed();
  }

  sessionGone(code, reason) {
    this.endCall("logged out");
    this.session = null;
    this.userId = null;
    this.connection = "offline";
    this.record("client", "LOGGED_OUT", { code, reason });
    this.changed();
  }

  async logout() {
    const session = this.session;
    if (!session) return;
    this.endCall("logged out");
    this.session = null;
    this.userId = null;
    this.connection = "offline";
    await session.close();
    this.changed();
  }

  request(type, data) {
    if (!this.session) return Promise.reject(new CallError(-1201, "not logged in"));
    return this.session.request(type, data);
  }

  // ------------------------------------------------------------------ call operations

  /** Call one user (1v1) or several (a group call; also with a groupId). */
  async calls(userIds, mediaType, { groupId = "" } = {}) {
    if (!this.session) throw new CallError(-1201, "cannot call: not logged in");
    if (this.call) throw new CallError(-1203, `cannot call: already in call ${this.call.callId}`);
    await this.openDevices(mediaType);
    const data = { userIDList: userIds, mediaType };
    if (groupId) data.groupId = groupId;
    let reply;
    try {
      reply = await this.request("calls", data);
    } catch (err) {
      this.local.closeAll();
      this.changed();
      throw err;
    }
    // The reply comes before any event the request causes (docs/protocol.md, "Frames").
    this.call = this.newCall(reply.callId, "caller", Status.CALLING, mediaType, {
      roomID: reply.roomID, sponsor: this.userId, invitees: [...reply.userIDList],
      groupId,
    });
    for (const busy of reply.busyUserIDList || []) this.call.answers.set(busy, "busy");
    this.changed();
    return reply.callId;
  }

  async accept() {
    const call = this.requireCall("accept", Status.RINGING);
    await this.openDevices(call.mediaType);
    await this.request("accept", { callId: call.callId });
  }

  async reject() {
    const call = this.requireCall("reject", Status.RINGING);
    await this.request("reject", { callId: call.callId });
  }

  async hangup() {
    const call = this.call;
    if (!call) throw new CallError(-1203, 'cannot hang up: call status is "none"');
    try {
      await this.request("hangup", { callId: call.callId });
    } catch (err) {
      if (err.code !== 4040) throw err;
      this.endCall("the server no longer knows the call");
    }
  }

  async invite(userIds) {
    const call = this.requireCall("invite", Status.CONNECTED, Status.CALLING);
    const reply = await this.request("invite", { callId: call.callId, userIDList: userIds });
    for (const user of reply.userIDList) if (!call.invitees.includes(user)) call.invitees.push(user);
    this.changed();
    return reply.userIDList;
  }

  async switchMediaType(mediaType) {
    const call = this.requireCall("switch media type", Status.CONNECTED);
    if (mediaType === MediaType.VIDEO) await this.setCamera(true);
    await this.request("switch_media_type", { callId: call.callId, mediaType });
  }

  async setMicrophone(on) {
    if (on) await this.local.openMicrophone();
    else this.local.closeMicrophone();
    this.localMediaChanged();
    await this.reportMediaState();
  }

  async setCamera(on) {
    if (on) await this.local.openCamera();
    else this.local.closeCamera();
    this.localMediaChanged();
    await this.reportMediaState();
  }

  async setNickname(nickname) {
    await this.request("self_info", { nickname });
    this.nickname = nickname;
    this.changed();
  }

  requireCall(action, ...statuses) {
    const call = this.call;
    if (!call || !statuses.includes(call.status)) {
      throw new CallError(-1203, `cannot ${action}: call status is "${call?.status ?? "none"}"`);
    }
    return call;
  }

  async openDevices(mediaType) {
    try {
      if (!this.local.audioTrack) await this.local.openMicrophone();
      if (mediaType === MediaType.VIDEO) await this.local.openCamera();
    } catch (err) {
      this.record("client", "DEVICE_ERROR", { message: String(err) });
    }
    this.localMediaChanged();
  }

  localMediaChanged() {
    this.transport?.localTracksChanged();
    this.localMeter?.close();
    this.localMeter = this.local.audioTrack && this.audioContext
      ? new LevelMeter(this.audioContext, this.local.stream) : null;
    this.changed();
  }

  /** Tell the others what is on (a duty of every client once connected; docs/protocol.md). */
  async reportMediaState() {
    const call = this.call;
    if (!call || call.status !== Status.CONNECTED) return;
    try {
      await this.request("media_state", {
        callId: call.callId, camera: this.local.cameraOn, microphone: this.local.microphoneOn,
      });
    } catch (err) {
      console.info("media state not reported:", err);
    }
  }

  // ------------------------------------------------------------------ the call

  newCall(callId, role, status, mediaType, extra) {
    return {
      callId, role, status, mediaType, beginTime: null, members: new Map(), answers: new Map(),
      roomID: null, sponsor: "", sponsorNickname: "", invitees: [], groupId: "", sfuRoom: null,
      ...extra,
    };
  }

  get transport() {
    return this.call?.transport ?? null;
  }

  ensureTransport() {
    const call = this.call;
    if (call.transport) return call.transport;
    // One peer connection per member, or, in a call the server put in an SFU room
    // (SFU_ROOM, which comes before ON_CALL_BEGIN and any USER_ENTER), a publisher and a
    // subscriber connection with Janus; both have the same interface (see mesh.js).
    const transport = call.sfuRoom
      ? new SfuTransport({
        localId: this.userId, room: call.sfuRoom, iceServers: this.iceServers,
        local: this.local,
      })
      : new MeshTransport({
        localId: this.userId, iceServers: this.iceServers, local: this.local,
        trickle: this.trickle,
        send: (to, kind, payload) =>
          this.request("relay", { callId: call.callId, to, kind, payload }),
      });
    transport.onStream = (userId, stream) => this.remoteStream(userId, stream);
    transport.onConnectionState = () => this.changed();
    transport.onError = (userId, err) =>
      this.record("client", "NEGOTIATION_FAILED", { userID: userId, message: String(err) });
    call.transport = transport;
    return transport;
  }

  remoteStream(userId, stream) {
    const member = this.call?.members.get(userId);
    if (!member) return;
    member.stream = stream;
    const audio = stream.getAudioTracks()[0];
    if (member.meter && member.meter.track !== audio) { // a new track (an SFU call that moved)
      member.meter.close();
      member.meter = null;
    }
    if (audio && this.audioContext && !member.meter) {
      member.meter = new LevelMeter(this.audioContext, stream);
    }
    this.emit("stream", userId, stream);
    this.changed();
  }

  endCall(why) {
    const call = this.call;
    if (!call) return;
    this.call = null;
    call.transport?.close();
    for (const member of call.members.values()) member.meter?.close();
    clearInterval(this.qualityTimer);
    this.qualityTimer = null;
    this.uplink = Quality.UNKNOWN;
    this.local.closeAll();
    this.localMediaChanged();
    this.record("client", "CALL_OVER", { callId: call.callId, why });
    this.changed();
  }

  relayed(relay) {
    const call = this.call;
    if (!call || relay.callId !== call.callId) return;
    if (!call.members.has(relay.from)) call.members.set(relay.from, new Member(relay.from));
    this.ensureTransport().relay(relay);
  }

  serverEvent(name, data) {
    this.record("server", name, data);
    switch (name) {
      case "KICKED_OUT":
      case "USER_SIG_EXPIRED":
        this.endCall(name === "KICKED_OUT" ? "kicked out" : "userSig expired");
        return;
      case "ICE_SERVERS": // renewed TURN credentials: for the peer connections made from now on
        this.iceServers = iceServersFrom(data);
        if (this.transport) this.transport.iceServers = this.iceServers;
        return;
      case "ON_CALL_RECEIVED":
        if (this.call) {
          if (this.call.callId !== data.callId) console.warn("invitation while in a call");
          return;
        }
        this.call = this.newCall(data.callId, "called", Status.RINGING, data.callMediaType, {
          roomID: data.roomID, sponsor: data.sponsor, sponsorNickname: data.sponsorNickname,
          invitees: [...(data.userIDList || [])], groupId: data.groupID || "",
        });
        this.changed();
        return;
      default:
        break;
    }
    const call = this.call;
    if (!call || data.callId !== call.callId) return; // another call, or none
    switch (name) {
      case "ON_CALL_CANCELED":
        this.endCall(`canceled: ${data.reason}`);
        return;
      case "CALLING_END":
        this.endCall(`ended: ${data.reason}`);
        return;
      case "SFU_ROOM": // the call's media goes through Janus; a higher epoch: another room
        if (call.sfuRoom && !(data.epoch > call.sfuRoom.epoch)) return;
        call.sfuRoom = data;
        if (call.transport instanceof SfuTransport) call.transport.move(data);
        else if (call.transport) console.warn("SFU room for a call already meshed: staying so");
        break;
      case "ON_CALL_BEGIN":
        call.status = Status.CONNECTED;
        call.beginTime = Date.now();
        call.mediaType = data.callMediaType;
        call.roomID = data.roomID;
        this.ensureTransport();
        this.qualityTimer = setInterval(() => this.rateQuality(), QUALITY_INTERVAL_MS);
        this.reportMediaState();
        break;
      case "USER_ENTER": {
        // The one trigger of a member's media; one's own id and a repeat change nothing.
        if (data.userID === this.userId) return;
        const member = this.memberOf(call, data.userID);
        if (data.nickname) member.nickname = data.nickname;
        call.answers.set(data.userID, "joined");
        this.ensureTransport().add(data.userID); // a second add keeps the first connection
        break;
      }
      case "USER_LEAVE": {
        const member = call.members.get(data.userID);
        member?.meter?.close();
        call.members.delete(data.userID);
        call.answers.set(data.userID, "left");
        call.transport?.remove(data.userID);
        break;
      }
      case "USER_ACCEPT":
        call.answers.set(data.userID, "accepted");
        break;
      case "REJECT":
        call.answers.set(data.userID, "rejected");
        break;
      case "LINE_BUSY":
        call.answers.set(data.userID, "busy");
        break;
      case "NO_RESP":
        for (const user of data.userIDList || []) call.answers.set(user, "no answer");
        break;
      case "CALL_TYPE_CHANGED":
        call.mediaType = data.newCallType;
        // The camera follows the call's media type, whoever switched it.
        if (data.newCallType === MediaType.AUDIO && this.local.cameraOn) {
          this.setCamera(false).catch((err) => console.warn("camera:", err));
        } else if (data.newCallType === MediaType.VIDEO && !this.local.cameraOn) {
          this.setCamera(true).catch((err) =>
            this.record("client", "DEVICE_ERROR", { message: String(err) }));
        }
        break;
      case "USER_VIDEO_AVAILABLE":
        this.memberOf(call, data.userID).video = data.isVideoAvailable;
        break;
      case "USER_AUDIO_AVAILABLE":
        this.memberOf(call, data.userID).audio = data.isAudioAvailable;
        break;
      case "ON_USER_NETWORK_QUALITY_CHANGED":
        for (const { userID, quality } of data.networkQualityList || []) {
          const member = call.members.get(userID);
          if (member) member.reportedQuality = quality;
        }
        break;
      case "USER_INFO_CHANGED":
        this.memberOf(call, data.userID).nickname = data.nickname || "";
        break;
      case "GROUP_CALL_INVITEE_LIST_UPDATE":
        call.invitees = [...(data.userIDList || [])];
        break;
      default:
        break; // unknown events are ignored (forward compatibility)
    }
    this.changed();
  }

  memberOf(call, userId) {
    let member = call.members.get(userId);
    if (!member) {
      member = new Member(userId);
      call.members.set(userId, member);
    }
    return member;
  }

  // ------------------------------------------------------------------ reports

  async rateQuality() {
    const call = this.call;
    if (!call?.transport) return;
    const now = Date.now();
    const uplinks = [];
    for (const userId of call.transport.connections().keys()) {
      const member = call.members.get(userId);
      if (!member) continue;
      try {
        member.rater.update(await call.transport.statsFor(userId), now);
      } catch {
        continue; // closed meanwhile
      }
      const down = member.rater.downlink;
      member.quality = down === Quality.DOWN ? down : worst(down, member.reportedQuality);
      uplinks.push(member.rater.uplink);
    }
    if (this.call !== call) return;
    this.uplink = worst(...uplinks);
    this.changed();
    if (this.session?.connected) {
      this.request("network_quality", { callId: call.callId, quality: this.uplink })
        .catch(() => {});
    }
  }

  /** The volume of everyone in the call, 0..100, the local user included. */
  volumes() {
    const result = {};
    if (this.userId) {
      result[this.userId] = this.localMeter && this.local.microphoneOn
        ? this.localMeter.level() : 0;
    }
    for (const member of this.call?.members.values() ?? []) {
      result[member.userId] = member.meter && member.audio !== false ? member.meter.level() : 0;
    }
    return result;
  }
}
