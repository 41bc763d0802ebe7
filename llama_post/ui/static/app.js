// llama-post's pages: the jobs table refreshing, a job's curves and log following its event
// stream, checkpoint downloads, a chat box, and a model's merged or GGUF download. Every request goes to this server's JSON API,
// with the header that lets the API take the login cookie.
"use strict";

const UI_HEADERS = { "x-llama-post-ui": "1" };
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea"];
const LOG_LINES = 1000;

async function api(path, options = {}) {
  const response = await fetch(path, {
    credentials: "same-origin",
    ...options,
    headers: { ...UI_HEADERS, ...(options.headers || {}) },
  });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).error.message;
    } catch (_) {
      // not our error body: keep the status line
    }
    throw new Error(message);
  }
  return response;
}

// The `data:` events of a server-sent event stream, parsed; stops at `[DONE]`.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text) node.textContent = text;
  return node;
}

// As the server renders them: 2026-11-30 02:46:05, 1.2 MiB.
function when(stamp) {
  const d = new Date(stamp * 1000);
  const two = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ` +
    `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
}

function size(bytes) {
  if (bytes === null || bytes === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

// A chart's number, readable at any scale: 0.25, 12.5, 1e-4, 2.5e-5, 3.2e6 (uPlot's own format
// keeps three decimals, so every tick of a 1e-4 learning rate read 0).
function number(value) {
  if (value === null || value === undefined) return "--";
  const magnitude = Math.abs(value);
  if (magnitude === 0 || (magnitude >= 1e-3 && magnitude < 1e6)) {
    return String(Number(value.toPrecision(4)));
  }
  return value.toExponential(3).replace(/\.?0+e/, "e").replace("e+", "e");
}

// -- the jobs table --------------------------------------------------------------------------

function jobsPage() {
  const holder = document.getElementById("jobs");
  const refresh = async () => {
    try {
      const response = await api(holder.dataset.refresh);
      holder.innerHTML = await response.text(); // rendered and escaped by this server
    } catch (error) {
      holder.dataset.error = error.message;
    }
  };
  setInterval(refresh, 3000);
}

// -- a job -----------------------------------------------------------------------------------

class Chart {
  constructor(holder) {
    this.holder = holder;
    // a chart of values the page was rendered with (the job's evaluations, by step) names its
    // series in JSON (a benchmark's name and its grader's); the others, the metrics' names
    this.series = holder.dataset.labels
      ? JSON.parse(holder.dataset.labels)
      : holder.dataset.series.split(",");
    this.fixed = holder.dataset.fixed ? JSON.parse(holder.dataset.fixed) : {};
    this.dots = holder.dataset.fixed !== undefined;
    this.plot = null;
  }

  update(steps, points) {
    const columns = this.series.map((name) =>
      steps.map((step) => (points.get(step)[name] ?? null)),
    );
    const drawn = steps.filter((_, i) => columns.some((column) => column[i] !== null)).length;
    this.holder.dataset.points = String(drawn);
    if (drawn === 0) return;
    const data = [steps, ...columns];
    if (this.plot === null) {
      this.holder.textContent = "";
      this.plot = new uPlot(this.options(), data, this.holder);
    } else {
      this.plot.setData(data);
    }
  }

  // the value axis's labels, kept on the holder too, where a test reads what the canvas shows
  ticks(values) {
    const labels = values.map(number);
    this.holder.dataset.ticks = labels.join(" ");
    return labels;
  }

  options() {
    return {
      width: Math.max(280, this.holder.clientWidth || 420),
      height: 200,
      scales: { x: { time: false } },
      legend: { live: true },
      series: [
        { label: "step" },
        ...this.series.map((name, i) => ({
          label: name,
          stroke: COLORS[i % COLORS.length],
          width: 1.5,
          spanGaps: true,
          points: { show: this.dots || name.startsWith("validation") },
          value: (_, value) => number(value),
        })),
      ],
      axes: [{ label: "step" }, { size: 60, values: (_, ticks) => this.ticks(ticks) }],
    };
  }
}

function jobPage() {
  const root = document.getElementById("job");
  const jobUuid = root.dataset.job;
  const charts = [...root.querySelectorAll(".chart")].map((holder) => new Chart(holder));
  const log = document.getElementById("log");
  const points = new Map();
  let pending = false;
  // the charts' values known when the page was rendered, by step, drawn with the stream's
  const addFixed = () => {
    for (const chart of charts) {
      for (const [step, values] of Object.entries(chart.fixed)) {
        points.set(Number(step), { ...(points.get(Number(step)) || {}), ...values });
      }
    }
  };
  addFixed();

  const redraw = () => {
    pending = false;
    const steps = [...points.keys()].sort((a, b) => a - b);
    for (const chart of charts) chart.update(steps, points);
  };
  const schedule = () => {
    if (!pending) {
      pending = true;
      requestAnimationFrame(redraw);
    }
  };

  const onMetrics = (metrics) => {
    points.set(metrics.step, { ...(points.get(metrics.step) || {}), ...metrics });
    const progress = document.getElementById("job-progress");
    if (metrics.step > Number(progress.value)) {
      progress.value = metrics.step;
      document.getElementById("job-steps").textContent = `${metrics.step}/${progress.max}`;
    }
    schedule();
  };

  const onLog = (line) => {
    log.append(line + "\n");
    while (log.childNodes.length > LOG_LINES) log.firstChild.remove();
    log.scrollTop = log.scrollHeight;
  };

  const onStatus = (status) => {
    root.dataset.status = status.status;
    const badge = document.getElementById("job-status");
    badge.textContent = status.status;
    badge.className = `status ${status.status}`;
    const progress = document.getElementById("job-progress");
    progress.max = status.progress.total_steps || 1;
    progress.value = status.progress.step;
    document.getElementById("job-steps").textContent =
      `${status.progress.step}/${status.progress.total_steps}`;
    if (status.completed_at) {
      document.getElementById("job-ended").textContent = when(status.completed_at);
    }
    const error = document.getElementById("job-error");
    error.hidden = !status.error;
    error.textContent = status.error || "";
    const served = document.getElementById("job-model");
    if (status.fine_tuned_model) {
      served.textContent = "";
      served.append(
        element("a", { href: `/ui/models/${status.fine_tuned_model}` }, status.fine_tuned_model),
      );
    }
    showCheckpoints(status.checkpoints);
  };

  const showCheckpoints = (checkpoints) => {
    const body = document.querySelector("#checkpoints tbody");
    body.textContent = "";
    for (const c of checkpoints) {
      const row = element("tr", { "data-checkpoint": c.checkpoint_id });
      row.append(
        element("td", {}, c.checkpoint_id),
        element("td", {}, String(c.step)),
        element("td", {}, String(c.epoch)),
        element("td", {}, size(c.size_bytes)),
      );
      const served = element("td");
      if (c.model_id) served.append(element("a", { href: `/ui/models/${c.model_id}` }, c.model_id));
      else served.textContent = "-";
      const download = element("td");
      download.append(
        element("button", { type: "button", class: "download", "data-checkpoint": c.checkpoint_id }, "Download"),
      );
      row.append(served, download);
      body.append(row);
    }
  };

  document.getElementById("checkpoints").addEventListener("click", async (event) => {
    const button = event.target.closest("button.download");
    if (!button) return;
    try {
      const path = `/v1/post-training/jobs/${jobUuid}/checkpoints/${button.dataset.checkpoint}/archive-url`;
      const answer = await (await api(path, { method: "POST" })).json();
      window.location.assign(answer.url);
    } catch (error) {
      button.textContent = error.message;
    }
  });

  // The stream replays the job from its start, then follows it to its end.
  const follow = async () => {
    try {
      const response = await api(`/v1/post-training/jobs/${jobUuid}/events`);
      log.textContent = "";
      points.clear();
      addFixed();
      for await (const event of events(response)) {
        if (event.error) throw new Error(event.error.message);
        if (event.type === "log") onLog(event.log);
        else if (event.type === "metrics") onMetrics(event.metrics);
        else if (event.type === "status") onStatus(event.status);
      }
      root.dataset.followed = "done";
    } catch (error) {
      root.dataset.followed = `retrying: ${error.message}`;
      setTimeout(follow, 2000);
    }
  };
  follow();
}

// -- chat ------------------------------------------------------------------------------------

function chatBox() {
  const root = document.getElementById("chat");
  const log = document.getElementById("chat-log");
  const form = document.getElementById("chat-form");
  const input = document.getElementById("chat-input");
  const send = document.getElementById("chat-send");
  const model = root.dataset.model;
  const chat = root.dataset.chat === "true";
  const messages = [];

  const say = (role, text) => {
    const bubble = element("div", { class: `message ${role}` }, text);
    log.append(bubble);
    log.scrollTop = log.scrollHeight;
    return bubble;
  };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    send.disabled = true;
    root.dataset.state = "answering";
    say("user", text);
    messages.push({ role: "user", content: text });
    const bubble = say("assistant", "");
    const maxTokens = Number(document.getElementById("chat-max-tokens").value) || 64;
    const body = chat
      ? { model, messages, stream: true, max_tokens: maxTokens }
      : { model, prompt: text, stream: true, max_tokens: maxTokens };
    try {
      const response = await api(chat ? "/v1/chat/completions" : "/v1/completions", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      for await (const chunk of events(response)) {
        if (chunk.error) throw new Error(chunk.error.message);
        const choice = chunk.choices && chunk.choices[0];
        const piece = choice ? (chat ? choice.delta.content : choice.text) : null;
        if (piece) bubble.textContent += piece;
      }
      messages.push({ role: "assistant", content: bubble.textContent });
      root.dataset.state = "done";
    } catch (error) {
      bubble.classList.add("failed");
      bubble.textContent = error.message;
      root.dataset.state = "failed";
    } finally {
      send.disabled = false;
    }
  });
}

// -- a model's downloads: a merge or export job, followed to its end, then its file ------------

function exportButtons() {
  const root = document.getElementById("exports");
  root.addEventListener("click", async (event) => {
    const button = event.target.closest("button.export");
    if (!button || button.disabled) return;
    const label = button.textContent;
    button.disabled = true;
    try {
      const merge = button.dataset.kind === "merge";
      const body = merge ? { model: root.dataset.model } : { model: root.dataset.model, outtype: button.dataset.outtype };
      let job = await (
        await api(merge ? "/v1/post-training/merge" : "/v1/post-training/export", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(body),
        })
      ).json();
      while (job.status === "scheduled" || job.status === "in_progress") {
        button.textContent = `${label}: ${job.status.replace("_", " ")}`;
        await new Promise((resolve) => setTimeout(resolve, 1000));
        job = await (await api(`/v1/post-training/exports/${job.export_id}`)).json();
      }
      if (job.status !== "completed") throw new Error(job.error || job.status);
      // a signed URL, so the browser saves the file as it streams (no copy held in the page)
      const path = `/v1/post-training/exports/${job.export_id}/download-url`;
      const answer = await (await api(path, { method: "POST" })).json();
      window.location.assign(answer.url);
      button.textContent = label;
      root.dataset.state = "done";
    } catch (error) {
      button.textContent = `${label}: ${error.message}`;
      root.dataset.state = "failed";
    } finally {
      button.disabled = false;
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "jobs") jobsPage();
  if (page === "job") jobPage();
  if (page === "model" && document.getElementById("chat")) chatBox();
  if (page === "model" && document.getElementById("exports")) exportButtons();
});
