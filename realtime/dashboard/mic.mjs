// ser dashboard: this browser's microphone as a stream of the daemon's.
// The button and status line, the capture graph (getUserMedia -> mic-worklet.js -> a
// silent sink) and the PCM framing: mono float32 chunks of MIC_CHUNK_S, sent as binary
// pcm_f32le frames. Whether a chunk is sent or dropped, and when the stream starts and
// stops, is the reducer's decision (protocol.mjs); this module only reports and obeys.

export const MIC_CHUNK_S = 0.05; // 50 ms per binary frame
const WORKLET_URL = new URL("mic-worklet.js", import.meta.url).href;
const ON_STATES = new Set(["asking", "waiting", "starting", "streaming"]);

/** Frames per binary frame at a sample rate (the worklet's chunk size). */
export function chunkFrames(sampleRate) {
  return Math.round(sampleRate * MIC_CHUNK_S);
}

/** What the button says and whether it is pressed, for a microphone state. */
export function micButton(micState) {
  const on = ON_STATES.has(micState);
  return { pressed: on, text: on ? "Stop the microphone" : "Use this browser's microphone" };
}

/** Why getUserMedia or the audio graph failed, in words. */
export function failureWords(e) {
  if (e && e.name === "NotAllowedError") return "permission was denied";
  if (e && e.name === "NotFoundError") return "no microphone was found";
  return (e && e.message) || String(e);
}

/**
 * The microphone control. `dispatch` takes reducer events; `getMic()` is the reducer's
 * state.mic; `socket` is the connection ({isOpen, bufferedAmount}), asked about each chunk.
 */
export function createMic({ button, status, dispatch, getMic, socket }) {
  // What the capture holds. A capture still being set up writes here too, so a release while
  // the browser asks leaves the late parts to the release that the reducer asks for on mic-ready.
  const cap = { ctx: null, media: null, source: null, node: null };

  function release() {
    const { ctx, media, source, node } = cap;
    cap.ctx = cap.media = cap.source = cap.node = null;
    if (node) {
      try {
        node.port.postMessage("stop");
        node.disconnect();
      } catch (e) {
        /* gone */
      }
    }
    if (source) source.disconnect();
    if (media) media.getTracks().forEach((t) => t.stop());
    if (ctx) ctx.close().catch(() => {});
  }

  async function start() {
    dispatch({ type: "mic-asking" });
    if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      dispatch({
        type: "mic-failed",
        message: "This browser only allows the microphone on https:// or http://localhost pages. Open the dashboard at http://localhost:PORT/ or http://127.0.0.1:PORT/.",
      });
      return;
    }
    if (!window.AudioWorkletNode) {
      dispatch({ type: "mic-failed", message: "This browser has no AudioWorklet support, which the microphone needs." });
      return;
    }
    let sampleRate;
    try {
      sampleRate = await capture();
    } catch (e) {
      release();
      dispatch({ type: "mic-failed", message: "Cannot use the microphone: " + failureWords(e) + "." });
      return;
    }
    dispatch({ type: "mic-ready", sampleRate: sampleRate });
  }

  async function capture() {
    cap.media = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      video: false,
    });
    const ctx = (cap.ctx = new (window.AudioContext || window.webkitAudioContext)());
    await ctx.audioWorklet.addModule(WORKLET_URL);
    cap.source = ctx.createMediaStreamSource(cap.media);
    cap.node = new AudioWorkletNode(ctx, "ser-mic-capture", {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { chunkFrames: chunkFrames(ctx.sampleRate) },
    });
    // Each message is one chunk's Float32Array buffer: little-endian on every platform browsers run on.
    cap.node.port.onmessage = (event) =>
      dispatch({ type: "mic-chunk", data: event.data, open: socket.isOpen(), buffered: socket.bufferedAmount() });
    // A silent sink keeps the graph pulled in every browser without playing the mic back.
    const sink = ctx.createGain();
    sink.gain.value = 0;
    cap.source.connect(cap.node);
    cap.node.connect(sink);
    sink.connect(ctx.destination);
    if (ctx.state === "suspended") await ctx.resume();
    cap.media.getAudioTracks().forEach((t) => {
      t.onended = () => dispatch({ type: "mic-stop", message: "The microphone was disconnected." });
    });
    return ctx.sampleRate;
  }

  button.addEventListener("click", () => {
    if (ON_STATES.has(getMic().state)) dispatch({ type: "mic-stop" });
    else start();
  });

  return {
    release,
    render(mic) {
      const view = micButton(mic.state);
      button.setAttribute("aria-pressed", view.pressed ? "true" : "false");
      button.textContent = view.text;
      status.dataset.state = mic.state;
      status.textContent = mic.message;
    },
  };
}
