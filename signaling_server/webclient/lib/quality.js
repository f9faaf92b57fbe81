// Network quality from a peer connection's statistics, with the score and thresholds of the
// Python client (callclient/media/quality.py): TUINetworkQuality 0 unknown, 1 excellent,
// 2 good, 3 poor, 4 bad, 5 vBad, 6 down.
//
//   score = 4 * loss% + max(0, rtt_ms - 100) / 20 + max(0, jitter_ms - 20) / 4
//   < 4 excellent, < 10 good, < 30 poor, < 60 bad, else vBad; nothing heard for 2.5 s: down.

export const Quality = Object.freeze({
  UNKNOWN: 0, EXCELLENT: 1, GOOD: 2, POOR: 3, BAD: 4, VBAD: 5, DOWN: 6,
});

const DOWN_AFTER_MS = 2500;

export function levelForScore(score) {
  if (score < 4) return Quality.EXCELLENT;
  if (score < 10) return Quality.GOOD;
  if (score < 30) return Quality.POOR;
  if (score < 60) return Quality.BAD;
  return Quality.VBAD;
}

export function score(lossFraction, rttMs, jitterMs) {
  let value = 400 * Math.max(0, Math.min(1, lossFraction));
  if (rttMs != null) value += Math.max(0, rttMs - 100) / 20;
  if (jitterMs != null) value += Math.max(0, jitterMs - 20) / 4;
  return value;
}

/** The worst of several levels; unknown only when all are unknown. */
export function worst(...levels) {
  const known = levels.filter((level) => level !== Quality.UNKNOWN);
  return known.length ? Math.max(...known) : Quality.UNKNOWN;
}

/** Rates one peer connection: what we receive (downlink) and what the peer hears (uplink). */
export class LinkRater {
  constructor() {
    this.received = null;
    this.lost = null;
    this.lastHeard = null;
    this.downlink = Quality.UNKNOWN;
    this.uplink = Quality.UNKNOWN;
    this.uplinkStamp = null;
    this.uplinkHeard = null;
  }

  /** Feed one `pc.getStats()` report taken at `now` (ms). */
  update(report, now) {
    let received = 0, lost = 0, jitter = null, rtt = null, inbound = false;
    let upLoss = null, upRtt = null, upStamp = "";
    for (const stats of report.values()) {
      if (stats.type === "inbound-rtp") {
        inbound = true;
        received += stats.packetsReceived || 0;
        lost += Math.max(0, stats.packetsLost || 0);
        if (stats.kind === "audio" && stats.jitter != null) jitter = stats.jitter * 1000;
      } else if (stats.type === "candidate-pair" && stats.nominated &&
                 stats.currentRoundTripTime != null) {
        rtt = stats.currentRoundTripTime * 1000;
      } else if (stats.type === "remote-inbound-rtp") {
        upStamp += `${stats.kind}:${stats.packetsLost}:${stats.timestamp};`;
        if (stats.kind === "audio" || upLoss == null) {
          upLoss = stats.fractionLost ?? 0;
          if (stats.roundTripTime != null) upRtt = stats.roundTripTime * 1000;
        }
      }
    }
    if (inbound) {
      if (this.received !== null && received > this.received) this.lastHeard = now;
      if (this.received === null && received > 0) this.lastHeard = now;
      if (this.received !== null) {
        const got = received - this.received, missed = Math.max(0, lost - this.lost);
        if (got + missed > 0) this.downlink = levelForScore(score(missed / (got + missed),
                                                                   rtt, jitter));
      }
      this.received = received;
      this.lost = lost;
    }
    if (this.lastHeard !== null && now - this.lastHeard > DOWN_AFTER_MS) {
      this.downlink = Quality.DOWN;
    }
    if (upLoss !== null) {
      if (upStamp !== this.uplinkStamp) this.uplinkHeard = now;
      this.uplinkStamp = upStamp;
      this.uplink = levelForScore(score(upLoss, upRtt ?? rtt, null));
    }
    if (this.uplinkHeard !== null && now - this.uplinkHeard > 2 * DOWN_AFTER_MS) {
      this.uplink = Quality.DOWN; // receiver reports come every 1..5 s
    }
  }
}
