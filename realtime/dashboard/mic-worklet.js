// ser dashboard: AudioWorklet that turns the microphone into mono float32 chunks.
// Runs on the audio thread: it only mixes to mono and batches render quanta (128 frames)
// into chunks of `chunkFrames`, then hands each chunk's buffer to the page (transferred,
// not copied). The page sends them to the daemon as pcm_f32le binary frames.
class SerMicCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.chunkFrames = Math.max(128, Math.floor(opts.chunkFrames || 2048));
    this.buffer = new Float32Array(this.chunkFrames);
    this.filled = 0;
    this.stopped = false;
    this.port.onmessage = (event) => {
      if (event.data === "stop") this.stopped = true;
    };
  }

  process(inputs) {
    if (this.stopped) return false;
    const input = inputs[0];
    if (!input || input.length === 0) return true; // nothing connected yet
    const channels = input.length;
    const frames = input[0].length;
    for (let i = 0; i < frames; i++) {
      let sum = 0;
      for (let c = 0; c < channels; c++) sum += input[c][i];
      this.buffer[this.filled++] = sum / channels;
      if (this.filled === this.chunkFrames) {
        this.port.postMessage(this.buffer.buffer, [this.buffer.buffer]);
        this.buffer = new Float32Array(this.chunkFrames);
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("ser-mic-capture", SerMicCapture);
