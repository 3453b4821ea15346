// The book's in-browser demo (book/demo.md): one cell picture -> the method's preprocessing -> the int8 ONNX
// CNN in onnxruntime-web -> P(ALL) and the class activation map. Everything runs in this page; nothing is sent.
//
// The preprocessing is Python's (allkit.data.decode_cell) step for step, so that the page and Python give the
// model the same pixels: torchvision's centre crop (Python's round-half-to-even included), then Pillow's
// bilinear resize, whose fixed-point arithmetic is reproduced below (tests/test_web_demo.py compares the
// pixels, the probabilities and the heatmap with Python's).
(function () {
  "use strict";

  const BUILD = window.ALLKIT_DEMO_BUILD || null;
  const HERE = document.currentScript.src.replace(/[^/]*$/, ""); // .../demo/ of the built book
  const MAX_SIDE = 4096; // pixels a side: a C-NMC cell picture is 450
  const MAX_BYTES = 50e6;
  const PRECISION_BITS = 22; // Pillow's: 32 - 8 - 2
  const FROM_A_FILE = "This page was opened from a file, and browsers do not let such a page read the files next to it. Serve the book over HTTP (python -m http.server -d _build/html) and open it from there.";

  const state = { session: null, loading: null, firstCallMs: null, last: null, busy: false };
  window.allkitDemo = state; // the browser test reads the last result here

  // ---------------------------------------------------------------- preprocessing (Python's, exactly)

  function pyRound(x) {
    // Python's round(): halves go to the even neighbour
    const floor = Math.floor(x);
    const diff = x - floor;
    if (diff > 0.5) return floor + 1;
    if (diff < 0.5) return floor;
    return floor % 2 === 0 ? floor : floor + 1;
  }

  function cropBox(width, height, ratio) {
    // torchvision.transforms.functional.center_crop of a square of ratio x the shorter side
    const shorter = Math.min(width, height);
    const side = Math.max(1, Math.min(shorter, pyRound(ratio * shorter)));
    return { left: pyRound((width - side) / 2), top: pyRound((height - side) / 2), side: side };
  }

  function coefficients(inSize, outSize) {
    // Pillow's precompute_coeffs + normalize_coeffs_8bpc for the bilinear filter (src/libImaging/Resample.c)
    const scale = inSize / outSize;
    const filterScale = Math.max(scale, 1.0);
    const support = 1.0 * filterScale;
    const ksize = Math.ceil(support) * 2 + 1;
    const bounds = new Int32Array(outSize * 2);
    const kk = new Int32Array(outSize * ksize);
    const weights = new Float64Array(ksize);
    for (let xx = 0; xx < outSize; xx++) {
      const center = (xx + 0.5) * scale;
      const ss = 1.0 / filterScale;
      let xmin = Math.trunc(center - support + 0.5);
      if (xmin < 0) xmin = 0;
      let xmax = Math.trunc(center + support + 0.5);
      if (xmax > inSize) xmax = inSize;
      xmax -= xmin;
      let ww = 0.0;
      for (let x = 0; x < xmax; x++) {
        let t = Math.abs((x + xmin - center + 0.5) * ss);
        const w = t < 1.0 ? 1.0 - t : 0.0;
        weights[x] = w;
        ww += w;
      }
      for (let x = 0; x < xmax; x++) {
        const k = ww !== 0.0 ? weights[x] / ww : weights[x];
        kk[xx * ksize + x] = k < 0 ? Math.trunc(-0.5 + k * (1 << PRECISION_BITS)) : Math.trunc(0.5 + k * (1 << PRECISION_BITS));
      }
      bounds[xx * 2] = xmin;
      bounds[xx * 2 + 1] = xmax;
    }
    return { ksize: ksize, bounds: bounds, kk: kk };
  }

  function clip8(sum) {
    const v = Math.floor(sum / (1 << PRECISION_BITS)); // C's arithmetic shift
    return v < 0 ? 0 : v > 255 ? 255 : v;
  }

  function resizeRGB(src, side, size) {
    // src: RGB bytes of a side x side square; Pillow resizes horizontally, then vertically, rounding to
    // bytes in between (a pass is skipped when that side does not change)
    if (side === size) return src;
    const c = coefficients(side, size);
    const mid = new Uint8Array(side * size * 3);
    for (let y = 0; y < side; y++) {
      for (let xx = 0; xx < size; xx++) {
        const xmin = c.bounds[xx * 2], xmax = c.bounds[xx * 2 + 1], k = xx * c.ksize;
        let s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
        for (let x = 0; x < xmax; x++) {
          const p = (y * side + x + xmin) * 3, w = c.kk[k + x];
          s0 += src[p] * w; s1 += src[p + 1] * w; s2 += src[p + 2] * w;
        }
        const q = (y * size + xx) * 3;
        mid[q] = clip8(s0); mid[q + 1] = clip8(s1); mid[q + 2] = clip8(s2);
      }
    }
    const out = new Uint8Array(size * size * 3);
    for (let yy = 0; yy < size; yy++) {
      const ymin = c.bounds[yy * 2], ymax = c.bounds[yy * 2 + 1], k = yy * c.ksize;
      for (let x = 0; x < size; x++) {
        let s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
        for (let y = 0; y < ymax; y++) {
          const p = ((y + ymin) * size + x) * 3, w = c.kk[k + y];
          s0 += mid[p] * w; s1 += mid[p + 1] * w; s2 += mid[p + 2] * w;
        }
        const q = (yy * size + x) * 3;
        out[q] = clip8(s0); out[q + 1] = clip8(s1); out[q + 2] = clip8(s2);
      }
    }
    return out;
  }

  function toInput(rgb, size) {
    // uint8 HWC -> float32 NCHW in [0, 1], rounded as numpy's float32 x * float32(1/255)
    const scale = Math.fround(1 / 255);
    const data = new Float32Array(3 * size * size);
    for (let i = 0; i < size * size; i++) {
      for (let ch = 0; ch < 3; ch++) data[ch * size * size + i] = Math.fround(rgb[i * 3 + ch] * scale);
    }
    return data;
  }

  // ---------------------------------------------------------------- the class activation map, drawn

  function camHeatmap(cam, h, w, size) {
    // allkit.deploy.cam_heatmap: ReLU, scale to [0, 1], bilinear resize (pixel centres), scale again
    let map = Float64Array.from(cam, (v) => Math.max(v, 0));
    const scaled = (values) => {
      let lo = Infinity, hi = -Infinity;
      for (const v of values) { if (v < lo) lo = v; }
      for (let i = 0; i < values.length; i++) { values[i] -= lo; if (values[i] > hi) hi = values[i]; }
      for (let i = 0; i < values.length; i++) values[i] /= 1e-7 + hi;
      return values;
    };
    map = scaled(map);
    const axis = (n) => {
      const low = new Int32Array(size), high = new Int32Array(size), frac = new Float64Array(size);
      for (let i = 0; i < size; i++) {
        const where = Math.min(Math.max((i + 0.5) * (n / size) - 0.5, 0), n - 1);
        low[i] = Math.floor(where); high[i] = Math.min(low[i] + 1, n - 1); frac[i] = where - low[i];
      }
      return { low: low, high: high, frac: frac };
    };
    const rows = axis(h), cols = axis(w);
    const tall = new Float64Array(size * w);
    for (let i = 0; i < size; i++) {
      for (let j = 0; j < w; j++) {
        tall[i * w + j] = map[rows.low[i] * w + j] * (1 - rows.frac[i]) + map[rows.high[i] * w + j] * rows.frac[i];
      }
    }
    const out = new Float64Array(size * size);
    for (let i = 0; i < size; i++) {
      for (let j = 0; j < size; j++) {
        out[i * size + j] = tall[i * w + cols.low[j]] * (1 - cols.frac[j]) + tall[i * w + cols.high[j]] * cols.frac[j];
      }
    }
    return Float32Array.from(scaled(out));
  }

  function jet(v) {
    const c = (x) => Math.round(255 * Math.min(Math.max(x, 0), 1));
    return [c(1.5 - Math.abs(4 * v - 3)), c(1.5 - Math.abs(4 * v - 2)), c(1.5 - Math.abs(4 * v - 1))];
  }

  function draw(canvas, rgb, size, heat) {
    canvas.width = size; canvas.height = size;
    const context = canvas.getContext("2d");
    const image = context.createImageData(size, size);
    for (let i = 0; i < size * size; i++) {
      const colour = heat ? jet(heat[i]) : null;
      for (let ch = 0; ch < 3; ch++) {
        image.data[i * 4 + ch] = heat ? Math.round(0.5 * rgb[i * 3 + ch] + 0.5 * colour[ch]) : rgb[i * 3 + ch];
      }
      image.data[i * 4 + 3] = 255;
    }
    context.putImageData(image, 0, 0);
  }

  // ---------------------------------------------------------------- reading a picture, with its checks

  class Refused extends Error {}

  function loadImage(blob, name) {
    return new Promise((resolve, reject) => {
      const url = URL.createObjectURL(blob);
      const image = new Image();
      image.onload = () => resolve({ image: image, url: url });
      image.onerror = () => {
        URL.revokeObjectURL(url);
        reject(new Refused(`"${name}" is not an image this browser can read: choose a PNG, JPEG, BMP or WebP picture of one cell.`));
      };
      image.src = url;
    });
  }

  async function readPixels(blob, name) {
    if (blob.size > MAX_BYTES) {
      throw new Refused(`"${name}" is ${(blob.size / 1e6).toFixed(0)} MB; this demo takes pictures up to ${MAX_BYTES / 1e6} MB (a C-NMC cell is under 1 MB).`);
    }
    const { image, url } = await loadImage(blob, name);
    try {
      const width = image.naturalWidth, height = image.naturalHeight;
      if (!width || !height) throw new Refused(`"${name}" has no pixels this browser can read.`);
      if (width > MAX_SIDE || height > MAX_SIDE) {
        // refused before decoding: a 10,000 x 10,000 picture is 400 MB of pixels
        throw new Refused(`"${name}" is ${width} × ${height} pixels; this demo takes pictures of one cell up to ${MAX_SIDE} pixels a side (C-NMC's are 450 × 450). Crop it to one cell first.`);
      }
      const bitmap = await createImageBitmap(image, { premultiplyAlpha: "none", colorSpaceConversion: "none" });
      const canvas = document.createElement("canvas");
      canvas.width = width; canvas.height = height;
      const context = canvas.getContext("2d", { willReadFrequently: true });
      context.drawImage(bitmap, 0, 0);
      bitmap.close();
      const rgba = context.getImageData(0, 0, width, height).data;
      let grey = true, opaque = true;
      for (let i = 0; i < rgba.length; i += 4) {
        if (rgba[i] !== rgba[i + 1] || rgba[i] !== rgba[i + 2]) grey = false;
        if (rgba[i + 3] !== 255) opaque = false;
      }
      if (!opaque) {
        throw new Refused(`"${name}" has transparent pixels (RGBA); the model was trained on opaque RGB pictures, and what lies under transparent pixels is undefined. Choose an opaque picture.`);
      }
      if (grey) {
        throw new Refused(`"${name}" is grayscale (every pixel has equal red, green and blue); the model was trained on colour pictures of stained cells, so its answer would mean nothing. Choose a colour picture.`);
      }
      return { rgba: rgba, width: width, height: height };
    } finally {
      URL.revokeObjectURL(url);
    }
  }

  function preprocess(picture, model) {
    const box = cropBox(picture.width, picture.height, model.crop_ratio);
    const square = new Uint8Array(box.side * box.side * 3);
    for (let y = 0; y < box.side; y++) {
      for (let x = 0; x < box.side; x++) {
        const p = ((y + box.top) * picture.width + x + box.left) * 4, q = (y * box.side + x) * 3;
        square[q] = picture.rgba[p]; square[q + 1] = picture.rgba[p + 1]; square[q + 2] = picture.rgba[p + 2];
      }
    }
    return resizeRGB(square, box.side, model.image_size);
  }

  // ---------------------------------------------------------------- the model

  function loadModel() {
    if (state.loading) return state.loading;
    const ort = window.ort;
    ort.env.wasm.numThreads = 1;
    ort.env.wasm.simd = true;
    ort.env.wasm.wasmPaths = HERE + "ort/";
    state.loading = fetch(HERE + BUILD.model.file)
      .then((response) => {
        if (!response.ok) throw new Error(`the model file answered HTTP ${response.status}`);
        return response.arrayBuffer();
      })
      .then((bytes) => ort.InferenceSession.create(new Uint8Array(bytes), { executionProviders: ["wasm"] }))
      .then((session) => (state.session = session))
      .catch((err) => {
        state.loading = null;
        const local = location.protocol === "file:";
        throw new Refused(local
          ? FROM_A_FILE
          : `The model could not be loaded (${err.message || err}).`);
      });
    return state.loading;
  }

  async function classify(rgb) {
    const model = BUILD.model, size = model.image_size;
    const tensor = new window.ort.Tensor("float32", toInput(rgb, size), [1, 3, size, size]);
    const start = performance.now();
    const outputs = await state.session.run({ [model.input]: tensor });
    const ms = performance.now() - start;
    if (state.firstCallMs === null) state.firstCallMs = ms;
    const probabilities = Array.from(outputs[model.output].data);
    const cam = outputs[model.cam.name];
    const [, classes, h, w] = cam.dims;
    const predicted = probabilities[1] > probabilities[0] ? 1 : 0;
    const maps = cam.data.subarray(predicted * h * w, (predicted + 1) * h * w);
    return { probabilities: probabilities, predicted: predicted, classes: classes, ms: ms,
             heatmap: camHeatmap(maps, h, w, size), cam: Array.from(cam.data), camShape: [classes, h, w] };
  }

  // ---------------------------------------------------------------- the page

  function element(id) { return document.getElementById(id); }

  function say(text, kind) {
    const box = element("demo-message");
    box.textContent = text || "";
    box.className = "demo-message" + (kind ? " demo-" + kind : "");
  }

  function percent(x) { return (100 * x).toFixed(1) + "%"; }

  async function run(blob, name, label) {
    if (state.busy) return;
    state.busy = true;
    element("demo-result").hidden = true;
    say(`Reading "${name}"…`);
    try {
      const picture = await readPixels(blob, name);
      if (!state.session) {
        say("Loading the model and the runtime (once)…");
        await loadModel();
      }
      const rgb = preprocess(picture, BUILD.model);
      const result = await classify(rgb);
      const names = BUILD.model.class_names;
      draw(element("demo-cell"), rgb, BUILD.model.image_size, null);
      draw(element("demo-heat"), rgb, BUILD.model.image_size, result.heatmap);
      element("demo-call").textContent =
        `${names[result.predicted]}: P(ALL) = ${result.probabilities[1].toFixed(3)}, ` +
        `P(HEM) = ${result.probabilities[0].toFixed(3)}; this call took ${result.ms.toFixed(1)} ms on this device ` +
        `(first call after loading: ${state.firstCallMs.toFixed(1)} ms).` +
        (label ? ` C-NMC labels this cell ${label}: the model is ${names[result.predicted] === label ? "right" : "wrong"} here.` : "");
      element("demo-heat-caption").textContent = `Where the network found evidence for ${names[result.predicted]} (its class activation map).`;
      element("demo-result").hidden = false;
      state.last = { name: name, pixels: Array.from(rgb), ...result, heatmap: Array.from(result.heatmap) };
      state.lastRgb = rgb;
      element("demo-time").disabled = false;
      say("");
    } catch (err) {
      state.last = { name: name, error: err.message };
      say(err instanceof Refused ? err.message : `Something went wrong: ${err.message || err}`, "error");
    } finally {
      state.busy = false;
    }
  }

  async function timeTen() {
    if (!state.lastRgb || state.busy) return;
    state.busy = true;
    try {
      const times = [];
      for (let i = 0; i < 10; i++) times.push((await classify(state.lastRgb)).ms);
      times.sort((a, b) => a - b);
      const median = (times[4] + times[5]) / 2;
      state.timing = { first: state.firstCallMs, median: median, calls: times };
      element("demo-timing").textContent =
        `Median of 10 calls: ${median.toFixed(1)} ms; first call after loading: ${state.firstCallMs.toFixed(1)} ms (${navigator.hardwareConcurrency || "?"} logical CPUs, one thread used).`;
    } finally {
      state.busy = false;
    }
  }

  function describe() {
    const e = BUILD.evaluation, m = BUILD.model;
    const verdict = e.balanced_accuracy - 0.5 < 0.05
      ? `no better than always answering the larger class (balanced accuracy ${e.balanced_accuracy.toFixed(2)}; it calls ${percent(e.predicted_all)} of them ALL)`
      : `balanced accuracy ${e.balanced_accuracy.toFixed(2)} against 0.50 for always answering the larger class`;
    element("demo-facts").textContent =
      `The model: ${m.backbone}, ${(m.bytes / 1e6).toFixed(1)} MB — ${m.source}. ` +
      `On its ${e.cells} test cells of ${e.people} people it scores accuracy ${e.accuracy.toFixed(3)} (always the larger class: ${e.majority.toFixed(3)}) and AUC ${e.auc.toFixed(3)}: ${verdict}. ` +
      "Read its answers as a demonstration of how the call is computed, not as a diagnosis.";
  }

  function showExamples() {
    const list = element("demo-examples");
    if (!BUILD.examples.length) {
      list.textContent = `No example cells in this build (${BUILD.why_no_examples}); choose a picture of your own.`;
      return;
    }
    for (const cell of BUILD.examples) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "demo-example";
      button.title = `${cell.label}, person ${cell.person}: ${cell.file}`;
      button.dataset.file = cell.src;
      const thumb = document.createElement("img");
      thumb.src = HERE + cell.src;
      thumb.alt = `${cell.label} cell of person ${cell.person}`;
      const label = document.createElement("span");
      label.textContent = `${cell.label} · ${cell.person}`;
      button.append(thumb, label);
      button.addEventListener("click", async () => {
        try {
          const response = await fetch(HERE + cell.src);
          if (!response.ok) throw new Error(`HTTP ${response.status}`);
          await run(await response.blob(), cell.src.split("/").pop(), cell.label);
        } catch (err) {
          say(location.protocol === "file:"
            ? FROM_A_FILE
            : `The example could not be read (${err.message || err}).`, "error");
        }
      });
      list.append(button);
    }
    const note = document.createElement("p");
    note.className = "demo-credit";
    note.textContent = `Example cells: ${BUILD.examples_data}; test people, never seen in training.`;
    list.after(note);
  }

  function start() {
    if (!element("allkit-demo")) return;
    if (!BUILD || !BUILD.ort || typeof window.ort === "undefined") {
      element("demo-controls").hidden = true;
      say(`The demo is not in this build: ${BUILD ? BUILD.why_no_ort || "onnxruntime-web did not load" : "the build did not write demo/build.js"}.`, "error");
      return;
    }
    describe();
    showExamples();
    const input = element("demo-file");
    input.addEventListener("change", () => { if (input.files.length) run(input.files[0], input.files[0].name); });
    const drop = element("demo-drop");
    drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("demo-over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("demo-over"));
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      drop.classList.remove("demo-over");
      const file = event.dataTransfer.files[0];
      if (file) run(file, file.name);
    });
    element("demo-time").addEventListener("click", timeTen);
    say("");
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
