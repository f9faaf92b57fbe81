// The page: renders the CallClient (lib/call.js) and turns clicks into its operations.
// Query parameters (all optional): server=WS_URL, user=ID, nickname=NAME, login=dev (log in at
// once with the development login), trickle=0 (send complete SDP instead of trickling),
// rawaudio=1 (no echo cancellation, noise suppression or gain control on the microphone).

import { CallClient, CallError, MediaType, Status } from "./lib/call.js";
import { Ringer } from "./lib/media.js";
import { Quality } from "./lib/quality.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const QUALITY_NAMES = ["unknown", "excellent", "good", "poor", "bad", "very bad", "down"];
const QUALITY_BARS = [0, 5, 4, 3, 2, 1, 0];

let config = null;
let client = null;
let ringer = null;
let lastError = "";
const tiles = new Map(); // userId -> tile element

function showError(err) {
  lastError = err instanceof CallError ? `${err.serverMessage} (${err.code})` : String(err);
  $("error").textContent = lastError;
  $("error").hidden = false;
}

function clearError() {
  lastError = "";
  $("error").hidden = true;
}

/** Run an operation from a click; its failure is shown, never thrown into the page. */
function action(operation) {
  return async (event) => {
    event?.preventDefault();
    clearError();
    try {
      await operation();
    } catch (err) {
      showError(err);
    }
  };
}

function defaultServerUrl() {
  if (params.get("server")) return params.get("server");
  if (config?.websocketUrl) return config.websocketUrl;
  const scheme = config?.secure || location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.hostname}:${config?.websocketPort ?? 8765}/`;
}

async function loadConfig() {
  try {
    const response = await fetch("config.json", { cache: "no-store" });
    if (response.ok) config = await response.json();
  } catch {
    config = null; // served elsewhere: the form asks for everything
  }
  $("server-url").value = defaultServerUrl();
  $("dev-login-button").hidden = !config?.developmentLogin;
  if (params.get("user")) $("login-user").value = params.get("user");
  if (params.get("nickname")) $("login-nickname").value = params.get("nickname");
}

function newClient() {
  const audio = params.get("rawaudio") === "1"
    ? { echoCancellation: false, noiseSuppression: false, autoGainControl: false } : true;
  const made = new CallClient({
    serverUrl: $("server-url").value.trim(),
    trickle: params.get("trickle") !== "0",
    constraints: { audio },
  });
  made.on("change", render);
  made.on("log", appendLog);
  return made;
}

async function login(userSig) {
  const userID = $("login-user").value.trim();
  client = newClient();
  await client.login({
    sdkAppId: config?.sdkAppId ?? 1400000001, userID, userSig,
    nickname: $("login-nickname").value.trim(),
  });
  ringer?.stop();
  ringer = new Ringer(client.audioContext);
  render();
}

async function developmentLogin() {
  const response = await fetch("dev/login", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ userID: $("login-user").value.trim() }),
  });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `development login: HTTP ${response.status}`);
  $("login-sig").value = body.userSig;
  await login(body.userSig);
}

// ------------------------------------------------------------------ rendering

function tileFor(userId, local) {
  let tile = tiles.get(userId);
  if (!tile) {
    tile = $("tile-template").content.firstElementChild.cloneNode(true);
    tile.dataset.user = userId;
    tile.classList.toggle("local", local);
    tile.querySelector("video").muted = local; // remote audio plays from its tile
    tiles.set(userId, tile);
    $("tiles").append(tile);
  }
  return tile;
}

function setStream(tile, stream) {
  const video = tile.querySelector("video");
  if (video.srcObject !== stream) video.srcObject = stream;
}

function renderTiles(call) {
  const wanted = new Set();
  if (call) {
    wanted.add(client.userId);
    const mine = tileFor(client.userId, true);
    setStream(mine, client.local.stream);
    mine.querySelector(".name").textContent = `${client.nickname || client.userId} (you)`;
    mine.querySelector(".badges").textContent = badges(client.local.cameraOn,
                                                       client.local.microphoneOn);
    setBars(mine, client.uplink);
    for (const member of call.members.values()) {
      wanted.add(member.userId);
      const tile = tileFor(member.userId, false);
      if (member.stream) setStream(tile, member.stream);
      const name = member.nickname ? `${member.nickname} (${member.userId})` : member.userId;
      tile.querySelector(".name").textContent = name;
      tile.querySelector(".badges").textContent = badges(member.video, member.audio);
      tile.classList.toggle("no-video", member.video === false);
      setBars(tile, member.quality);
    }
  }
  for (const [userId, tile] of tiles) {
    if (!wanted.has(userId)) {
      tile.querySelector("video").srcObject = null;
      tile.remove();
      tiles.delete(userId);
    }
  }
}

function badges(video, audio) {
  return [video === false ? "camera off" : "", audio === false ? "mic off" : ""]
    .filter(Boolean).join(" · ");
}

function setBars(tile, quality) {
  const bars = tile.querySelector(".bars");
  bars.dataset.quality = quality;
  bars.title = `network: ${QUALITY_NAMES[quality] ?? "unknown"}`;
  bars.classList.toggle("down", quality === Quality.DOWN);
  [...bars.children].forEach((bar, i) => bar.classList.toggle("on", i < QUALITY_BARS[quality]));
}

function callStatusText(call) {
  if (call.status === Status.CALLING) {
    const names = call.invitees.join(", ");
    return `Calling ${names}…`;
  }
  if (call.status === Status.RINGING) return "Ringing";
  const kind = call.mediaType === MediaType.VIDEO ? "Video" : "Audio";
  const others = [...call.members.keys()].join(", ") || "nobody yet";
  return `${kind} call with ${others}`;
}

function render() {
  const loggedIn = Boolean(client?.userId);
  const call = client?.call ?? null;
  $("whoami").textContent = loggedIn ? client.userId : "";
  $("connection").textContent = client?.connection ?? "offline";
  $("connection").dataset.state = client?.connection ?? "offline";
  $("logout-button").hidden = !loggedIn;
  $("login").hidden = loggedIn;
  $("dial").hidden = !loggedIn || call !== null;
  const ringing = call?.status === Status.RINGING;
  $("incoming").hidden = !ringing;
  if (ringing) {
    const who = call.sponsorNickname ? `${call.sponsorNickname} (${call.sponsor})` : call.sponsor;
    const kind = call.mediaType === MediaType.VIDEO ? "video" : "audio";
    const group = call.invitees.length > 1 ? ` with ${call.invitees.join(", ")}` : "";
    $("incoming-text").textContent = `${who} is calling you: ${kind} call${group}`;
  }
  $("call").hidden = !call || ringing;
  if (call && !ringing) {
    $("call-status").textContent = callStatusText(call);
    $("mic-button").textContent = client.local.microphoneOn ? "Microphone off" : "Microphone on";
    $("camera-button").textContent = client.local.cameraOn ? "Camera off" : "Camera on";
    $("switch-button").textContent =
      call.mediaType === MediaType.VIDEO ? "Switch to audio" : "Switch to video";
    $("switch-button").disabled = call.status !== Status.CONNECTED;
  }
  renderTiles(call);
  if (ringer) {
    if (ringing) ringer.start("incoming");
    else if (call?.status === Status.CALLING) ringer.start("ringback");
    else ringer.stop();
  }
}

function tick() {
  const call = client?.call;
  if (call?.beginTime) {
    const seconds = Math.floor((Date.now() - call.beginTime) / 1000);
    const mm = String(Math.floor(seconds / 60)).padStart(2, "0");
    $("timer").textContent = `${mm}:${String(seconds % 60).padStart(2, "0")}`;
  } else {
    $("timer").textContent = "00:00";
  }
  if (!client) return;
  for (const [userId, level] of Object.entries(client.volumes())) {
    const bar = tiles.get(userId)?.querySelector(".level");
    if (bar) {
      bar.style.width = `${level}%`;
      bar.parentElement.dataset.level = level;
    }
  }
}

function appendLog(entry) {
  const item = document.createElement("li");
  item.className = entry.source;
  const time = new Date(entry.t).toISOString().slice(11, 23);
  item.innerHTML = "<time></time> <b></b> <code></code>";
  item.querySelector("time").textContent = time;
  item.querySelector("b").textContent = entry.event;
  item.querySelector("code").textContent = JSON.stringify(entry.data);
  $("log-list").append(item);
  $("log-count").textContent = String(client.log.length);
}

function userList(text) {
  return text.split(/[\s,]+/).filter(Boolean);
}

// ------------------------------------------------------------------ wiring

$("login-form").addEventListener("submit", action(async () => {
  const sig = $("login-sig").value.trim();
  if (!sig) throw new Error("paste a userSig, or use the development login");
  await login(sig);
}));
$("dev-login-button").addEventListener("click", action(developmentLogin));
$("logout-button").addEventListener("click", action(async () => {
  await client?.logout();
  render();
}));
$("dial-form").addEventListener("submit", action(async () => {
  const media = Number(document.querySelector('input[name="media"]:checked').value);
  await client.calls(userList($("callee").value), media, { groupId: $("group-id").value.trim() });
}));
$("accept-button").addEventListener("click", action(() => client.accept()));
$("reject-button").addEventListener("click", action(() => client.reject()));
$("hangup-button").addEventListener("click", action(() => client.hangup()));
$("mic-button").addEventListener("click",
  action(() => client.setMicrophone(!client.local.microphoneOn)));
$("camera-button").addEventListener("click",
  action(() => client.setCamera(!client.local.cameraOn)));
$("switch-button").addEventListener("click", action(() => client.switchMediaType(
  client.call.mediaType === MediaType.VIDEO ? MediaType.AUDIO : MediaType.VIDEO)));
$("invite-form").addEventListener("submit", action(async () => {
  await client.invite(userList($("invite-users").value));
  $("invite-users").value = "";
}));
setInterval(tick, 250);

// What a test (or a curious developer in the console) can read.
window.callApp = {
  get client() { return client; },
  snapshot() {
    const call = client?.call ?? null;
    return {
      user: client?.userId ?? null,
      connection: client?.connection ?? "offline",
      status: call?.status ?? "idle",
      callId: call?.callId ?? null,
      role: call?.role ?? null,
      mediaType: call?.mediaType ?? null,
      transport: call?.transport?.kind ?? null,
      timer: $("timer").textContent,
      camera: client?.local.cameraOn ?? false,
      microphone: client?.local.microphoneOn ?? false,
      uplink: client?.uplink ?? 0,
      members: call ? [...call.members.values()].map((m) => ({
        userId: m.userId, nickname: m.nickname, video: m.video, audio: m.audio,
        quality: m.quality, connectionState: call.transport?.peers.get(m.userId)?.pc
          ?.connectionState ?? null,
      })) : [],
      volumes: client?.volumes() ?? {},
      log: (client?.log ?? []).map(({ source, event, data }) => ({ source, event, data })),
      error: lastError,
    };
  },
  /** Per remote user: what the browser decoded and heard. */
  async mediaStats() {
    const result = {};
    const call = client?.call;
    if (!call?.transport) return result;
    for (const [userId, pc] of call.transport.connections()) {
      const entry = { framesDecoded: 0, frameWidth: 0, frameHeight: 0, audioPackets: 0,
                      rms: call.members.get(userId)?.meter?.rms() ?? 0,
                      connectionState: pc.connectionState };
      for (const stats of (await call.transport.statsFor(userId)).values()) {
        if (stats.type !== "inbound-rtp") continue;
        if (stats.kind === "video") {
          entry.framesDecoded += stats.framesDecoded || 0;
          entry.frameWidth = stats.frameWidth || entry.frameWidth;
          entry.frameHeight = stats.frameHeight || entry.frameHeight;
        } else {
          entry.audioPackets += stats.packetsReceived || 0;
        }
      }
      result[userId] = entry;
    }
    return result;
  },
};

await loadConfig();
if (params.get("login") === "dev" && $("login-user").value) {
  await action(developmentLogin)();
}
render();
