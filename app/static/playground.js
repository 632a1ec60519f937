// sdserve playground: a plain client of the public HTTP API (no framework, no build step).
// Catalog from GET /v1/models, /v1/schedulers, /v1/styles, /v1/loras; inputs through POST /v1/uploads;
// jobs through POST /v1/<task>; trainings through a multipart POST /v1/trainings (a folder's images and
// captions); progress, previews, the loss curve and validation images from the Server-Sent Events, read with
// fetch() so that the API key can travel as a bearer token (EventSource cannot send headers).

const KEY_STORE = "sdserve.apiKey";
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const state = {
  models: [],
  loras: { data: [], embeddings: [] },
  input: null, // {blob, name, width, height, upload: Promise<upload>}
  maskPainted: false,
  dataset: [], // the Files of the training to start: images and .txt captions
};

// --- HTTP -------------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(problem, status) {
    super(problem.title || `HTTP ${status}`);
    this.problem = problem;
    this.status = status;
  }
}

function apiUrl(path) {
  return new URL(path, document.baseURI).href;
}

function authHeaders(extra = {}) {
  const key = $("#api-key").value.trim();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

async function call(path, options = {}) {
  let response;
  try {
    response = await fetch(apiUrl(path), { ...options, headers: authHeaders(options.headers) });
  } catch (error) {
    throw new ApiError({ title: "The gateway cannot be reached", detail: String(error) }, 0);
  }
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    const problem = typeof body === "object" && body ? body : { title: `HTTP ${response.status}`, detail: String(body).slice(0, 300) };
    throw new ApiError(problem, response.status);
  }
  return body;
}

async function uploadBlob(blob, name, kind) {
  const form = new FormData();
  form.append("file", blob, name);
  form.append("kind", kind);
  return call("v1/uploads", { method: "POST", body: form });
}

// --- problems ---------------------------------------------------------------------------------------
function renderProblem(box, problem) {
  box.replaceChildren();
  const title = document.createElement("strong");
  title.textContent = problem.title || "Error";
  box.append(title);
  if (problem.detail && !(problem.errors && problem.errors.length)) box.append(`: ${problem.detail}`);
  if (problem.errors && problem.errors.length) {
    const list = document.createElement("ul");
    for (const error of problem.errors) {
      const item = document.createElement("li");
      item.textContent = `${error.field}: ${error.message}`;
      list.append(item);
    }
    box.append(list);
  }
  box.hidden = false;
}

function showProblem(error) {
  const problem = error instanceof ApiError ? error.problem : { title: "Error", detail: String(error) };
  renderProblem($("#problem"), problem);
  for (const fieldError of problem.errors || []) {
    const name = String(fieldError.field || "").split(".")[1];
    const input = name && $("#job-form").elements.namedItem(name);
    if (input && input.classList) input.classList.add("invalid");
  }
}

function clearProblem() {
  $("#problem").hidden = true;
  $$(".invalid").forEach((node) => node.classList.remove("invalid"));
}

// --- catalog ----------------------------------------------------------------------------------------
function option(value, text, selected = false) {
  const node = document.createElement("option");
  node.value = value;
  node.textContent = text;
  node.selected = selected;
  return node;
}

async function loadCatalog() {
  try {
    const [models, schedulers, styles, loras] = await Promise.all([
      call("v1/models"), call("v1/schedulers"), call("v1/styles"), call("v1/loras"),
    ]);
    state.models = models.data;
    state.loras = loras;
    const previous = $("#model").value;
    $("#model").replaceChildren(...models.data.map((m) =>
      option(m.name, `${m.name} (${m.family}, ${m.native_size}px)`, previous ? m.name === previous : m.default)));
    const base = $("#train-model").value;
    $("#train-model").replaceChildren(...models.data.map((m) =>
      option(m.name, `${m.name} (${m.family})`, base ? m.name === base : m.default)));
    $("#scheduler").replaceChildren(option("", "model default"), ...schedulers.data.map((s) => option(s, s)));
    $("#style").replaceChildren(option("", "none"), ...styles.data.map((s) => option(s.name, s.name)));
    onModelChange();
    document.body.dataset.catalog = "ready";
  } catch (error) {
    showProblem(error);
  }
}

function selectedModel() {
  return state.models.find((m) => m.name === $("#model").value);
}

function onModelChange() {
  const model = selectedModel();
  if (!model) return;
  $("#width").placeholder = $("#height").placeholder = model.native_size;
  $("#steps").placeholder = model.default_steps;
  $("#guidance_scale").placeholder = model.default_guidance;
  $("#scheduler").options[0].textContent = `model default (${model.default_scheduler})`;
  const workers = model.workers.length ? `${model.workers.length} worker(s)${model.warm ? ", warm" : ""}` : "no live worker";
  $("#model-info").textContent = `${model.description} ${workers}; ${model.queued} queued.`;
  const fits = (item) => item.family === model.family && (!item.base_models.length || item.base_models.includes(model.name));
  const box = $("#loras");
  $$(".lora", box).forEach((node) => node.remove());
  for (const lora of state.loras.data.filter(fits)) {
    const row = document.createElement("label");
    row.className = "lora";
    row.title = lora.description + (lora.trigger_words.length ? ` Trigger words: ${lora.trigger_words.join(", ")}` : "");
    const check = Object.assign(document.createElement("input"), { type: "checkbox", value: lora.name });
    const scale = Object.assign(document.createElement("input"), {
      type: "number", min: -2, max: 2, step: 0.1, placeholder: lora.default_scale,
    });
    scale.dataset.lora = lora.name;
    row.append(check, lora.name, scale);
    box.append(row);
  }
  const tokens = state.loras.embeddings.filter(fits).map((e) => e.token);
  $("#loras-empty").textContent = (box.querySelector(".lora") ? "" : "None for this model. ") +
    (tokens.length ? `Embeddings (write the token in the prompt): ${tokens.join(" ")}` : "");
  $("#loras-empty").hidden = !$("#loras-empty").textContent;
}

// --- input image and mask ---------------------------------------------------------------------------
function currentTask() {
  return $("#job-form").elements.namedItem("task").value;
}

function setTask(task) {
  for (const radio of $$('input[name="task"]')) radio.checked = radio.value === task;
  document.body.dataset.task = task;
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the file is not an image the browser can show"));
    image.src = url;
  });
}

async function useInput(blob, name) {
  clearProblem();
  const url = URL.createObjectURL(blob);
  let image;
  try {
    image = await loadImage(url);
  } catch (error) {
    showProblem(error);
    return;
  } finally {
    URL.revokeObjectURL(url);
  }
  const { naturalWidth: width, naturalHeight: height } = image;
  for (const canvas of [$("#image-canvas"), $("#mask-overlay"), state.maskCanvas]) {
    canvas.width = width;
    canvas.height = height;
  }
  $("#image-canvas").getContext("2d").drawImage(image, 0, 0);
  clearMask();
  $("#paint-area").hidden = false;
  const info = $("#image-info");
  info.textContent = `${name}: ${width}×${height}, uploading…`;
  const upload = uploadBlob(blob, name, "image");
  state.input = { blob, name, width, height, upload };
  try {
    const record = await upload;
    if (state.input && state.input.upload === upload) info.textContent = `${name}: ${width}×${height}, uploaded as ${record.id}`;
  } catch (error) {
    info.textContent = `${name}: refused`;
    showProblem(error);
  }
}

function clearMask() {
  const mask = state.maskCanvas.getContext("2d");
  mask.fillStyle = "#000";
  mask.fillRect(0, 0, state.maskCanvas.width, state.maskCanvas.height);
  const overlay = $("#mask-overlay");
  overlay.getContext("2d").clearRect(0, 0, overlay.width, overlay.height);
  state.maskPainted = false;
  document.body.dataset.maskPainted = "false";
}

function setUpPainting() {
  const overlay = $("#mask-overlay");
  let last = null;
  const point = (event) => {
    const box = overlay.getBoundingClientRect();
    const scale = overlay.width / box.width;
    return { x: (event.clientX - box.left) * scale, y: (event.clientY - box.top) * scale, scale };
  };
  const stroke = (from, to) => {
    const erase = $("#erase").checked;
    const width = Number($("#brush").value) * to.scale;
    const targets = [
      [overlay.getContext("2d"), erase ? "destination-out" : "source-over", "#ff2050"],
      [state.maskCanvas.getContext("2d"), "source-over", erase ? "#000" : "#fff"],
    ];
    for (const [ctx, mode, colour] of targets) {
      ctx.globalCompositeOperation = mode;
      ctx.strokeStyle = ctx.fillStyle = colour;
      ctx.lineWidth = width;
      ctx.lineCap = ctx.lineJoin = "round";
      ctx.beginPath();
      ctx.moveTo(from.x, from.y);
      ctx.lineTo(to.x + 0.01, to.y);
      ctx.stroke();
      ctx.globalCompositeOperation = "source-over";
    }
    if (!erase) {
      state.maskPainted = true;
      document.body.dataset.maskPainted = "true";
    }
  };
  overlay.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    overlay.setPointerCapture(event.pointerId);
    last = point(event);
    stroke(last, last);
  });
  overlay.addEventListener("pointermove", (event) => {
    if (!last) return;
    const next = point(event);
    stroke(last, next);
    last = next;
  });
  const stop = () => { last = null; };
  overlay.addEventListener("pointerup", stop);
  overlay.addEventListener("pointercancel", stop);
  $("#clear-mask").addEventListener("click", clearMask);
}

function maskBlob() {
  return new Promise((resolve) => state.maskCanvas.toBlob(resolve, "image/png"));
}

// --- submit -----------------------------------------------------------------------------------------
function numberField(name) {
  const input = $("#job-form").elements.namedItem(name);
  if (!input || input.value === "") return undefined;
  return Number(input.value);
}

async function buildBody(task) {
  const form = $("#job-form").elements;
  const body = { prompt: form.namedItem("prompt").value };
  const negative = form.namedItem("negative_prompt").value;
  if (negative) body.negative_prompt = negative;
  if ($("#model").value) body.model = $("#model").value;
  const numbers = ["steps", "guidance_scale", "seed", "num_images"];
  if (task === "txt2img" || task === "img2img") numbers.push("width", "height");
  if (task !== "txt2img") numbers.push("strength");
  if (task === "inpaint") numbers.push("mask_grow", "mask_blur");
  if (task === "outpaint") numbers.push("left", "right", "top", "bottom", "feather");
  for (const name of numbers) {
    const value = numberField(name);
    if (value !== undefined) body[name] = value;
  }
  if ($("#scheduler").value) body.scheduler = $("#scheduler").value;
  if ($("#style").value) body.style = $("#style").value;
  const loras = $$(".lora").filter((row) => row.querySelector("input[type=checkbox]").checked).map((row) => {
    const scale = row.querySelector("input[type=number]").value;
    return scale === "" ? { name: row.querySelector("input").value } : { name: row.querySelector("input").value, scale: Number(scale) };
  });
  if (loras.length) body.loras = loras;
  if (task !== "txt2img") {
    if (!state.input) throw new ApiError({ title: "Choose an input image first" }, 0);
    body.image = (await state.input.upload).id;
  }
  if (task === "outpaint") body.fill = form.namedItem("fill").value;
  if (task === "inpaint") {
    if (!state.maskPainted) throw new ApiError({ title: "Paint the part of the image to repaint" }, 0);
    body.mask = (await uploadBlob(await maskBlob(), "mask.png", "mask")).id;
  }
  return body;
}

async function submit(event) {
  event.preventDefault();
  clearProblem();
  const button = $("#submit");
  button.disabled = true;
  try {
    const task = currentTask();
    const body = await buildBody(task);
    const job = await call(`v1/${task}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const card = addCard(task, body, job);
    if (TERMINAL.has(job.status)) renderJob(card, job);
    else follow(job, card);
  } catch (error) {
    showProblem(error);
  } finally {
    button.disabled = false;
  }
}

// --- jobs and the gallery ---------------------------------------------------------------------------
function shellQuote(text) {
  return `'${text.replaceAll("'", "'\\''")}'`;
}

function curlCommand(task, body) {
  const parts = [`curl -X POST ${shellQuote(apiUrl(`v1/${task}`))}`, "-H 'Content-Type: application/json'"];
  if ($("#api-key").value.trim()) parts.push('-H "Authorization: Bearer $SDSERVE_API_KEY"');
  parts.push(`-d ${shellQuote(JSON.stringify(body))}`);
  return parts.join(" \\\n  ");
}

async function copyCurl(card, task, body) {
  const text = curlCommand(task, body);
  const pre = $(".curl", card);
  pre.textContent = text;
  pre.hidden = false;
  const button = $(".copy-curl", card);
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    const range = document.createRange();
    range.selectNodeContents(pre);
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    button.textContent = document.execCommand("copy") ? "Copied" : "Select and copy";
  }
  setTimeout(() => { button.textContent = "Copy as curl"; }, 2000);
}

function addCard(task, body, job) {
  const card = $("#job-card").content.firstElementChild.cloneNode(true);
  card.dataset.jobId = job.id;
  card.dataset.task = task;
  card.dataset.previews = "0";
  $(".job-task", card).textContent = task;
  $(".job-model", card).textContent = job.model;
  $(".job-id", card).textContent = job.id;
  $(".job-prompt", card).textContent = body.prompt;
  $(".job-prompt", card).title = body.prompt;
  setStatus(card, job.status, job.queue_position);
  $(".copy-curl", card).addEventListener("click", () => copyCurl(card, task, body));
  $(".cancel", card).addEventListener("click", async () => {
    try {
      const answer = await call(`v1/jobs/${job.id}/cancel`, { method: "POST" });
      if (answer.cancel_requested && !TERMINAL.has(answer.status)) setStatus(card, "canceling");
    } catch (error) {
      renderProblem($(".job-error", card), error.problem || { title: String(error) });
    }
  });
  $("#gallery").prepend(card);
  $("#gallery-empty").hidden = true;
  return card;
}

function setStatus(card, status, position) {
  card.dataset.status = status;
  $(".job-status", card).textContent = status === "queued" && position != null ? `queued (position ${position})` : status;
}

function onEvent(card, event) {
  const data = event.data;
  if (event.event === "queued") setStatus(card, "queued", data.queue_position);
  else if (event.event === "started") setStatus(card, "running");
  else if (event.event === "progress") {
    if (card.dataset.status !== "canceling") setStatus(card, "running");
    $("progress", card).value = data.fraction ?? (data.total ? data.step / data.total : 0);
    $(".job-step", card).textContent = `step ${data.step}/${data.total}`;
    card.dataset.step = data.step;
    if (data.preview) {
      const preview = $(".job-preview", card);
      preview.src = data.preview;
      preview.hidden = false;
      card.dataset.previews = String(Number(card.dataset.previews) + 1);
    }
  } else if (TERMINAL.has(event.event)) {
    renderJob(card, data.job);
    return true;
  }
  return false;
}

function renderJob(card, job) {
  setStatus(card, job.status);
  card.dataset.ended = "true";
  $(".cancel", card).hidden = true;
  $(".job-preview", card).hidden = true;
  if (job.error) renderProblem($(".job-error", card), job.error);
  const list = $(".job-images", card);
  for (const image of job.images || []) {
    const item = $("#image-card").content.firstElementChild.cloneNode(true);
    $("img", item).src = image.url;
    $("img", item).alt = `image ${image.index}, seed ${image.seed}`;
    $("a", item).href = image.url;
    $(".seed", item).textContent = `seed ${image.seed}`;
    $(".dims", item).textContent = `${image.width}×${image.height}`;
    item.dataset.seed = image.seed;
    $(".use-input", item).addEventListener("click", async () => {
      try {
        const response = await fetch(image.url);
        if (!response.ok) throw new Error(`download failed: HTTP ${response.status}`);
        if (currentTask() === "txt2img") setTask("img2img");
        await useInput(await response.blob(), `${job.id}-${image.index}.png`);
        $("#image-input").scrollIntoView({ behavior: "smooth" });
      } catch (error) {
        showProblem(error);
      }
    });
    list.append(item);
  }
  if (job.mask_url) {
    const link = Object.assign(document.createElement("a"), { href: job.mask_url, textContent: "final mask", target: "_blank" });
    list.append(link);
  }
}

async function* readEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let pending = { event: "message", data: [], id: null };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    for (;;) {
      const end = buffer.search(/\r\n|\r|\n/);
      if (end < 0 || (buffer[end] === "\r" && end === buffer.length - 1)) break; // wait for the rest of a CRLF
      const line = buffer.slice(0, end);
      buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 2 : 1));
      if (line === "") {
        if (pending.data.length) {
          try {
            yield { event: pending.event, id: pending.id, data: JSON.parse(pending.data.join("\n")) };
          } catch (error) {
            if (!(error instanceof SyntaxError)) throw error;
          }
        }
        pending = { event: "message", data: [], id: null };
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const key = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (key === "event") pending.event = text;
        else if (key === "data") pending.data.push(text);
        else if (key === "id") pending.id = text;
      }
    }
  }
}

async function followStream(path, handle, errorBox) {
  let lastId = null;
  let failures = 0;
  for (;;) {
    try {
      const headers = authHeaders({ Accept: "text/event-stream", ...(lastId ? { "Last-Event-ID": lastId } : {}) });
      const response = await fetch(apiUrl(path), { headers, cache: "no-store" });
      if (!response.ok) {
        const problem = await response.json().catch(() => ({ title: `HTTP ${response.status}` }));
        throw new ApiError(problem, response.status);
      }
      for await (const event of readEvents(response.body)) {
        lastId = event.id || lastId;
        failures = 0;
        if (handle(event)) return;
      }
    } catch (error) {
      if (error instanceof ApiError && error.status >= 400 && error.status < 500) {
        renderProblem(errorBox, error.problem);
        return;
      }
      failures += 1;
      if (failures > 8) {
        renderProblem(errorBox, { title: "Lost the event stream", detail: String(error) });
        return;
      }
    }
    await sleep(Math.min(250 * 2 ** failures, 5000)); // the stream ended early: resume after the last event
  }
}

function follow(job, card) {
  return followStream(`v1/jobs/${job.id}/events`, (event) => onEvent(card, event), $(".job-error", card));
}

// --- trainings --------------------------------------------------------------------------------------
const IMAGE_NAME = /\.(png|jpe?g|webp)$/i;
const CAPTION_NAME = /\.txt$/i;
const CURVE = { width: 300, height: 100, pad: 6 };
const curves = new WeakMap(); // card -> Map(step -> loss)
const clocks = new WeakMap(); // card -> {time, step}: where the ETA counts from

function pickDataset(input, other) {
  other.value = "";
  // A folder: only its own files (not its subfolders'), images and captions, no hidden files.
  state.dataset = Array.from(input.files).filter((file) => {
    const depth = (file.webkitRelativePath || file.name).split("/").length;
    return depth <= 2 && !file.name.startsWith(".") && (IMAGE_NAME.test(file.name) || CAPTION_NAME.test(file.name));
  });
  const images = state.dataset.filter((file) => IMAGE_NAME.test(file.name)).length;
  const captions = state.dataset.length - images;
  $("#train-form").dataset.images = String(images);
  $("#train-dataset").textContent = images
    ? `${images} image(s), ${captions} caption(s)`
    : "No images there: choose a folder or files with PNG, JPEG or WEBP images.";
}

function trainRequest() {
  const form = $("#train-form").elements;
  const value = (name) => form.namedItem(name).value.trim();
  const body = { method: value("method"), name: value("name"), trigger_word: value("trigger_word") };
  if (value("base_model")) body.base_model = value("base_model");
  if (body.method === "textual_inversion" && value("initializer_token")) body.initializer_token = value("initializer_token");
  const hyperparameters = {};
  for (const name of ["steps", "rank", "learning_rate", "batch_size", "resolution"]) {
    if (name === "rank" && body.method !== "lora") continue;
    if (value(name) !== "") hyperparameters[name] = Number(value(name));
  }
  if (Object.keys(hyperparameters).length) body.hyperparameters = hyperparameters;
  if (value("validation")) {
    body.validation = { prompts: [value("validation")] };
    if (value("every") !== "") body.validation.every = Number(value("every"));
  }
  return body;
}

function showTrainProblem(error) {
  const problem = error instanceof ApiError ? error.problem : { title: "Error", detail: String(error) };
  renderProblem($("#train-problem"), problem);
  const form = $("#train-form").elements;
  for (const fieldError of problem.errors || []) {
    const name = String(fieldError.field || "").split(".").pop();
    const input = ["files", "dataset"].includes(name) ? $("#train-folder") : form.namedItem(name);
    if (input && input.classList) input.classList.add("invalid");
  }
}

function clearTrainProblem() {
  $("#train-problem").hidden = true;
  $$("#train-form .invalid").forEach((node) => node.classList.remove("invalid"));
}

async function submitTraining(event) {
  event.preventDefault();
  clearTrainProblem();
  const button = $("#train-submit");
  button.disabled = true;
  try {
    if (!state.dataset.some((file) => IMAGE_NAME.test(file.name))) {
      throw new ApiError({ title: "Choose a folder or files with images to train on" }, 0);
    }
    const form = new FormData();
    form.append("request", JSON.stringify(trainRequest()));
    for (const file of state.dataset) form.append("files", file, file.name);
    const training = await call("v1/trainings", { method: "POST", body: form });
    const card = addTrainingCard(training);
    if (TERMINAL.has(training.status)) renderTraining(card, training);
    else followStream(`v1/trainings/${training.id}/events`, (e) => onTrainingEvent(card, e), $(".job-error", card));
  } catch (error) {
    showTrainProblem(error);
  } finally {
    button.disabled = false;
  }
}

function addTrainingCard(training) {
  const card = $("#training-card").content.firstElementChild.cloneNode(true);
  card.dataset.trainingId = training.id;
  card.dataset.points = "0";
  card.dataset.validations = "0";
  curves.set(card, new Map());
  $(".training-method", card).textContent = training.method === "lora" ? "LoRA" : "embedding";
  $(".training-name", card).textContent = `${training.name} on ${training.base_model}`;
  $(".job-id", card).textContent = training.id;
  setStatus(card, training.status, training.queue_position);
  $(".cancel", card).addEventListener("click", async () => {
    try {
      const answer = await call(`v1/trainings/${training.id}/cancel`, { method: "POST" });
      if (answer.cancel_requested && !TERMINAL.has(answer.status)) setStatus(card, "canceling");
    } catch (error) {
      renderProblem($(".job-error", card), error.problem || { title: String(error) });
    }
  });
  $("#trainings").prepend(card);
  return card;
}

function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

function showTrainingStep(card, step, total) {
  card.dataset.step = step;
  card.dataset.total = total;
  $("progress", card).value = total ? step / total : 0;
  $(".training-step", card).textContent = `step ${step}/${total}`;
}

function drawCurve(card) {
  const points = [...curves.get(card).entries()].sort((a, b) => a[0] - b[0]);
  const total = Math.max(Number(card.dataset.total) || 0, ...points.map(([step]) => step), 1);
  const losses = points.map(([, loss]) => loss);
  const low = Math.min(...losses);
  const high = Math.max(...losses);
  const { width, height, pad } = CURVE;
  const y = (loss) => pad + (high > low ? (high - loss) / (high - low) : 0.5) * (height - 2 * pad);
  const line = points.map(([step, loss]) => `${((step / total) * width).toFixed(1)},${y(loss).toFixed(1)}`);
  if (line.length === 1) line.unshift(`0,${y(losses[0]).toFixed(1)}`); // one point: a level line up to it
  $(".loss-line", card).setAttribute("points", line.join(" "));
  card.dataset.points = String(points.length);
  $(".loss-range", card).textContent = points.length
    ? `loss ${low.toFixed(4)} – ${high.toFixed(4)} over ${points.length} point(s)`
    : "";
}

function addPoints(card, points) {
  const curve = curves.get(card);
  for (const point of points) curve.set(point.step, point.loss);
  if (points.length) drawCurve(card);
}

function addValidation(card, round) {
  const list = $(".validations", card);
  if ($$(".validation", list).some((item) => item.dataset.step === String(round.step))) return;
  const item = $("#validation-round").content.firstElementChild.cloneNode(true);
  item.dataset.step = round.step;
  $(".validation-step", item).textContent = `step ${round.step}`;
  for (const image of round.images) {
    const link = Object.assign(document.createElement("a"), { href: image.url, target: "_blank", rel: "noopener" });
    const img = Object.assign(document.createElement("img"), {
      src: image.url, alt: `${image.prompt} (seed ${image.seed})`, title: `${image.prompt} (seed ${image.seed})`,
    });
    link.append(img);
    $(".validation-images", item).append(link);
  }
  list.append(item);
  card.dataset.validations = String($$(".validation", list).length);
}

function onTrainingEvent(card, event) {
  const data = event.data;
  if (event.event === "queued") setStatus(card, "queued", data.queue_position);
  else if (event.event === "started") {
    setStatus(card, "running");
    clocks.set(card, { time: performance.now(), step: 0 });
  } else if (event.event === "progress") {
    if (card.dataset.status !== "canceling") setStatus(card, "running");
    showTrainingStep(card, data.step, data.total);
    if (data.resumed_from_step != null) clocks.set(card, { time: performance.now(), step: data.step });
    if (data.loss != null) {
      addPoints(card, [{ step: data.step, loss: data.loss }]);
      const stats = [`loss ${Number(data.loss).toFixed(4)}`];
      if (data.learning_rate != null) stats.push(`lr ${Number(data.learning_rate).toExponential(1)}`);
      const clock = clocks.get(card);
      if (!clock) clocks.set(card, { time: performance.now(), step: data.step });
      else if (data.step > clock.step && data.step < data.total) {
        const rate = (data.step - clock.step) / ((performance.now() - clock.time) / 1000);
        stats.push(`eta ${duration((data.total - data.step) / rate)}`);
      }
      $(".training-stats", card).textContent = stats.join(" · ");
    }
    if (data.checkpoint) card.dataset.checkpoint = data.checkpoint.step;
    if (data.validation) addValidation(card, data.validation);
  } else if (TERMINAL.has(event.event)) {
    renderTraining(card, data.training);
    return true;
  }
  return false;
}

function renderTraining(card, training) {
  setStatus(card, training.status);
  card.dataset.ended = "true";
  $(".cancel", card).hidden = true;
  if (training.progress) showTrainingStep(card, training.progress.step, training.progress.total);
  addPoints(card, (training.loss_curve || []).map((point) => ({ step: point.step, loss: point.loss })));
  for (const round of training.validation || []) addValidation(card, round);
  if (training.error) renderProblem($(".job-error", card), training.error);
  const adapter = training.adapter;
  if (training.status === "succeeded" && adapter) {
    const took = training.progress && training.progress.elapsed_seconds;
    const result = $(".training-result", card);
    result.textContent = (adapter.kind === "lora" ? `LoRA “${adapter.name}” is ready` :
      `Embedding ${adapter.token} is ready`) + (took != null ? ` (trained in ${duration(took)})` : "");
    result.hidden = false;
    const use = $(".use-training", card);
    use.hidden = false;
    use.addEventListener("click", () => useTraining(training));
  }
}

async function useTraining(training) {
  await loadCatalog(); // the new LoRA or embedding is listed now
  setTask("txt2img");
  if ($$("#model option").some((node) => node.value === training.base_model)) {
    $("#model").value = training.base_model;
    onModelChange();
  }
  const adapter = training.adapter;
  const word = adapter.token || training.request.trigger_word;
  $("#prompt").value = training.request.caption_template.replaceAll("[trigger]", word);
  if (adapter.kind === "lora") {
    const check = $$(".lora input[type=checkbox]").find((node) => node.value === adapter.name);
    if (check) check.checked = true;
  }
  $("#job-form").scrollIntoView({ behavior: "smooth" });
  $("#prompt").focus();
}

function setUpTraining() {
  const folder = $("#train-folder");
  const files = $("#train-files");
  folder.addEventListener("change", () => pickDataset(folder, files));
  files.addEventListener("change", () => pickDataset(files, folder));
  const method = $("#train-method");
  const onMethod = () => {
    $("#train-form").dataset.method = method.value;
    $("#train-trigger").placeholder = method.value === "lora" ? "sks" : "<my-token>";
  };
  method.addEventListener("change", onMethod);
  onMethod();
  $("#train-form").addEventListener("submit", submitTraining);
}

// --- start ------------------------------------------------------------------------------------------
function start() {
  state.maskCanvas = document.createElement("canvas");
  const key = $("#api-key");
  key.value = localStorage.getItem(KEY_STORE) || "";
  key.addEventListener("change", () => {
    if (key.value.trim()) localStorage.setItem(KEY_STORE, key.value.trim());
    else localStorage.removeItem(KEY_STORE);
    clearProblem();
    loadCatalog();
  });
  for (const radio of $$('input[name="task"]')) radio.addEventListener("change", () => setTask(radio.value));
  setTask(currentTask());
  $("#model").addEventListener("change", onModelChange);
  $("#image-file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) useInput(file, file.name);
  });
  setUpPainting();
  setUpTraining();
  $("#job-form").addEventListener("submit", submit);
  loadCatalog();
}

start();
