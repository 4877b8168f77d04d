// The sandbox demo: start → see the call → check → resend, over the real /v1 API; for an
// inbound call: start → call the number ("Call now" plays it) → approved, seen by polling.
// Meanwhile the verification's webhook events are listed as the sandbox's receiver gets them.
// No framework, no build step. Server text is only ever set with textContent.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const state = {
    verification: null,
    retryTimer: null,
    retryDeadline: 0,
    expiryTimer: null,
    pollTimer: null,
    polling: false,
    hooksId: null,
    hooksSeen: new Set(),
    hooksTimer: null,
    hooksPolling: false,
  };
  // How often the page asks for the status of a verification that waits for the user's call,
  // and for the webhook events of the verification shown.
  const POLL_MS = 1000;
  // After any of these no other event of the verification comes.
  const LAST_EVENTS = new Set([
    "verification.approved",
    "verification.max_checks_reached",
    "verification.canceled",
    "verification.expired",
  ]);
  // An expiry is delivered within 10 s of it (the contract): the page stops asking after this.
  const EXPIRED_EVENT_MS = 30000;

  // --- the API ------------------------------------------------------------------------------

  async function api(method, path, body) {
    const key = $("api-key").value.trim() || "dev";
    const headers = { Authorization: `Bearer ${key}`, Accept: "application/json" };
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (err) {
      return { ok: false, status: 0, body: null, network: String(err && err.message ? err.message : err) };
    }
    let data = null;
    if ((resp.headers.get("Content-Type") || "").includes("json")) {
      try {
        data = await resp.json();
      } catch {
        data = null;
      }
    }
    return { ok: resp.ok, status: resp.status, body: data, retryAfter: resp.headers.get("Retry-After") };
  }

  // --- the answer ---------------------------------------------------------------------------

  function stopCountdown() {
    if (state.retryTimer !== null) {
      clearInterval(state.retryTimer);
      state.retryTimer = null;
    }
  }

  function renderProblem(problem) {
    const el = $("result-problem");
    el.replaceChildren();
    if (!problem || typeof problem !== "object" || !problem.code) {
      el.hidden = true;
      return;
    }
    const code = document.createElement("code");
    code.textContent = problem.code;
    el.append(code);
    if (problem.detail) el.append(` — ${problem.detail}`);
    if (Array.isArray(problem.errors) && problem.errors.length) {
      const list = document.createElement("ul");
      for (const e of problem.errors) {
        const item = document.createElement("li");
        item.textContent = `${e.field}: ${e.message}`;
        list.append(item);
      }
      el.append(list);
    }
    el.hidden = false;
  }

  // One answer at a time; `message` is a string or a list of strings and nodes.
  function answer(outcome, message, problem) {
    stopCountdown();
    const result = $("result");
    result.dataset.outcome = outcome;
    $("result-message").replaceChildren(...[].concat(message));
    renderProblem(problem);
  }

  // 429: "Rate limited, wait N s", N counting down; only the first line is announced.
  function rateLimited(seconds, problem) {
    state.retryDeadline = Date.now() + seconds * 1000;
    const left = () => Math.max(0, Math.ceil((state.retryDeadline - Date.now()) / 1000));
    const counter = document.createElement("span");
    counter.id = "retry-seconds";
    counter.setAttribute("aria-live", "off");
    counter.textContent = String(left());
    answer("rate_limited", ["Rate limited, wait ", counter, " s."], problem);
    state.retryTimer = setInterval(() => {
      const n = left();
      if (n > 0) {
        counter.textContent = String(n);
      } else {
        answer("retry", "The wait is over: you can try again now.", problem);
      }
    }, 250);
  }

  function failure(r) {
    if (r.status === 0) {
      answer("error", `Network error: ${r.network}`);
    } else if (r.status === 429) {
      const seconds = Number.parseInt(r.retryAfter || "", 10);
      rateLimited(Number.isFinite(seconds) && seconds > 0 ? seconds : 1, r.body);
    } else if (r.status === 404) {
      answer("not_found", "Expired or not found: start a new verification.", r.body);
    } else if (r.status === 409 && r.body && r.body.code === "channel_has_no_code") {
      answer("no_code", "No code to check: the latest call is inbound, the user's call approves it.", r.body);
    } else if (r.status === 409) {
      answer("max_checks", "Max checks reached: this verification takes no more codes. Start a new one.", r.body);
    } else {
      const title = r.body && r.body.title ? r.body.title : "Error";
      answer("error", `${title} (HTTP ${r.status}).`, r.body);
    }
  }

  const tries = (n) => (n === 1 ? "1 try" : `${n} tries`);

  // --- the verification and its call --------------------------------------------------------

  const secondsUntil = (time) => Math.max(0, Math.round((Date.parse(time) - Date.now()) / 1000));
  const minutes = (left) => `${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}`;

  // "+7 495 000-00-00" for a Russian or Kazakh number, "+digits" for any other.
  function formatNumber(number) {
    const digits = String(number).replace(/\D/g, "");
    const m = /^7(\d{3})(\d{3})(\d{2})(\d{2})$/.exec(digits);
    return m ? `+7 ${m[1]} ${m[2]}-${m[3]}-${m[4]}` : `+${digits}`;
  }

  function renderExpiry() {
    const v = state.verification;
    if (!v) return;
    const left = secondsUntil(v.expires_at);
    $("fact-expires").textContent = left > 0 ? minutes(left) : "expired";
    renderCountdown();
  }

  // An inbound call has no code: the code field waits for a call that has one.
  function allowCode(allowed) {
    $("code").disabled = !allowed;
    $("check").disabled = !allowed;
    $("code-hint").textContent = allowed
      ? "4 to 8 digits, from the call."
      : "No code for an inbound call: the user's call itself approves.";
  }

  // A whole verification as the API answers it (start, resend): replaces the one shown.
  function setVerification(v) {
    state.verification = null;
    updateVerification(v);
    allowCode(!v.inbound);
    watchHooks(v.id);
  }

  // Some of its fields (a check's answer, a poll): merged into the one shown.
  function updateVerification(fields) {
    state.verification = { ...(state.verification || {}), ...fields };
    const cur = state.verification;
    $("fact-id").textContent = cur.id;
    $("fact-status").textContent = cur.status;
    $("fact-length").textContent = cur.code_length === null ? "none" : String(cur.code_length);
    $("fact-checks").textContent = String(cur.checks_left);
    $("fact-sends").textContent = String(cur.sends_left);
    $("facts").hidden = false;
    $("resend").disabled = false;
    renderExpiry();
    if (state.expiryTimer === null) state.expiryTimer = setInterval(renderExpiry, 1000);
  }

  function mark(text) {
    const m = document.createElement("mark");
    m.textContent = text;
    return m;
  }

  // "+7 495 00" then the code digits highlighted: the way a flash call's code is read.
  function renderNumber(caller, n) {
    const digits = String(caller).replace(/\D/g, "");
    const head = digits.slice(0, Math.max(0, digits.length - n));
    const tail = digits.slice(head.length);
    const grouped = [head.slice(0, 1), head.slice(1, 4), head.slice(4)].filter(Boolean).join(" ");
    const el = $("call-number");
    el.replaceChildren(`+${grouped}`, mark(tail));
    el.setAttribute("aria-label", `Calling number +${digits}; its last ${n} digits, ${tail.split("").join(" ")}, are the code`);
    el.hidden = false;
  }

  // The robot's words, with every run of exactly n digits (spaces allowed between) marked.
  function renderText(text, n) {
    const el = $("call-text");
    const parts = [];
    let last = 0;
    for (const m of text.matchAll(/\d(?:[ \u00a0-]?\d)*/g)) {
      if (m[0].replace(/\D/g, "").length !== n) continue;
      parts.push(text.slice(last, m.index), mark(m[0]));
      last = m.index + m[0].length;
    }
    parts.push(text.slice(last));
    el.replaceChildren(...parts.filter((p) => p !== ""));
    el.hidden = false;
  }

  // --- the inbound call: the number to call, its countdown, and the wait for it -------------

  function hideInbound() {
    for (const id of ["call-to-line", "call-qr", "call-countdown", "call-form"]) $(id).hidden = true;
    $("call-qr").removeAttribute("src");
  }

  function renderCountdown() {
    const v = state.verification;
    if (!v || !v.inbound || v.status !== "pending" || $("call-countdown").hidden) return;
    const left = secondsUntil(v.inbound.call_before);
    if (left > 0) {
      $("call-countdown").textContent = `Call within ${minutes(left)}`;
    } else {
      $("call-countdown").textContent = "Time is up: nobody waits for this call any more. Resend to try again.";
      $("call-now").disabled = true;
    }
  }

  // The phone shows what to dial (a tel: link, and New-Tel's QR code when there is one).
  function renderInbound(v) {
    const { call_to: callTo, qr_code_uri: qr, call_before: before } = v.inbound;
    const digits = String(callTo).replace(/\D/g, "");
    $("call-empty").hidden = true;
    $("call").hidden = false;
    $("call-number").hidden = true;
    $("call-text").hidden = true;
    $("call-kind").textContent = `Call to verify · before ${new Date(before).toLocaleTimeString()}`;
    const link = $("call-to");
    link.textContent = formatNumber(digits);
    link.href = `tel:+${digits}`;
    $("call-to-line").hidden = false;
    const img = $("call-qr");
    // Only an image: an https URL (New-Tel's) or inline data; anything else is not shown.
    if (typeof qr === "string" && /^(https:|data:image\/)/i.test(qr)) {
      img.src = qr;
      img.hidden = false;
    } else {
      img.removeAttribute("src");
      img.hidden = true;
    }
    $("call-countdown").hidden = false;
    $("call-form").hidden = false;
    $("call-now").disabled = false;
    $("call-hint").textContent = "Call from the phone being verified. Nobody answers: the call drops, and there is nothing to type.";
    renderCountdown();
  }

  function stopPolling() {
    if (state.pollTimer !== null) {
      clearInterval(state.pollTimer);
      state.pollTimer = null;
    }
  }

  // New-Tel tells the service when the user called; the page learns it by asking the status.
  function startPolling(id) {
    stopPolling();
    state.pollTimer = setInterval(() => {
      poll(id).catch((err) => answer("error", `Unexpected error: ${err}`));
    }, POLL_MS);
  }

  async function poll(id) {
    if (state.polling) return; // the previous answer is still on its way
    state.polling = true;
    try {
      const r = await api("GET", `/v1/verifications/${encodeURIComponent(id)}`);
      const cur = state.verification;
      // Stopped meanwhile (a resend, a new start): this answer is about a wait that is over.
      if (state.pollTimer === null || !cur || cur.id !== id) return;
      if (!r.ok) {
        if (r.status === 0 || r.status >= 500) return; // try again on the next tick
        stopPolling();
        if (r.status === 404) updateVerification({ status: "expired or not found" });
        failure(r);
        return;
      }
      const v = r.body;
      updateVerification({ status: v.status, checks_left: v.checks_left, sends_left: v.sends_left });
      if (v.status === "pending") return;
      stopPolling();
      $("call-form").hidden = true;
      if (v.status === "approved") {
        $("call-countdown").textContent = "The call came in.";
        $("call-hint").textContent = "Nothing to type: the call itself verified the phone.";
        answer("approved", "Approved: the call came from the phone being verified.");
      } else {
        $("call-countdown").hidden = true;
        answer("spent", `This verification is ${v.status}: start a new one.`);
      }
    } finally {
      state.polling = false;
    }
  }

  // --- the webhooks: the verification's events, as the sandbox's receiver got them ----------

  function hooksNote(kind, message) {
    const note = $("hooks-note");
    note.dataset.kind = kind;
    note.replaceChildren(...[].concat(message));
    note.hidden = message.length === 0;
  }

  function code(text) {
    const c = document.createElement("code");
    c.textContent = text;
    return c;
  }

  function hookItem(e) {
    const item = document.createElement("li");
    item.className = "hook";
    const type = code(e.type);
    type.className = "hook-type";
    const status = document.createElement("span");
    status.className = "hook-status";
    status.dataset.status = e.status;
    status.textContent = e.status;
    const time = document.createElement("time");
    time.className = "hook-time";
    time.dateTime = e.timestamp;
    time.textContent = new Date(e.timestamp).toLocaleTimeString();
    item.append(type, status, time);
    return item;
  }

  function stopHooks() {
    if (state.hooksTimer !== null) {
      clearInterval(state.hooksTimer);
      state.hooksTimer = null;
    }
  }

  // A new verification empties the list; the same one (a resend) keeps it and goes on asking.
  function watchHooks(id) {
    stopHooks();
    if (state.hooksId !== id) {
      state.hooksId = id;
      state.hooksSeen = new Set();
      $("hooks").replaceChildren();
      $("hooks").hidden = true;
      hooksNote("waiting", "Waiting for the first event…");
    }
    const tick = () => pollHooks(id).catch((err) => hooksNote("error", `Unexpected error: ${err}`));
    state.hooksTimer = setInterval(tick, POLL_MS);
    tick();
  }

  async function pollHooks(id) {
    if (state.hooksPolling) return; // the previous answer is still on its way
    state.hooksPolling = true;
    try {
      const r = await api("GET", `/v1/sandbox/webhooks?verification_id=${encodeURIComponent(id)}`);
      if (state.hooksTimer === null || state.hooksId !== id) return; // another verification now
      if (!r.ok) {
        if (r.status === 0 || r.status >= 500) return; // try again on the next tick
        stopHooks();
        hooksNote("error", `The events could not be read (HTTP ${r.status}).`);
        return;
      }
      const events = (r.body && r.body.events) || [];
      for (const e of events) {
        if (state.hooksSeen.has(e.id)) continue;
        state.hooksSeen.add(e.id);
        $("hooks").append(hookItem(e));
      }
      $("hooks").hidden = state.hooksSeen.size === 0;
      if (state.hooksSeen.size > 0) hooksNote("events", []);
      const v = state.verification;
      const expired = v && v.id === id && Date.now() > Date.parse(v.expires_at) + EXPIRED_EVENT_MS;
      if (!r.body.enabled) {
        stopHooks(); // nothing will come
        if (state.hooksSeen.size === 0) {
          hooksNote("off", [
            "Webhooks are off: set ", code("CALLAUTH_WEBHOOK_URL"), " to ",
            code(`${window.location.origin}/v1/sandbox/webhooks`), " (", code("make run"), " does).",
          ]);
        }
      } else if (events.some((e) => LAST_EVENTS.has(e.type)) || expired) {
        stopHooks();
      }
    } finally {
      state.hooksPolling = false;
    }
  }

  // --- the flash or voice call the sandbox placed --------------------------------------------

  async function showCall(v) {
    hideInbound();
    const r = await api("GET", `/v1/sandbox/calls?phone=${encodeURIComponent(v.phone)}`);
    if (!r.ok) {
      failure(r);
      return false;
    }
    const calls = (r.body && r.body.calls) || [];
    const call = calls.find((c) => c.verification_id === v.id);
    $("call-number").hidden = true;
    $("call-text").hidden = true;
    if (!call) {
      $("call-empty").textContent = "No call was placed for this verification (a test number?).";
      $("call-empty").hidden = false;
      $("call").hidden = true;
      return true;
    }
    $("call-empty").hidden = true;
    $("call").hidden = false;
    const placed = new Date(call.placed_at).toLocaleTimeString();
    if (call.channel === "flash_call" && call.caller) {
      $("call-kind").textContent = `Incoming call · ${placed}`;
      renderNumber(call.caller, v.code_length);
      $("call-hint").textContent = `The last ${v.code_length} digits of the calling number are the code. Nobody answers: the call drops.`;
    } else {
      $("call-kind").textContent = `Voice call · ${placed}`;
      renderText(call.text || "", v.code_length);
      $("call-hint").textContent = "The robot says the code twice.";
    }
    return true;
  }

  // --- the buttons ---------------------------------------------------------------------------

  async function busy(form, work) {
    const buttons = form.querySelectorAll("button");
    const was = [...buttons].map((b) => b.disabled);
    form.setAttribute("aria-busy", "true");
    buttons.forEach((b) => { b.disabled = true; });
    try {
      await work();
    } finally {
      form.removeAttribute("aria-busy");
      buttons.forEach((b, i) => { b.disabled = was[i]; });
    }
  }

  async function start() {
    const phoneInput = $("phone");
    const phone = phoneInput.value.trim();
    if (!phone) {
      phoneInput.setAttribute("aria-invalid", "true");
      answer("invalid", "Type a phone number first.");
      phoneInput.focus();
      return;
    }
    phoneInput.removeAttribute("aria-invalid");
    const channel = $("start-form").elements.channel.value || "flash_call";
    const r = await api("POST", "/v1/verifications", { phone, channel });
    if (!r.ok) {
      failure(r);
      return;
    }
    const v = r.body;
    stopPolling();
    setVerification(v);
    $("code").value = "";
    if (v.inbound) {
      renderInbound(v);
      startPolling(v.id);
      const what = r.status === 201 ? "Waiting for the call." : "This phone had a pending verification: it now waits for the call (same id).";
      answer("started", `${what} Dial the number shown from the phone being verified (in the sandbox: press Call now); this page sees the call by itself.`);
      $("call-now").focus();
      return;
    }
    if (!(await showCall(v))) return;
    const how = channel === "voice_call" ? "Listen for the code" : `Type the last ${v.code_length} digits of the calling number`;
    const what = r.status === 201 ? "Call placed." : "This phone had a pending verification: the call was placed again (same id).";
    answer("started", `${what} ${how}, then press Check.`);
    $("code").focus();
  }

  async function check() {
    const v = state.verification;
    const input = $("code");
    const code = input.value.replace(/\s/g, "");
    if (!/^[0-9]{4,8}$/.test(code)) {
      input.setAttribute("aria-invalid", "true");
      answer("invalid", "The code is 4 to 8 digits.");
      input.focus();
      return;
    }
    input.removeAttribute("aria-invalid");
    const r = await api("POST", `/v1/verifications/${encodeURIComponent(v.id)}/check`, { code });
    if (!r.ok) {
      const spent = r.status === 409 && r.body && r.body.code === "max_checks_reached";
      if (spent) updateVerification({ status: "max_checks_reached", checks_left: 0 });
      if (r.status === 404) updateVerification({ status: "expired or not found" });
      failure(r);
      return;
    }
    const b = r.body;
    const update = { status: b.status };
    if (typeof b.checks_left === "number") update.checks_left = b.checks_left;
    updateVerification(update);
    if (b.valid) {
      answer("approved", "Approved: the phone is verified.");
    } else if (b.status === "pending") {
      answer("wrong", `Wrong code, ${tries(b.checks_left)} left.`);
    } else if (b.status === "max_checks_reached") {
      answer("max_checks", "Wrong code, no tries left: max checks reached. Start a new verification.");
    } else {
      answer("spent", `Not valid: this verification is already ${b.status}.`);
    }
  }

  async function resend() {
    const v = state.verification;
    const channel = $("resend-channel").value;
    const body = channel ? { channel } : {};
    const r = await api("POST", `/v1/verifications/${encodeURIComponent(v.id)}/resend`, body);
    if (!r.ok) {
      failure(r);
      return;
    }
    // The latest call decides: a wait for an older inbound call is over.
    stopPolling();
    setVerification(r.body);
    $("code").value = "";
    if (r.body.inbound) {
      renderInbound(r.body);
      startPolling(r.body.id);
      answer("resent", "Now waiting for the user's call: only the latest call counts, older codes no longer do.");
      $("call-now").focus();
      return;
    }
    if (!(await showCall(r.body))) return;
    const how = r.body.channel === "voice_call" ? "by voice" : "as a flash call";
    answer("resent", `Called again ${how}: only the latest call's code counts.`);
    $("code").focus();
  }

  // The sandbox plays the user's call; the status poll then sees the approval, as it would
  // see New-Tel's callback in production.
  async function callNow() {
    const v = state.verification;
    answer("calling", `Calling ${formatNumber(v.inbound.call_to)} from ${formatNumber(v.phone)}: waiting for the service to see the call.`);
    const r = await api("POST", "/v1/sandbox/inbound-calls", { phone: v.phone });
    if (!r.ok) failure(r);
  }

  function bind(formId, action) {
    const form = $(formId);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      busy(form, action).catch((err) => answer("error", `Unexpected error: ${err}`));
    });
  }

  bind("start-form", start);
  bind("check-form", check);
  bind("resend-form", resend);
  bind("call-form", callNow);
})();
