// The web chat: talks to this server's /v1/chat/completions with streaming (Server-Sent Events).
"use strict";

const $ = (id) => document.getElementById(id);
const SAMPLER = ["temperature", "top_p", "top_k", "min_p", "typical_p", "tfs", "repetition_penalty", "repeat_last_n",
                 "top_a", "dry_multiplier", "dry_base", "dry_allowed_length", "xtc_threshold", "xtc_probability",
                 "mirostat_mode", "mirostat_tau", "mirostat_eta"];
let presets = {};
let history = [];        // [{role, content}]
let modelId = null;
let controller = null;   // AbortController of the reply being streamed

function headers() {
  const h = {"Content-Type": "application/json"};
  if ($("api_key").value) h["Authorization"] = "Bearer " + $("api_key").value;
  return h;
}

function status(text) { $("status").textContent = text || ""; }

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = role === "user" ? ($("mode").value === "roleplay" ? $("user_name").value : "You")
                                    : ($("mode").value === "roleplay" ? $("char_name").value : "Assistant");
  const body = document.createElement("div");
  body.className = "body";
  body.textContent = text;
  div.append(who, body);
  $("messages").append(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return body;
}

function applyPreset(name) {
  const p = presets[name];
  if (!p) return;
  for (const key of SAMPLER) $(key).value = p[key];
}

function samplerFields() {
  const out = {};
  for (const key of SAMPLER) {
    if ($(key).value !== "") out[key] = Number($(key).value);
  }
  if ($("max_tokens").value !== "") out.max_tokens = Number($("max_tokens").value);
  if ($("seed").value !== "") out.seed = Number($("seed").value);
  return out;
}

function requestBody() {
  const body = {model: modelId, stream: true, stream_options: {include_usage: true}, ...samplerFields()};
  if ($("mode").value === "roleplay") {
    body.messages = history.slice();
    body.roleplay = {
      char_name: $("char_name").value || "Character", user_name: $("user_name").value || "User",
      char_persona: $("char_persona").value, user_persona: $("user_persona").value,
      scenario: $("scenario").value, length: $("length").value || null,
    };
  } else {
    const system = $("system").value.trim();
    body.messages = (system ? [{role: "system", content: system}] : []).concat(history);
  }
  return body;
}

async function send(text) {
  history.push({role: "user", content: text});
  addMessage("user", text);
  const target = addMessage("assistant", "");
  target.classList.add("streaming");
  controller = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  status("");
  let reply = "";
  try {
    const resp = await fetch("/v1/chat/completions", {method: "POST", headers: headers(),
      body: JSON.stringify(requestBody()), signal: controller.signal});
    if (!resp.ok) {
      const err = await resp.json().catch(() => ({error: {message: resp.statusText}}));
      throw new Error(err.error ? err.error.message : resp.statusText);
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          if (chunk.usage) status(`${chunk.usage.completion_tokens} tokens`);
          for (const choice of chunk.choices || []) {
            if (choice.delta && choice.delta.content) {
              reply += choice.delta.content;
              target.textContent = reply;
              $("messages").scrollTop = $("messages").scrollHeight;
            }
          }
        }
      }
    }
  } catch (e) {
    if (e.name === "AbortError") status("stopped");
    else status("error: " + e.message);
  } finally {
    target.classList.remove("streaming");
    history.push({role: "assistant", content: reply});
    controller = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}

function reset() {
  if (controller) controller.abort();
  history = [];
  $("messages").replaceChildren();
  status("");
}

async function init() {
  try {
    const resp = await fetch("/v1/presets");
    const info = await resp.json();
    presets = info.presets;
    for (const l of [""].concat(info.roleplay_lengths)) {
      const o = document.createElement("option");
      o.value = l;
      o.textContent = l || "(model chooses)";
      $("length").append(o);
    }
    $("length").value = "medium";
    for (const name of Object.keys(presets)) {
      const o = document.createElement("option");
      o.value = name;
      o.textContent = name;
      $("preset").append(o);
    }
    $("preset").value = "chatml-default";
    applyPreset("chatml-default");
  } catch (e) { status("could not read presets: " + e.message); }
  await loadModel();
}

async function loadModel() {
  const resp = await fetch("/v1/models", {headers: headers()});
  if (resp.ok) {
    const data = await resp.json();
    modelId = data.data[0].id;
    $("model").textContent = modelId;
  } else {
    $("model").textContent = "(enter the API key)";
  }
}

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("input").value.trim();
  if (!text || controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("composer").requestSubmit(); }
});
$("stop").addEventListener("click", () => { if (controller) controller.abort(); });
$("reset").addEventListener("click", reset);
$("preset").addEventListener("change", () => applyPreset($("preset").value));
$("api_key").addEventListener("change", loadModel);
$("mode").addEventListener("change", () => {
  const rp = $("mode").value === "roleplay";
  $("roleplay-settings").hidden = !rp;
  $("chat-settings").hidden = rp;
  $("preset").value = rp ? "limarp" : "chatml-default";
  applyPreset($("preset").value);
  reset();
});
init();
