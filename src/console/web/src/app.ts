// The API Tokens page of casola-auth (docs/console.md).
//
// Every action is a TokenService or AuthorizationService call over gRPC-Web on this origin,
// made with the token the person pasted: the page has no powers of its own. Rules kept
// throughout: user-supplied strings only ever reach the DOM as text (textContent, never
// innerHTML); the signed-in token lives in sessionStorage only; a new token's secret lives in
// one variable and in the post-creation dialog, and both are emptied when it closes; nothing
// is written to the browser console.

import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import {
  AuthorizationService,
  type WhoAmIResponse,
} from "../gen/casola/auth/v1/authorization_pb";
import {
  TokenService,
  TokenStatus,
  type ListScopesResponse,
  type Token,
} from "../gen/casola/auth/v1/token_pb";
import { BadRequestSchema } from "../gen/google/rpc/error_details_pb";

const SESSION_KEY = "casola-auth.console.token";
const BASE_URL_KEY = "casola-auth.console.base-url";
/** The local Envoy example's gateway (examples/envoy/envoy.yaml listens on :8080). */
const DEFAULT_BASE_URL = "http://127.0.0.1:8080";
const PAGE_SIZE = 20;
const EXPIRES_SOON_DAYS = 7;
const DAY_MS = 24 * 60 * 60 * 1000;
/** Never grantable through the API (design: the dashboard backend's scope). */
const RESERVED_SCOPE = "tokens:issue";

const transport = createGrpcWebTransport({ baseUrl: window.location.origin });
const tokens: Client<typeof TokenService> = createClient(TokenService, transport);
const authz: Client<typeof AuthorizationService> = createClient(AuthorizationService, transport);

// ------------------------------------------------------------------------------------------
// DOM helpers: text only.

type Child = Node | string | null | undefined | false;

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function byId<T extends HTMLElement>(id: string): T {
  const node = document.getElementById(id);
  if (!node) throw new Error(`missing #${id}`);
  return node as T;
}

function show(node: HTMLElement, visible: boolean): void {
  node.hidden = !visible;
}

function bearer(token: string): { headers: Record<string, string> } {
  return { headers: { authorization: `Bearer ${token}` } };
}

function errorText(err: unknown): string {
  if (err instanceof ConnectError) {
    switch (err.code) {
      case Code.Unauthenticated:
        return `Not signed in: ${err.rawMessage}`;
      case Code.PermissionDenied:
        return `Not allowed: ${err.rawMessage}`;
      case Code.Unavailable:
        return `The service is unavailable, try again: ${err.rawMessage}`;
      default:
        return err.rawMessage || String(err.code);
    }
  }
  return "The request failed (is casola-auth running?)";
}

function fmtTime(ts: Timestamp | undefined): string {
  if (!ts) return "";
  const d = timestampDate(ts);
  return `${d.toISOString().slice(0, 16).replace("T", " ")} UTC`;
}

// ------------------------------------------------------------------------------------------
// State.

interface State {
  token: string | null;
  me: WhoAmIResponse | null;
  catalog: ListScopesResponse | null;
  /** page_token of each page seen so far; the last one is the current page. */
  pages: string[];
  nextPageToken: string;
  rows: Map<string, HTMLTableRowElement>;
}

const state: State = {
  token: null,
  me: null,
  catalog: null,
  pages: [""],
  nextPageToken: "",
  rows: new Map(),
};

function heldScopes(): Set<string> {
  return new Set(state.me?.principal?.scopes ?? []);
}

function isOrgAdmin(): boolean {
  return heldScopes().has("admin:read");
}

function mayGrant(scope: string): boolean {
  if (scope === RESERVED_SCOPE) return false;
  const held = heldScopes();
  return held.has(RESERVED_SCOPE) || held.has(scope);
}

// ------------------------------------------------------------------------------------------
// Sign in / out.

async function signIn(token: string): Promise<void> {
  const me = await authz.whoAmI({}, bearer(token));
  state.token = token;
  state.me = me;
  sessionStorage.setItem(SESSION_KEY, token);
  state.catalog = await tokens.listScopes({}, bearer(token));
  const p = me.principal;
  byId("whoami").textContent =
    `Signed in as ${p?.userId ?? "?"} (organisation ${p?.orgId ?? "?"}) with “${me.token?.name ?? ""}” ` +
    `[${(me.token?.scopes ?? []).join(", ")}]`;
  byId("only-mine-label").hidden = !isOrgAdmin();
  show(byId("signin"), false);
  show(byId("tokens"), true);
  state.pages = [""];
  await loadPage();
}

function signOut(): void {
  sessionStorage.removeItem(SESSION_KEY);
  state.token = null;
  state.me = null;
  state.catalog = null;
  state.rows.clear();
  byId("token-rows").replaceChildren();
  show(byId("tokens"), false);
  show(byId("signin"), true);
  byId<HTMLInputElement>("signin-token").value = "";
}

// ------------------------------------------------------------------------------------------
// The token list.

function showsUserColumn(): boolean {
  return isOrgAdmin() && !byId<HTMLInputElement>("only-mine").checked;
}

function statusText(t: Token): string {
  switch (t.status) {
    case TokenStatus.ACTIVE:
      return "Active";
    case TokenStatus.EXPIRED:
      return "Expired";
    case TokenStatus.REVOKED:
      return "Revoked";
    default:
      return "Unknown";
  }
}

function expiresCell(t: Token): HTMLTableCellElement {
  if (!t.expiresAt) return el("td", { "data-label": "Expires" }, "Never");
  const at = timestampDate(t.expiresAt).getTime();
  const left = at - Date.now();
  const soon =
    t.status === TokenStatus.ACTIVE && left > 0 && left < EXPIRES_SOON_DAYS * DAY_MS;
  return el(
    "td",
    { "data-label": "Expires" },
    fmtTime(t.expiresAt),
    soon && " ",
    soon && el("span", { class: "badge warn" }, "expires soon"),
  );
}

function tokenRow(t: Token): HTMLTableRowElement {
  const revoke = el(
    "button",
    { type: "button", class: "danger small", "aria-label": `Revoke ${t.name}` },
    "Revoke",
  );
  revoke.addEventListener("click", () => openRevoke(t));
  const row = el(
    "tr",
    { "data-token-id": t.id },
    el(
      "td",
      { "data-label": "Name" },
      el("div", { class: "name" }, t.name),
      t.description && el("div", { class: "muted" }, t.description),
    ),
    el("td", { "data-label": "Prefix" }, el("code", {}, `${t.prefix}…`)),
    el(
      "td",
      { "data-label": "Scopes" },
      ...t.scopes.map((s) => el("span", { class: "badge" }, s)),
    ),
    showsUserColumn() && el("td", { "data-label": "User" }, t.userId),
    el("td", { "data-label": "Created" }, fmtTime(t.createdAt)),
    expiresCell(t),
    el("td", { "data-label": "Last used" }, t.lastUsedAt ? fmtTime(t.lastUsedAt) : "Never"),
    el(
      "td",
      { "data-label": "Status" },
      el("span", { class: `status status-${statusText(t).toLowerCase()}` }, statusText(t)),
    ),
    el("td", { "data-label": "Actions" }, t.status === TokenStatus.ACTIVE && revoke),
  );
  return row;
}

function renderHeader(): void {
  const cols = ["Name", "Prefix", "Scopes"];
  if (showsUserColumn()) cols.push("User");
  cols.push("Created", "Expires", "Last used", "Status", "Actions");
  byId("token-head").replaceChildren(
    el("tr", {}, ...cols.map((c) => el("th", { scope: "col" }, c))),
  );
}

async function loadPage(): Promise<void> {
  if (!state.token) return;
  const listError = byId("list-error");
  listError.textContent = "";
  try {
    const res = await tokens.listTokens(
      {
        pageSize: PAGE_SIZE,
        pageToken: state.pages[state.pages.length - 1],
        includeRevoked: byId<HTMLInputElement>("include-revoked").checked,
        userId: showsUserColumn() ? "-" : "",
      },
      bearer(state.token),
    );
    renderHeader();
    state.rows.clear();
    const rows = res.tokens.map((t) => {
      const row = tokenRow(t);
      state.rows.set(t.id, row);
      return row;
    });
    byId("token-rows").replaceChildren(...rows);
    show(byId("empty"), rows.length === 0);
    state.nextPageToken = res.nextPageToken;
    byId<HTMLButtonElement>("next-page").disabled = res.nextPageToken === "";
    byId<HTMLButtonElement>("prev-page").disabled = state.pages.length <= 1;
    byId("page-number").textContent = `Page ${state.pages.length}`;
  } catch (err) {
    listError.textContent = errorText(err);
  }
}

// ------------------------------------------------------------------------------------------
// Create Token.

/** Scope name -> its checkbox, for the open dialog. */
const scopeBoxes = new Map<string, HTMLInputElement>();
/** Scope name -> the scopes it implies, from the catalog. */
const implies = new Map<string, string[]>();

function impliedBy(checked: string[]): Map<string, string> {
  // Transitively: the first checked scope that brings each implied one.
  const out = new Map<string, string>();
  for (const root of checked) {
    const stack = [...(implies.get(root) ?? [])];
    while (stack.length > 0) {
      const s = stack.pop() as string;
      if (s === root || out.has(s)) continue;
      out.set(s, root);
      stack.push(...(implies.get(s) ?? []));
    }
  }
  return out;
}

function explicitScopes(): string[] {
  return [...scopeBoxes.entries()]
    .filter(([, box]) => box.checked && !box.disabled)
    .map(([name]) => name);
}

function refreshImplied(): void {
  const implied = impliedBy(explicitScopes());
  for (const [name, box] of scopeBoxes) {
    const note = byId(`implied-${cssId(name)}`);
    const by = implied.get(name);
    if (by) {
      box.checked = true;
      box.disabled = true;
      note.textContent = `implied by ${by}`;
    } else {
      if (box.disabled) box.checked = false;
      box.disabled = false;
      note.textContent = "";
    }
  }
}

function cssId(scope: string): string {
  return scope.replace(/[^A-Za-z0-9_-]/g, "_");
}

function buildCreateForm(): void {
  const catalog = state.catalog;
  scopeBoxes.clear();
  implies.clear();
  const groups: HTMLElement[] = [];
  let hidden = 0;
  for (const category of catalog?.categories ?? []) {
    const items: HTMLElement[] = [];
    for (const scope of category.scopes) {
      implies.set(scope.name, scope.implies);
      if (!mayGrant(scope.name)) {
        hidden += 1;
        continue;
      }
      const id = `scope-${cssId(scope.name)}`;
      const box = el("input", { type: "checkbox", id, name: "scopes", value: scope.name });
      box.addEventListener("change", () => {
        byId<HTMLSelectElement>("create-preset").value = presetMatching();
        refreshImplied();
      });
      scopeBoxes.set(scope.name, box);
      items.push(
        el(
          "div",
          { class: "scope" },
          box,
          el(
            "label",
            { for: id },
            el("code", {}, scope.name),
            " ",
            el("span", { class: "muted" }, scope.description),
            scope.implies.length > 0 && el("span", { class: "hint" }, ` (implies ${scope.implies.join(", ")})`),
          ),
          el("span", { class: "implied", id: `implied-${cssId(scope.name)}` }),
        ),
      );
    }
    if (items.length > 0) {
      groups.push(
        el(
          "fieldset",
          { class: "category" },
          el("legend", {}, category.name, " ", el("span", { class: "muted" }, category.description)),
          ...items,
        ),
      );
    }
  }
  byId("scope-groups").replaceChildren(...groups);
  byId("scopes-hidden").textContent =
    hidden > 0 ? `${hidden} scope(s) not offered: your token cannot grant them.` : "";

  const presetSelect = byId<HTMLSelectElement>("create-preset");
  const options = [el("option", { value: "" }, "Custom (pick scopes below)")];
  for (const preset of catalog?.presets ?? []) {
    if (!preset.scopes.every(mayGrant)) continue;
    options.push(
      el("option", { value: preset.id }, `${preset.label} — ${preset.scopes.join(", ")}`),
    );
  }
  presetSelect.replaceChildren(...options);
  presetSelect.value = "";

  const expires = byId<HTMLInputElement>("create-expires");
  const limit = state.me?.principal?.expiresAt;
  byId("expires-hint").textContent = limit
    ? `Required: your token expires ${fmtTime(limit)}, and a new token may not outlive it.`
    : "Leave empty for a token that never expires.";
  expires.required = Boolean(limit);
}

function presetScopes(id: string): string[] {
  return state.catalog?.presets.find((p) => p.id === id)?.scopes ?? [];
}

/** The preset whose scopes are exactly the ticked ones, or "" for custom. */
function presetMatching(): string {
  const ticked = explicitScopes().sort().join(",");
  const current = byId<HTMLSelectElement>("create-preset");
  for (const option of Array.from(current.options)) {
    if (option.value && presetScopes(option.value).slice().sort().join(",") === ticked) {
      return option.value;
    }
  }
  return "";
}

function applyPreset(id: string): void {
  const wanted = new Set(presetScopes(id));
  for (const [name, box] of scopeBoxes) {
    box.disabled = false;
    box.checked = wanted.has(name);
  }
  refreshImplied();
}

const FIELD_ERRORS: Record<string, string> = {
  name: "create-name-error",
  description: "create-description-error",
  preset: "create-preset-error",
  scopes: "create-scopes-error",
  expires_in_days: "create-expires-error",
};

function clearCreateErrors(): void {
  for (const id of Object.values(FIELD_ERRORS)) byId(id).textContent = "";
  byId("create-error").textContent = "";
  for (const id of ["create-name", "create-description", "create-preset", "create-expires"]) {
    byId(id).removeAttribute("aria-invalid");
  }
}

function showCreateError(err: unknown): void {
  if (err instanceof ConnectError && err.code === Code.InvalidArgument) {
    const details = err.findDetails(BadRequestSchema);
    const violations = details.flatMap((d) => d.fieldViolations);
    let placed = 0;
    for (const v of violations) {
      // `scopes[3]` belongs beside the scopes.
      const field = v.field.replace(/\[\d+\]$/, "");
      const target = FIELD_ERRORS[field];
      if (!target) continue;
      const node = byId(target);
      node.textContent = node.textContent ? `${node.textContent}; ${v.description}` : v.description;
      document.getElementById(target.replace(/-error$/, ""))?.setAttribute("aria-invalid", "true");
      placed += 1;
    }
    if (placed === violations.length && placed > 0) return;
  }
  byId("create-error").textContent = errorText(err);
}

function openCreate(): void {
  const form = byId<HTMLFormElement>("create-form");
  form.reset();
  buildCreateForm();
  clearCreateErrors();
  byId<HTMLDialogElement>("create-dialog").showModal();
  byId<HTMLInputElement>("create-name").focus();
}

async function submitCreate(event: SubmitEvent): Promise<void> {
  event.preventDefault();
  if (!state.token) return;
  clearCreateErrors();
  const preset = byId<HTMLSelectElement>("create-preset").value;
  const fromPreset = new Set(presetScopes(preset));
  const scopes = explicitScopes().filter((s) => !fromPreset.has(s));
  const daysText = byId<HTMLInputElement>("create-expires").value.trim();
  const submit = byId<HTMLButtonElement>("create-submit");
  submit.disabled = true;
  try {
    const res = await tokens.createToken(
      {
        name: byId<HTMLInputElement>("create-name").value,
        description: byId<HTMLTextAreaElement>("create-description").value,
        preset,
        scopes,
        expiresInDays: daysText === "" ? undefined : Number(daysText),
      },
      bearer(state.token),
    );
    byId<HTMLDialogElement>("create-dialog").close();
    openCreated(res.secret, res.token);
    await loadPage();
  } catch (err) {
    showCreateError(err);
  } finally {
    submit.disabled = false;
  }
}

// ------------------------------------------------------------------------------------------
// After creation: the secret, once.

/** The new token's secret, while the post-creation dialog is open; null otherwise. */
let secret: string | null = null;

function baseUrl(): string {
  const raw = byId<HTMLInputElement>("base-url").value.trim() || DEFAULT_BASE_URL;
  return raw.replace(/\/+$/, "");
}

function renderSnippets(): void {
  if (secret === null) return;
  const base = baseUrl();
  byId("snippet-curl").textContent =
    `curl ${base}/api/users/me \\\n  -H "Authorization: Bearer ${secret}"`;
  byId("snippet-python").textContent = [
    "from openai import OpenAI",
    "",
    "client = OpenAI(",
    `    base_url="${base}/openai/v1",`,
    `    api_key="${secret}",`,
    ")",
    "response = client.chat.completions.create(",
    '    model="llama-4-scout",',
    '    messages=[{"role": "user", "content": "Hello!"}],',
    ")",
    "print(response.choices[0].message.content)",
  ].join("\n");
  byId("snippet-js").textContent = [
    'import OpenAI from "openai";',
    "",
    "const client = new OpenAI({",
    `  baseURL: "${base}/openai/v1",`,
    `  apiKey: "${secret}",`,
    "});",
    "const response = await client.chat.completions.create({",
    '  model: "llama-4-scout",',
    '  messages: [{ role: "user", content: "Hello!" }],',
    "});",
    "console.log(response.choices[0].message.content);",
  ].join("\n");
}

function openCreated(value: string, token: Token | undefined): void {
  secret = value;
  byId("created-name").textContent = token?.name ?? "";
  byId<HTMLInputElement>("secret-value").value = value;
  byId("copy-status").textContent = "";
  byId("test-result").textContent = "";
  byId("test-result").className = "result";
  renderSnippets();
  byId<HTMLDialogElement>("created-dialog").showModal();
  byId<HTMLButtonElement>("copy-secret").focus();
}

function dropSecret(): void {
  secret = null;
  byId<HTMLInputElement>("secret-value").value = "";
  for (const id of ["snippet-curl", "snippet-python", "snippet-js", "test-result", "copy-status"]) {
    byId(id).textContent = "";
  }
}

async function copySecret(): Promise<void> {
  if (secret === null) return;
  const status = byId("copy-status");
  try {
    await navigator.clipboard.writeText(secret);
    status.textContent = "Copied to the clipboard.";
  } catch {
    // No clipboard permission: select the value so Ctrl+C works.
    byId<HTMLInputElement>("secret-value").select();
    status.textContent = "Press Ctrl+C to copy the selected token.";
  }
}

async function testToken(): Promise<void> {
  if (secret === null) return;
  const result = byId("test-result");
  result.textContent = "Testing…";
  result.className = "result";
  try {
    const me = await authz.whoAmI({}, bearer(secret));
    const p = me.principal;
    result.textContent =
      `Authentication succeeded: user ${p?.userId} of organisation ${p?.orgId}, ` +
      `scopes ${(p?.scopes ?? []).join(", ")}.`;
    result.className = "result ok";
  } catch (err) {
    result.textContent = `Authentication failed: ${errorText(err)}`;
    result.className = "result bad";
  }
}

// ------------------------------------------------------------------------------------------
// Revoke.

let revoking: Token | null = null;

function openRevoke(t: Token): void {
  revoking = t;
  byId("revoke-name").textContent = t.name;
  byId("revoke-prefix").textContent = `${t.prefix}…`;
  byId("revoke-error").textContent = "";
  byId<HTMLDialogElement>("revoke-dialog").showModal();
  byId<HTMLButtonElement>("revoke-cancel").focus();
}

async function confirmRevoke(): Promise<void> {
  if (!state.token || !revoking) return;
  try {
    const res = await tokens.revokeToken({ id: revoking.id }, bearer(state.token));
    const row = state.rows.get(revoking.id);
    if (row && res.token) {
      const updated = tokenRow(res.token);
      row.replaceWith(updated);
      state.rows.set(res.token.id, updated);
    }
    byId<HTMLDialogElement>("revoke-dialog").close();
  } catch (err) {
    byId("revoke-error").textContent = errorText(err);
  }
}

// ------------------------------------------------------------------------------------------
// Wiring.

function on(id: string, event: string, handler: (e: Event) => unknown): void {
  byId(id).addEventListener(event, (e) => {
    void handler(e);
  });
}

async function start(): Promise<void> {
  const base = byId<HTMLInputElement>("base-url");
  base.value = localStorage.getItem(BASE_URL_KEY) ?? DEFAULT_BASE_URL;
  on("base-url", "input", () => {
    localStorage.setItem(BASE_URL_KEY, base.value.trim());
    renderSnippets();
  });

  on("signin-form", "submit", async (e) => {
    e.preventDefault();
    const input = byId<HTMLInputElement>("signin-token");
    const error = byId("signin-error");
    error.textContent = "";
    try {
      await signIn(input.value.trim());
      input.value = "";
    } catch (err) {
      sessionStorage.removeItem(SESSION_KEY);
      error.textContent = errorText(err);
    }
  });
  on("signout", "click", signOut);
  on("include-revoked", "change", () => {
    state.pages = [""];
    return loadPage();
  });
  on("only-mine", "change", () => {
    state.pages = [""];
    return loadPage();
  });
  on("refresh", "click", loadPage);
  on("next-page", "click", () => {
    if (!state.nextPageToken) return;
    state.pages.push(state.nextPageToken);
    return loadPage();
  });
  on("prev-page", "click", () => {
    if (state.pages.length <= 1) return;
    state.pages.pop();
    return loadPage();
  });

  on("create-open", "click", openCreate);
  on("create-form", "submit", (e) => submitCreate(e as SubmitEvent));
  on("create-cancel", "click", () => byId<HTMLDialogElement>("create-dialog").close());
  on("create-preset", "change", () => applyPreset(byId<HTMLSelectElement>("create-preset").value));

  on("copy-secret", "click", copySecret);
  on("test-token", "click", testToken);
  // Every way out drops the secret: at once for the button and Escape ("cancel"), and on
  // "close" (dispatched later, in a task) for anything else that closes the dialog.
  on("created-close", "click", () => {
    dropSecret();
    byId<HTMLDialogElement>("created-dialog").close();
  });
  on("created-dialog", "cancel", dropSecret);
  on("created-dialog", "close", dropSecret);

  on("revoke-cancel", "click", () => byId<HTMLDialogElement>("revoke-dialog").close());
  on("revoke-confirm", "click", confirmRevoke);
  on("revoke-dialog", "close", () => {
    revoking = null;
  });

  const saved = sessionStorage.getItem(SESSION_KEY);
  if (saved) {
    try {
      await signIn(saved);
      return;
    } catch (err) {
      sessionStorage.removeItem(SESSION_KEY);
      byId("signin-error").textContent = errorText(err);
    }
  }
  show(byId("signin"), true);
}

void start();
