// Local devices (camera, microphone), volume meters and the ringtone.

/** A 0..100 level of a media stream's audio, read from a WebAudio analyser. */
export class LevelMeter {
  constructor(context, stream) {
    this.track = stream.getAudioTracks()[0] ?? null; // the one it measures, for good
    this.source = context.createMediaStreamSource(stream);
    this.analyser = context.createAnalyser();
    this.analyser.fftSize = 1024;
    this.buffer = new Float32Array(this.analyser.fftSize);
    this.source.connect(this.analyser);
  }

  /** Root mean square of the last 21 ms, 0..1. */
  rms() {
    this.analyser.getFloatTimeDomainData(this.buffer);
    let sum = 0;
    for (const sample of this.buffer) sum += sample * sample;
    return Math.sqrt(sum / this.buffer.length);
  }

  /** The level as TUICallEngine reports volumes: 0..100 (dBFS from -60 to 0). */
  level() {
    const rms = this.rms();
    if (rms <= 0) return 0;
    const dbfs = 20 * Math.log10(rms);
    return Math.round(Math.max(0, Math.min(100, (dbfs + 60) * 100 / 60)));
  }

  close() {
    this.source.disconnect();
  }
}

/** The camera and microphone, opened and closed on demand, in one MediaStream. */
export class LocalMedia {
  constructor(constraints = {}) {
    this.stream = new MediaStream();
    this.audioConstraints = constraints.audio ?? true;
    this.videoConstraints = constraints.video ?? { width: 640, height: 360 };
    this.onchange = null;
  }

  get audioTrack() { return this.stream.getAudioTracks()[0] ?? null; }
  get videoTrack() { return this.stream.getVideoTracks()[0] ?? null; }
  get microphoneOn() { return this.audioTrack !== null && this.audioTrack.enabled; }
  get cameraOn() { return this.videoTrack !== null; }

  async openMicrophone() {
    if (this.audioTrack) {
      this.audioTrack.enabled = true;
    } else {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: this.audioConstraints });
      this.stream.addTrack(stream.getAudioTracks()[0]);
    }
    this.onchange?.("audio");
  }

  /** Muted, not released: the track keeps its sender, which sends silence. */
  closeMicrophone() {
    if (this.audioTrack) this.audioTrack.enabled = false;
    this.onchange?.("audio");
  }

  async openCamera() {
    if (this.videoTrack) return;
    const stream = await navigator.mediaDevices.getUserMedia({ video: this.videoConstraints });
    this.stream.addTrack(stream.getVideoTracks()[0]);
    this.onchange?.("video");
  }

  /** Released: the camera light goes off and the senders send nothing. */
  closeCamera() {
    const track = this.videoTrack;
    if (!track) return;
    track.stop();
    this.stream.removeTrack(track);
    this.onchange?.("video");
  }

  closeAll() {
    for (const track of this.stream.getTracks()) {
      track.stop();
      this.stream.removeTrack(track);
    }
  }
}

/** A ring (incoming) or ringback (outgoing) tone played with WebAudio while ringing. */
export class Ringer {
  constructor(context) {
    this.context = context;
    this.timer = null;
    this.nodes = [];
    this.playing = null;
  }

  start(kind) {
    if (this.playing === kind) return;
    this.stop();
    this.playing = kind;
    // Incoming: 440+480 Hz, 1 s on, 2 s off; ringback: 440 Hz, 1 s on, 3 s off.
    const freqs = kind === "incoming" ? [440, 480] : [440];
    const period = kind === "incoming" ? 3000 : 4000;
    const burst = () => {
      const now = this.context.currentTime;
      const gain = this.context.createGain();
      gain.gain.setValueAtTime(0.15, now);
      gain.gain.setValueAtTime(0, now + 1);
      gain.connect(this.context.destination);
      for (const freq of freqs) {
        const osc = this.context.createOscillator();
        osc.frequency.value = freq;
        osc.connect(gain);
        osc.start(now);
        osc.stop(now + 1);
      }
    };
    burst();
    this.timer = setInterval(burst, period);
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
    this.playing = null;
  }
}
