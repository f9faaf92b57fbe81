// The mesh transport: one RTCPeerConnection per other joined member, negotiated through the
// server's relay (docs/protocol.md, "Media negotiation"). The member whose user id sorts lower
// offers, once, when it learns from USER_ENTER that the other joined. Every connection
// carries audio and video in sendrecv (an audio call sends no video until it switches) and,
// from the offerer, the optional `keepalive` data channel (one message a second).
//
// A transport has this shape, so another (an SFU room) can stand beside it:
//   add(userId), remove(userId), relay({from, kind, payload}), localTracksChanged(),
//   streams: Map userId -> MediaStream, connections(): Map userId -> RTCPeerConnection,
//   peers: Map userId -> {pc}, statsFor(userId): its statistics, close(); and calls
//   onStream(userId, stream), onConnectionState(userId, state). sfu.js is the other one.

const KEEPALIVE_LABEL = "keepalive";
const KEEPALIVE_MS = 1000;
const RELAY_RETRY_MS = 4000; // a member reconnecting (4041) for the server's grace + 1 s
const MOOT_CODES = new Set([4040, -1101]); // the call ended or the member left

/** Whether `local` offers to `remote`: plain string comparison, as Python's `<`. */
export function isOfferer(local, remote) {
  return local < remote;
}

class Peer {
  constructor(mesh, remoteId) {
    this.mesh = mesh;
    this.remoteId = remoteId;
    this.offerer = isOfferer(mesh.localId, remoteId);
    this.pc = new RTCPeerConnection({ iceServers: mesh.iceServers, bundlePolicy: "max-bundle" });
    this.chain = Promise.resolve(); // relays are applied strictly in the order they arrive
    this.described = false; // our offer/answer is sent: trickled candidates may follow it
    this.unsentCandidates = [];
    this.channel = null;
    this.keepalive = null;
    this.stream = new MediaStream();
    this.closed = false;
    this.pc.onicecandidate = (event) => this.localCandidate(event.candidate);
    this.pc.ontrack = (event) => this.remoteTrack(event.track);
    this.pc.ondatachannel = (event) => {
      if (event.channel.label === KEEPALIVE_LABEL) this.openChannel(event.channel);
    };
    this.pc.onconnectionstatechange = () =>
      this.mesh.onConnectionState?.(this.remoteId, this.pc.connectionState);
  }

  start() {
    if (!this.offerer) return; // the other side offers
    this.enqueue(async () => {
      this.attachTracks(["audio", "video"].map(
        (kind) => this.pc.addTransceiver(kind, { direction: "sendrecv" })));
      this.openChannel(this.pc.createDataChannel(KEEPALIVE_LABEL));
      await this.pc.setLocalDescription(await this.pc.createOffer());
      await this.sendDescription();
    });
  }

  enqueue(step) {
    this.chain = this.chain.then(() => (this.closed ? undefined : step())).catch((err) => {
      console.warn(`negotiation with ${this.remoteId} failed:`, err);
      this.mesh.onError?.(this.remoteId, err);
    });
    return this.chain;
  }

  /** Give each audio/video transceiver the local track of its kind, sending both ways. */
  attachTracks(transceivers = this.pc.getTransceivers()) {
    const local = this.mesh.local;
    for (const transceiver of transceivers) {
      const kind = transceiver.receiver.track.kind;
      const track = kind === "audio" ? local.audioTrack : local.videoTrack;
      if (transceiver.currentDirection === "stopped") continue;
      transceiver.direction = "sendrecv";
      if (transceiver.sender.track !== track) {
        transceiver.sender.replaceTrack(track).catch(
          (err) => console.warn(`cannot send the ${kind} track to ${this.remoteId}:`, err));
      }
      transceiver.sender.setStreams(local.stream);
    }
  }

  async sendDescription() {
    if (!this.mesh.trickle) await this.gathered();
    const description = this.pc.localDescription;
    await this.mesh.send(this.remoteId, description.type,
                         { type: description.type, sdp: description.sdp });
    this.described = true;
    for (const payload of this.unsentCandidates.splice(0)) {
      this.mesh.send(this.remoteId, "candidate", payload);
    }
  }

  gathered() {
    if (this.pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const check = () => {
        if (this.pc.iceGatheringState === "complete") {
          this.pc.removeEventListener("icegatheringstatechange", check);
          resolve();
        }
      };
      this.pc.addEventListener("icegatheringstatechange", check);
    });
  }

  localCandidate(candidate) {
    if (!this.mesh.trickle) return; // the description carries them all
    // End of candidates is an empty candidate string.
    const payload = candidate
      ? { candidate: candidate.candidate, sdpMid: candidate.sdpMid,
          sdpMLineIndex: candidate.sdpMLineIndex }
      : { candidate: "" };
    if (payload.candidate === "" && candidate) return; // Chrome's per-m-line end marker
    if (this.described) this.mesh.send(this.remoteId, "candidate", payload);
    else this.unsentCandidates.push(payload);
  }

  relay(kind, payload) {
    if (kind === "offer") {
      this.enqueue(async () => {
        await this.pc.setRemoteDescription({ type: "offer", sdp: payload.sdp });
        this.attachTracks();
        await this.pc.setLocalDescription(await this.pc.createAnswer());
        await this.sendDescription();
      });
    } else if (kind === "answer") {
      this.enqueue(() => this.pc.setRemoteDescription({ type: "answer", sdp: payload.sdp }));
    } else if (kind === "candidate") {
      this.enqueue(() => {
        const text = payload.candidate;
        if (!text) return this.pc.addIceCandidate(); // end of candidates
        return this.pc.addIceCandidate({
          candidate: text.startsWith("candidate:") ? text : `candidate:${text}`,
          sdpMid: payload.sdpMid ?? null,
          sdpMLineIndex: payload.sdpMLineIndex ?? null,
        });
      });
    }
    // keepalive relays and custom ones need nothing here.
  }

  remoteTrack(track) {
    this.stream.addTrack(track);
    track.onended = () => this.stream.removeTrack(track);
    this.mesh.onStream?.(this.remoteId, this.stream);
  }

  openChannel(channel) {
    this.channel = channel;
    clearInterval(this.keepalive);
    this.keepalive = setInterval(() => {
      if (channel.readyState === "open") channel.send("p");
    }, KEEPALIVE_MS);
  }

  close() {
    this.closed = true;
    clearInterval(this.keepalive);
    this.pc.close();
  }
}

export class MeshTransport {
  /**
   * `send(to, kind, payload)` sends one `relay` request and rejects with a CallError.
   * `local` is the LocalMedia whose tracks are sent.
   */
  constructor({ localId, iceServers = [], local, send, trickle = true }) {
    this.localId = localId;
    this.iceServers = iceServers;
    this.local = local;
    this.sendRelay = send;
    this.trickle = trickle;
    this.kind = "mesh";
    this.peers = new Map();
    this.onStream = null;
    this.onConnectionState = null;
    this.onError = null;
  }

  get streams() {
    return new Map([...this.peers].map(([user, peer]) => [user, peer.stream]));
  }

  connections() {
    return new Map([...this.peers].map(([user, peer]) => [user, peer.pc]));
  }

  /** Statistics of the connection with `userId` (an RTCStatsReport; empty if none). */
  async statsFor(userId) {
    return (await this.peers.get(userId)?.pc.getStats()) ?? new Map();
  }

  /** `userId` joined: make its connection (once) and offer if ours is the lower id. */
  add(userId) {
    if (userId === this.localId) return null;
    let peer = this.peers.get(userId);
    if (!peer) {
      peer = new Peer(this, userId);
      this.peers.set(userId, peer);
      peer.start();
    }
    return peer;
  }

  remove(userId) {
    const peer = this.peers.get(userId);
    if (!peer) return;
    this.peers.delete(userId);
    peer.close();
  }

  relay({ from, kind, payload }) {
    this.add(from)?.relay(kind, payload || {});
  }

  /** The camera or microphone changed: every connection sends the current tracks. */
  localTracksChanged() {
    for (const peer of this.peers.values()) {
      if (peer.pc.signalingState !== "closed") peer.attachTracks();
    }
  }

  async send(to, kind, payload) {
    const deadline = Date.now() + RELAY_RETRY_MS;
    for (;;) {
      try {
        await this.sendRelay(to, kind, payload);
        return;
      } catch (err) {
        if (MOOT_CODES.has(err.code)) return;
        if (err.code !== 4041 || Date.now() > deadline) {
          console.warn(`${kind} relay to ${to} failed:`, err);
          return;
        }
      }
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }

  close() {
    for (const peer of this.peers.values()) peer.close();
    this.peers.clear();
  }
}
