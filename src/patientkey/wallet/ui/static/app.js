// The PatientKey wallet UI. Plain modern JavaScript, no build step, no network but
// this origin. Every string shown comes from i18n/<lang>.json through t(); every
// value from the server is inserted as text (h() never parses HTML): request texts
// are written by apps and must not become markup.
"use strict";

const LANGS = ["en", "zh-CN"];
const LANG_KEY = "patientkey.ui.lang";
const INBOX_WAIT = 5; // seconds; the server holds the wallet lock that long at most
const ACTIONS = ["view", "fetch", "download", "store", "use", "share", "analyze", "delete"];

const ui = {
  lang: "en",
  strings: {},
  tab: "inbox",
  status: null,
  pollGeneration: 0,
  openRecord: null,
  identity: null,
};

// ── helpers ─────────────────────────────────────────────────────────────────────

function t(key, params) {
  let text = Object.hasOwn(ui.strings, key) ? ui.strings[key] : key;
  for (const [name, value] of Object.entries(params || {})) {
    text = text.replaceAll(`{${name}}`, String(value));
  }
  return text;
}

// t() for a key built from server data (an event kind, a field name): the raw name
// when the files have no label for it.
function label(prefix, name) {
  const key = `${prefix}.${name}`;
  return Object.hasOwn(ui.strings, key) ? ui.strings[key] : name;
}

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else if (value === true) node.setAttribute(name, "");
    else node.setAttribute(name, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function clear(node) {
  node.replaceChildren();
  return node;
}

function when(value) {
  if (value === null || value === undefined) return "–";
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return new Intl.DateTimeFormat(ui.lang, { dateStyle: "medium", timeStyle: "short" }).format(date);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return t("duration.unlimited");
  if (typeof seconds !== "number") return String(seconds);
  for (const [unit, size] of [["days", 86400], ["hours", 3600], ["minutes", 60]]) {
    if (seconds % size === 0) return t(`duration.${unit}`, { n: seconds / size });
  }
  return t("duration.seconds", { n: seconds });
}

function yesNo(value) {
  return t(value ? "common.yes" : "common.no");
}

class ApiError extends Error {
  constructor(problem) {
    super(problem.detail || problem.title || String(problem.status));
    this.problem = problem;
  }
}

async function api(method, path, body) {
  const init = { method, headers: { "X-PatientKey-UI": "1" }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) {
    let problem;
    try {
      problem = await response.json();
    } catch {
      problem = { status: response.status, title: response.statusText };
    }
    if (response.status === 401) showLocked();
    throw new ApiError(problem);
  }
  return response;
}

const getJSON = async (path) => (await api("GET", path)).json();
const postJSON = async (path, body) => (await api("POST", path, body ?? {})).json();

function notify(message, kind) {
  const box = clear(document.getElementById("notice"));
  if (!message) return;
  box.append(h("p", { class: `notice ${kind || "ok"}`, text: message }));
}

function failed(error) {
  const detail = error instanceof ApiError ? error.message : String(error);
  notify(t("error.failed", { detail }), "error");
}

// Run an action from a button: disabled while it runs, errors shown, never thrown.
async function act(button, work) {
  if (button) button.disabled = true;
  try {
    await work();
  } catch (error) {
    failed(error);
  } finally {
    if (button) button.disabled = false;
  }
}

function showLocked() {
  document.getElementById("locked").hidden = false;
  for (const panel of document.querySelectorAll("[role=tabpanel]")) panel.hidden = true;
}

function detailsLines(details) {
  return details.map((entry) => {
    const records = entry.records || {};
    const where = [];
    if (records.ids) where.push(records.ids.join(", "));
    if (records.his_id) where.push(t("what.at", { his: records.his_id }));
    if (records.from || records.to) {
      where.push(t("what.range", { from: records.from || "…", to: records.to || "…" }));
    }
    return t("what.line", {
      actions: (entry.actions || []).map((a) => label("action", a)).join(", "),
      types: (entry.record_types || []).map((r) => label("type", r)).join(", "),
      records: where.join(" ") || t("what.all"),
      duration: duration(entry.duration),
    });
  });
}

function field(name, value, key) {
  return [h("dt", { text: name }), h("dd", { "data-field": key }, value)];
}

// ── WebAuthn: browser-standard JSON <-> ArrayBuffers ────────────────────────────
// PublicKeyCredential.parse*OptionsFromJSON is missing in some Chromium builds, so
// the base64url fields are converted here.

function fromB64url(text) {
  let b64 = text.replace(/-/g, "+").replace(/_/g, "/");
  while (b64.length % 4) b64 += "=";
  const binary = atob(b64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
  return bytes.buffer;
}

function toB64url(buffer) {
  let binary = "";
  for (const byte of new Uint8Array(buffer)) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function withIds(list) {
  return (list || []).map((c) => ({ ...c, id: fromB64url(c.id) }));
}

function creationOptions(json) {
  const o = json.publicKey || json;
  return {
    ...o,
    challenge: fromB64url(o.challenge),
    user: { ...o.user, id: fromB64url(o.user.id) },
    excludeCredentials: withIds(o.excludeCredentials),
  };
}

function requestOptions(json) {
  const o = json.publicKey || json;
  return { ...o, challenge: fromB64url(o.challenge), allowCredentials: withIds(o.allowCredentials) };
}

function credentialJSON(credential) {
  if (typeof credential.toJSON === "function") {
    try {
      return credential.toJSON();
    } catch {
      // fall through to the manual form
    }
  }
  const r = credential.response;
  const response = { clientDataJSON: toB64url(r.clientDataJSON) };
  if (r.attestationObject) {
    response.attestationObject = toB64url(r.attestationObject);
    if (typeof r.getTransports === "function") response.transports = r.getTransports();
  }
  if (r.authenticatorData) {
    response.authenticatorData = toB64url(r.authenticatorData);
    response.signature = toB64url(r.signature);
    if (r.userHandle) response.userHandle = toB64url(r.userHandle);
  }
  return {
    id: credential.id,
    rawId: toB64url(credential.rawId),
    type: credential.type,
    authenticatorAttachment: credential.authenticatorAttachment || undefined,
    clientExtensionResults: credential.getClientExtensionResults(),
    response,
  };
}

// ── inbox ───────────────────────────────────────────────────────────────────────

async function loadInbox() {
  const panel = document.getElementById("tab-inbox");
  const data = await getJSON("/api/inbox");
  renderInbox(panel, data);
}

function renderInbox(panel, data) {
  ui.pollGeneration += 1;
  clear(panel);
  panel.append(
    h("div", { class: "bar" },
      h("h2", { text: t("inbox.title") }),
      h("button", { type: "button", class: "refresh", text: t("common.refresh"),
        onclick: (e) => act(e.currentTarget, loadInbox) })),
  );
  if (!data.requests.length) {
    panel.append(h("p", { class: "empty", text: t("inbox.empty") }));
    pollInbox(ui.pollGeneration); // wait for the next request while nothing is shown
    return;
  }
  for (const request of data.requests) panel.append(requestCard(request, data.device_enrolled));
}

// Short long polls while the inbox is empty, visible and shown; any re-render stops it.
async function pollInbox(generation) {
  while (generation === ui.pollGeneration && ui.tab === "inbox") {
    if (document.visibilityState !== "visible") {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      continue;
    }
    let data;
    try {
      data = await getJSON(`/api/inbox?wait=${INBOX_WAIT}`);
    } catch (error) {
      failed(error);
      return;
    }
    if (generation !== ui.pollGeneration || ui.tab !== "inbox") return;
    if (data.requests.length) {
      renderInbox(document.getElementById("tab-inbox"), data);
      return;
    }
  }
}

function checkboxes(name, values, labelOf) {
  return h("div", { class: "choices" },
    values.map((value) =>
      h("label", {},
        h("input", { type: "checkbox", name, value, checked: true }),
        " ", labelOf(value))));
}

function requestCard(request, deviceEnrolled) {
  const choices = request.choices;
  const durations = [choices.duration, 30 * 86400, 7 * 86400, 86400, 3600].filter(
    (d, i, all) => d === null || (all.indexOf(d) === i && (choices.duration === null || d <= choices.duration)),
  );
  const otpCode = h("input", { name: "otp_code", inputmode: "numeric", autocomplete: "one-time-code",
    "aria-label": t("proof.otpCode"), placeholder: t("proof.otpCode") });
  let otpChallenge = null;
  const sendOtp = (channel) => (event) => act(event.currentTarget, async () => {
    const sent = await postJSON(`/api/inbox/${encodeURIComponent(request.request_id)}/otp`, { channel });
    otpChallenge = sent.challenge_id;
    notify(t("proof.otpSent", { channel: label("channel", sent.channel), until: when(sent.expires_at) }));
  });

  const form = h("form", { class: "approve-form" },
    h("fieldset", {}, h("legend", { text: t("inbox.actions") }),
      checkboxes("action", choices.actions, (a) => label("action", a))),
    choices.records.length
      ? h("fieldset", {}, h("legend", { text: t("inbox.records") }),
        checkboxes("record", choices.records, (r) => r))
      : null,
    h("fieldset", {}, h("legend", { text: t("inbox.duration") }),
      h("select", { name: "duration" },
        durations.map((d, i) => h("option", { value: i === 0 ? "" : String(d), text: duration(d) })))),
    h("fieldset", { class: "proofs" }, h("legend", { text: t("inbox.proofs") }),
      h("label", {}, t("proof.password"),
        h("input", { type: "password", name: "password", autocomplete: "current-password" })),
      h("label", {}, t("proof.totp"),
        h("input", { name: "totp", inputmode: "numeric", autocomplete: "one-time-code", maxlength: 10 })),
      h("div", { class: "otp" },
        h("button", { type: "button", class: "send-otp", text: t("proof.sendSms"), onclick: sendOtp("sms") }),
        h("button", { type: "button", class: "send-otp", text: t("proof.sendEmail"), onclick: sendOtp("email") }),
        otpCode),
      h("p", { class: "muted", text: t(deviceEnrolled ? "proof.deviceSigns" : "proof.noDevice") })),
    h("div", { class: "buttons" },
      h("button", { type: "submit", class: "approve primary", text: t("inbox.approve") }),
      h("button", { type: "button", class: "passkey", text: t("inbox.approvePasskey"),
        onclick: (e) => act(e.currentTarget, () => approve(true)) }),
      h("button", { type: "button", class: "deny danger", text: t("inbox.deny"),
        onclick: (e) => act(e.currentTarget, async () => {
          await postJSON(`/api/inbox/${encodeURIComponent(request.request_id)}/deny`);
          notify(t("inbox.denied", { client: request.client_name }));
          await loadInbox();
        }) })),
  );

  function chosen() {
    const pick = (name, all) => {
      const kept = [...form.querySelectorAll(`input[name=${name}]:checked`)].map((i) => i.value);
      return kept.length === all.length ? null : kept; // null: all of it, as asked
    };
    const d = form.elements.duration.value;
    return { actions: pick("action", choices.actions), records: pick("record", choices.records),
      duration: d === "" ? null : Number(d) };
  }

  async function approve(withPasskey) {
    const body = { ...chosen() };
    for (const name of ["password", "totp"]) {
      const value = form.elements[name].value.trim();
      if (value) body[name] = value;
    }
    if (otpCode.value.trim()) {
      body.otp_code = otpCode.value.trim();
      body.otp_challenge = otpChallenge;
    }
    const base = `/api/inbox/${encodeURIComponent(request.request_id)}`;
    if (withPasskey) {
      const { options } = await postJSON(`${base}/webauthn`, chosen());
      const credential = await navigator.credentials.get({ publicKey: requestOptions(options) });
      body.webauthn = JSON.stringify(credentialJSON(credential));
    }
    const outcome = await postJSON(`${base}/approve`, body);
    notify(t(outcome.narrowed ? "inbox.approvedLess" : "inbox.approved",
      { client: request.client_name, grant: outcome.grant_id, acr: outcome.acr }));
    await loadInbox();
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    act(event.submitter, () => approve(false));
  });

  return h("article", { class: "card request", "data-request-id": request.request_id },
    h("h3", { text: t("inbox.asks", { client: request.client_name }) }),
    request.binding_message
      ? h("p", { class: "binding" }, t("inbox.binding"), " ", h("strong", { text: request.binding_message }))
      : null,
    h("dl", {},
      field(t("inbox.who"), `${request.client_name} (${request.client_id})`),
      field(t("inbox.why"), `${request.scenario}: ${request.purpose}`),
      field(t("inbox.what"), h("ul", {}, detailsLines(request.authorization_details).map((l) => h("li", { text: l })))),
      field(t("inbox.expires"), when(request.expires_at)),
      field(t("inbox.method"), t("inbox.factors", { n: request.method.min_factors, acr: request.method.acr }))),
    form);
}

// ── prescriptions ───────────────────────────────────────────────────────────────

async function loadPrescriptions() {
  const panel = document.getElementById("tab-prescriptions");
  const data = await getJSON("/api/records");
  clear(panel);
  panel.append(h("div", { class: "bar" }, h("h2", { text: t("records.title") }),
    h("button", { type: "button", class: "refresh", text: t("common.refresh"),
      onclick: (e) => act(e.currentTarget, loadPrescriptions) })));
  const detail = h("div", { id: "record-detail" });
  if (!data.records.length) {
    panel.append(h("p", { class: "empty", text: t("records.empty") }));
    return;
  }
  const columns = ["records.his", "records.pid", "records.type", "records.inWallet", "records.dispense", "records.shared", ""];
  panel.append(h("table", { class: "records" },
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { text: c ? t(c) : "" })))),
    h("tbody", {}, data.records.map((r) => h("tr", { "data-pid": r.p_id },
      h("td", { text: r.his_id }),
      h("td", { text: r.p_id }),
      h("td", { text: label("type", r.record_type) }),
      h("td", { text: yesNo(r.in_wallet) }),
      h("td", { text: r.dispense ? label("dispense", r.dispense) : "–" }),
      h("td", { text: r.shared_with.join(", ") || "–" }),
      h("td", {}, h("button", { type: "button", class: "open", text: t("records.open"),
        onclick: (e) => act(e.currentTarget, () => openRecord(r.his_id, r.p_id)) })))))));
  panel.append(detail);
  if (ui.openRecord) renderRecord(ui.openRecord);
}

async function openRecord(his, pid) {
  ui.openRecord = await getJSON(`/api/records/${encodeURIComponent(his)}/${encodeURIComponent(pid)}`);
  await loadPrescriptions(); // opening fetched it into the wallet: the list says so now
}

function renderRecord(view) {
  const box = document.getElementById("record-detail");
  if (!box) return;
  clear(box).append(h("article", { class: "card detail" },
    h("h3", { text: t("records.detailTitle", { type: label("type", view.record_type), pid: view.p_id, his: view.his_id }) }),
    h("p", { class: "muted", text: t("records.decrypted") }),
    h("dl", {},
      Object.entries(view.summary).map(([k, v]) =>
        field(label("field", k), typeof v === "boolean" ? yesNo(v) : v, k)),
      field(t("records.dispense"), view.dispense ? label("dispense", view.dispense) : t("records.notTracked")),
      field(t("records.shared"), view.shared_with.join(", ") || "–")),
    h("button", { type: "button", text: t("common.close"), onclick: () => { ui.openRecord = null; clear(box); } })));
  box.scrollIntoView({ block: "nearest" });
}

// ── grants ──────────────────────────────────────────────────────────────────────

async function loadGrants() {
  const panel = document.getElementById("tab-grants");
  const data = await getJSON("/api/grants");
  const active = data.grants.filter((g) => g.status === "active");
  const past = data.grants.filter((g) => g.status !== "active");
  clear(panel);
  panel.append(h("div", { class: "bar" }, h("h2", { text: t("grants.active") }),
    h("button", { type: "button", class: "refresh", text: t("common.refresh"),
      onclick: (e) => act(e.currentTarget, loadGrants) })));
  panel.append(active.length ? h("div", { class: "grants active" }, active.map(grantCard))
    : h("p", { class: "empty", text: t("grants.none") }));
  panel.append(h("h2", { text: t("grants.past") }));
  panel.append(past.length ? h("div", { class: "grants past" }, past.map(grantCard))
    : h("p", { class: "empty", text: t("grants.none") }));
}

function grantCard(grant) {
  return h("article", { class: `card grant ${grant.status}`, "data-grant-id": grant.grant_id },
    h("h3", {}, grant.client_id, " ", h("span", { class: `badge ${grant.status}`, text: label("status", grant.status) })),
    h("dl", {},
      field(t("grants.scenario"), grant.scenario),
      field(t("inbox.what"), h("ul", {}, detailsLines(grant.authorization_details).map((l) => h("li", { text: l })))),
      field(t("grants.created"), when(grant.created_at)),
      field(t("grants.until"), when(grant.expires_at)),
      grant.revoked_at ? field(t("grants.revoked"), t("grants.revokedBy",
        { at: when(grant.revoked_at), by: label("revokedBy", grant.revoked_by || "patient") })) : null,
      field(t("grants.proofs"), `${grant.proofs.map((p) => label("proof", p)).join(", ")} · ${grant.acr}`)),
    grant.status === "active"
      ? h("button", { type: "button", class: "revoke danger", text: t("grants.revoke"),
        onclick: (e) => act(e.currentTarget, async () => {
          await postJSON(`/api/grants/${encodeURIComponent(grant.grant_id)}/revoke`);
          notify(t("grants.revokedNotice", { client: grant.client_id }));
          await loadGrants();
        }) })
      : null);
}

// ── audit ───────────────────────────────────────────────────────────────────────

async function loadAudit() {
  const panel = document.getElementById("tab-audit");
  clear(panel);
  panel.append(h("div", { class: "bar" }, h("h2", { text: t("audit.title") }),
    h("button", { type: "button", class: "sync", text: t("audit.sync"),
      onclick: (e) => act(e.currentTarget, syncAudit) })));
  panel.append(h("div", { id: "audit-body" }));
  // What was verified before shows at once; the sync then checks the log again.
  renderAudit(await getJSON("/api/audit"));
  await syncAudit();
}

async function syncAudit() {
  const report = await postJSON("/api/audit/sync");
  renderAudit(report);
  if (report.state === "verified") notify(t("audit.synced", { n: report.new_events }));
}

function cell(key, value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "boolean") return value ? "✔" : "✘";
  if (key === "at") return when(value);
  return String(value);
}

function renderAudit(report) {
  const box = document.getElementById("audit-body");
  if (!box) return;
  clear(box);
  if (report.state !== "verified") {
    box.append(h("div", { class: "banner danger", id: "audit-banner", role: "alert" },
      h("strong", { text: t(report.state === "rewritten" ? "audit.rewritten" : "audit.unverified") }),
      h("p", { text: t("audit.rewrittenHelp") }),
      report.problem ? h("p", { class: "evidence", text: report.problem.detail }) : null,
      report.evidence.map((e) => h("p", { class: "evidence", text: t("audit.evidence",
        { at: when(e.detected_at / 1000), reason: e.reason, index: e.index ?? "–" }) }))));
  }
  if (report.head) {
    box.append(h("p", { class: "verified-head" }, h("span", { class: "ok", text: "✔ " }),
      t("audit.head", { size: report.head.size, at: when(report.head.timestamp) })));
  } else {
    box.append(h("p", { class: "empty", text: t("audit.never") }));
  }
  box.append(h("div", { class: "buttons" },
    download("audit.csv", "/api/audit/disclosures.csv", "disclosures.csv"),
    download("audit.pdf", "/api/audit/disclosures.pdf", "disclosures.pdf"),
    download("audit.fhir", "/api/audit/fhir", "audit-bundle.json")));
  box.append(h("h3", { text: t("audit.timeline") }));
  const altered = new Set(report.evidence.map((e) => e.index).filter((i) => i !== null));
  if (!report.events.length) box.append(h("p", { class: "empty", text: t("audit.noEvents") }));
  else {
    box.append(h("table", { class: "timeline" },
      h("thead", {}, h("tr", {}, ["audit.verified", "audit.when", "audit.event", "audit.detail"].map((c) => h("th", { text: t(c) })))),
      h("tbody", {}, report.events.map((e) => h("tr", { class: altered.has(e.index) ? "altered" : (e.verified ? "verified" : "unverified"), "data-index": e.index },
        h("td", { class: e.verified ? "ok mark" : "bad mark", title: t(e.verified ? "audit.verifiedMark" : "audit.unverifiedMark"),
          text: e.verified ? "✔" : "✘" }),
        h("td", { class: "when", text: when(e.at) }),
        h("td", {}, label("event", e.kind),
          altered.has(e.index) ? h("strong", { class: "bad altered-note", text: ` ${t("audit.altered")}` }) : null),
        h("td", { text: Object.entries(e.detail).map(([k, v]) => `${k}=${v}`).join(" · ") }))))));
  }
  box.append(h("h3", { text: t("audit.disclosures") }));
  const rows = report.disclosures || [];
  if (!rows.length) box.append(h("p", { class: "empty", text: t("audit.noDisclosures") }));
  else {
    const keys = ["at", "recipient", "action", "record", "grant_id", "verified"];
    box.append(h("table", { class: "disclosures" },
      h("thead", {}, h("tr", {}, keys.map((k) => h("th", { text: t(`disclosure.${k}`) })))),
      h("tbody", {}, rows.map((row) => h("tr", {}, keys.map((k) => h("td", { text: cell(k, row[k]) })))))));
  }
}

function download(key, path, filename) {
  return h("button", { type: "button", class: "download", text: t(key),
    onclick: (e) => act(e.currentTarget, async () => {
      // fetch (with the CSRF header), then save the blob: a plain link could not send it.
      const blob = await (await api("GET", path)).blob();
      const url = URL.createObjectURL(blob);
      const link = h("a", { href: url, download: filename });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    }) });
}

// ── hospitals and identity ──────────────────────────────────────────────────────

async function loadHospitals() {
  const panel = document.getElementById("tab-hospitals");
  const status = await getJSON("/api/status");
  ui.status = status;
  clear(panel);
  panel.append(h("div", { class: "bar" }, h("h2", { text: t("hospitals.title") }),
    h("button", { type: "button", class: "refresh", text: t("common.refresh"),
      onclick: (e) => act(e.currentTarget, loadHospitals) })));
  panel.append(h("p", { class: "pool" }, t("hospitals.pool", { n: status.pool_remaining, policy: status.policy }),
    status.pool_low ? h("strong", { class: "bad", text: ` ${t("hospitals.poolLow")}` }) : null,
    status.pq_active ? h("span", { class: "muted", text: ` ${t("hospitals.pq")}` }) : null));
  const columns = ["hospitals.his", "hospitals.patient", "hospitals.bound", "hospitals.kuh", "hospitals.versions", "hospitals.rotation", ""];
  panel.append(status.hospitals.length ? h("table", { class: "hospitals" },
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { text: c ? t(c) : "" })))),
    h("tbody", {}, status.hospitals.map((x) => h("tr", { "data-his": x.his_id },
      h("td", { text: x.his_id }),
      h("td", { text: x.patient_id }),
      h("td", { text: yesNo(x.bound) }),
      h("td", { text: `v${x.current_version}` }),
      h("td", { text: x.versions.map((v) => `v${v}`).join(", ") }),
      h("td", { text: x.rotation ? label("rotation", x.rotation) : "–" }),
      h("td", {},
        x.bound ? null : h("button", { type: "button", class: "bind", text: t("hospitals.bind"),
          onclick: (e) => act(e.currentTarget, async () => {
            await postJSON(`/api/hospitals/${encodeURIComponent(x.his_id)}/bind`);
            notify(t("hospitals.boundNotice", { his: x.his_id }));
            await loadHospitals();
          }) }),
        h("button", { type: "button", class: "rotate", text: t("hospitals.rotate"),
          onclick: (e) => act(e.currentTarget, async () => {
            const done = await postJSON(`/api/hospitals/${encodeURIComponent(x.his_id)}/rotate`);
            notify(t("hospitals.rotated", { his: x.his_id, old: done.old_version, new: done.new_version, n: done.rewrapped }));
            await loadHospitals();
          }) })))))) : h("p", { class: "empty", text: t("hospitals.none") }));
  if (status.third_parties.length) {
    panel.append(h("h3", { text: t("hospitals.thirdParties") }),
      h("ul", {}, status.third_parties.map((p) => h("li", { text: t("hospitals.kub", { b: p.b_id, v: p.kub_version ?? "–" }) }))));
  }
  const code = h("textarea", { name: "code", rows: 3, "aria-label": t("hospitals.code"), placeholder: "PKENROLL1.…" });
  panel.append(h("form", { class: "card enroll-code" },
    h("h3", { text: t("hospitals.enroll") }), h("p", { class: "muted", text: t("hospitals.enrollHelp") }), code,
    h("button", { type: "submit", text: t("hospitals.enrollButton") })));
  panel.lastChild.addEventListener("submit", (event) => {
    event.preventDefault();
    act(event.submitter, async () => {
      const done = await postJSON("/api/hospitals/enroll", { code: code.value.trim() });
      notify(t("hospitals.enrolled", { his: done.his_id, patient: done.patient_id }));
      await loadHospitals();
    });
  });
  panel.append(identitySection(status));
}

function identitySection(status) {
  const form = h("form", { class: "card identity" },
    h("h3", { text: t("identity.title") }),
    h("p", { class: "muted", text: status.device_key_id
      ? t(status.device_enrolled ? "identity.device" : "identity.deviceNotEnrolled", { id: status.device_key_id })
      : t("identity.noDevice") }),
    ui.identity ? h("p", { class: "proofs-enrolled", text: t("identity.enrolled",
      { proofs: ui.identity.proofs.map((p) => label("proof", p)).join(", ") || "–" }) }) : null,
    h("label", {}, t("identity.newPassword"), h("input", { type: "password", name: "password", autocomplete: "new-password" })),
    h("label", {}, t("identity.currentPassword"), h("input", { type: "password", name: "current_password", autocomplete: "current-password" })),
    h("label", { class: "check" }, h("input", { type: "checkbox", name: "totp" }), " ", t("identity.totp")),
    h("label", {}, t("identity.sms"), h("input", { type: "tel", name: "sms" })),
    h("label", {}, t("identity.email"), h("input", { type: "email", name: "email" })),
    h("div", { class: "buttons" },
      h("button", { type: "submit", class: "primary", text: t("identity.enroll") }),
      h("button", { type: "button", class: "register-passkey", text: t("identity.passkey"),
        onclick: (e) => act(e.currentTarget, registerPasskey) })),
    h("div", { id: "totp-once" }));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    act(event.submitter, async () => {
      const f = form.elements;
      const body = { totp: f.totp.checked };
      for (const name of ["password", "current_password", "sms", "email"]) {
        if (f[name].value.trim()) body[name] = f[name].value.trim();
      }
      const state = await postJSON("/api/identity", body);
      ui.identity = state;
      await loadHospitals();
      if (state.totp_uri) showTotp(state);
      notify(t("identity.done"));
    });
  });
  return form;
}

function showTotp(state) {
  // Shown once: the secret is in the URI, and the wallet does not keep it.
  clear(document.getElementById("totp-once")).append(
    h("p", { class: "warn", text: t("identity.totpOnce") }),
    h("img", { src: state.totp_qr, alt: t("identity.qrAlt"), class: "qr" }),
    h("code", { class: "uri", text: state.totp_uri }));
}

async function registerPasskey() {
  const { options } = await postJSON("/api/identity/webauthn/begin");
  const credential = await navigator.credentials.create({ publicKey: creationOptions(options) });
  ui.identity = await postJSON("/api/identity/webauthn/finish", { credential: credentialJSON(credential) });
  notify(t("identity.passkeyDone"));
  await loadHospitals();
}

// ── shell ───────────────────────────────────────────────────────────────────────

const LOADERS = {
  inbox: loadInbox,
  prescriptions: loadPrescriptions,
  grants: loadGrants,
  audit: loadAudit,
  hospitals: loadHospitals,
};

async function show(tab) {
  ui.tab = tab;
  ui.pollGeneration += 1; // stop an inbox poll left running
  for (const button of document.querySelectorAll("[role=tab]")) {
    button.setAttribute("aria-selected", String(button.dataset.tab === tab));
  }
  for (const name of Object.keys(LOADERS)) {
    document.getElementById(`tab-${name}`).hidden = name !== tab;
  }
  document.getElementById("tab-" + tab).setAttribute("aria-busy", "true");
  try {
    await LOADERS[tab]();
  } catch (error) {
    failed(error);
  } finally {
    document.getElementById("tab-" + tab).setAttribute("aria-busy", "false");
  }
}

async function setLanguage(lang) {
  const response = await fetch(`/static/i18n/${lang}.json`, { credentials: "same-origin" });
  ui.strings = await response.json();
  ui.lang = lang;
  localStorage.setItem(LANG_KEY, lang);
  document.documentElement.lang = lang;
  for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  for (const node of document.querySelectorAll("[data-i18n-label]")) {
    node.setAttribute("aria-label", t(node.dataset.i18nLabel));
  }
  for (const button of document.querySelectorAll("[data-lang]")) {
    button.setAttribute("aria-pressed", String(button.dataset.lang === lang));
  }
  if (ui.status) document.getElementById("who").textContent = t("app.user", { user: ui.status.user_id });
}

async function start() {
  const saved = localStorage.getItem(LANG_KEY);
  const preferred = saved || (navigator.language.toLowerCase().startsWith("zh") ? "zh-CN" : "en");
  await setLanguage(LANGS.includes(preferred) ? preferred : "en");
  for (const button of document.querySelectorAll("[data-lang]")) {
    button.addEventListener("click", async () => {
      await setLanguage(button.dataset.lang);
      await show(ui.tab);
    });
  }
  for (const button of document.querySelectorAll("[role=tab]")) {
    button.addEventListener("click", () => {
      notify("");
      show(button.dataset.tab);
    });
  }
  try {
    const status = await getJSON("/api/status");
    ui.status = status;
    document.getElementById("who").textContent = t("app.user", { user: status.user_id });
  } catch (error) {
    if (!(error instanceof ApiError && error.problem.status === 401)) failed(error);
    return;
  }
  document.body.dataset.ready = "true";
  await show(location.hash.slice(1) in LOADERS ? location.hash.slice(1) : "inbox");
}

document.addEventListener("DOMContentLoaded", start);
