// Drives Debian's headless Chromium (playwright-core, no downloaded browser) through the
// control endpoint's status page, against the nginx that t/status_page.t started.
// Prints TAP-like lines ("ok - ...", "not ok - ...", "# ...") that the .t file turns into
// its own tests. Its only argument is a JSON object:
//   chromium  the browser binary (/usr/bin/chromium)
//   base      the endpoint's root: http://127.0.0.1:P/ctl/
//   auth      {base, user, pass}: the same endpoint behind auth_basic
//   app       the server whose requests the scope "default" holds: http://127.0.0.1:P
//   evil      a page of another site (evil.test, mapped to 127.0.0.1) that POSTs to base
//   blocker   a path (with markup in it) to keep in flight, so that it shows as a blocker
//   shots     the directory for the screenshots
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import http from "node:http";
import net from "node:net";
import { chromium } from "playwright-core";

const cfg = JSON.parse(process.argv[2]);
let failed = 0;
const ok = (cond, name, detail) => {
  if (!cond) failed++;
  console.log(`${cond ? "ok" : "not ok"} - ${name}`);
  if (!cond && detail !== undefined) console.log(`# ${String(detail).replace(/\n/g, "\n# ")}`);
  return cond;
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The status JSON as intermissionctl sees it (not through the browser).
async function status(auth) {
  const headers = auth ? { Authorization: "Basic " + Buffer.from(`${auth.user}:${auth.pass}`).toString("base64") } : {};
  const r = await fetch((auth ? auth.base : cfg.base) + "status", { headers });
  const doc = await r.json();
  return doc.scopes.find((s) => s.name === "default");
}

// A GET that the paused scope holds: resolves with its status once answered.
function held(path) {
  return new Promise((resolve) => {
    const req = http.get(cfg.app + path, { agent: false }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode));
    });
    req.on("error", (e) => resolve("error " + e.message));
    req.setTimeout(30000, () => { req.destroy(); resolve("timeout"); });
  });
}

const ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--disable-dev-shm-usage", "--host-resolver-rules=MAP evil.test 127.0.0.1"];

async function browser(extra = {}) {
  const dir = mkdtempSync(join(tmpdir(), "intermission-chromium-"));
  const ctx = await chromium.launchPersistentContext(dir, {
    executablePath: cfg.chromium, headless: true, args: ARGS,
    viewport: { width: 1000, height: 640 }, ...extra,
  });
  return { ctx, close: async () => { await ctx.close(); rmSync(dir, { recursive: true, force: true }); } };
}

// Everything the page must never do: dialogs, script errors, CSP violations, console
// errors, navigations after the first, requests other than the expected ones.
async function watch(page) {
  const w = { dialogs: [], errors: [], console: [], requests: [], navigations: 0 };
  page.on("dialog", (d) => { w.dialogs.push(d.message()); d.dismiss().catch(() => {}); });
  page.on("pageerror", (e) => w.errors.push(e.message));
  page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") w.console.push(m.text()); });
  page.on("request", (r) => w.requests.push(r.method() + " " + r.url()));
  page.on("framenavigated", (f) => { if (f === page.mainFrame()) w.navigations++; });
  await page.addInitScript(() => {
    window.__violations = [];
    document.addEventListener("securitypolicyviolation",
      (e) => window.__violations.push(e.violatedDirective + " " + e.blockedURI));
  });
  return w;
}

const card = (page) => page.locator('article[data-scope="default"]');
async function waitText(loc, want, ms = 8000) {
  const end = Date.now() + ms;
  let got;
  while (Date.now() < end) {
    got = await loc.textContent().catch(() => null);
    if (typeof want === "function" ? want(got) : got === want) return got;
    await sleep(100);
  }
  return got;
}
async function waitFor(fn, ms = 8000) {
  const end = Date.now() + ms;
  while (Date.now() < end) { if (await fn()) return true; await sleep(100); }
  return false;
}

async function plain() {
  const b = await browser();
  const page = b.ctx.pages()[0] || (await b.ctx.newPage());
  const w = await watch(page);

  // A request in flight with markup in its path: a drain blocker once it is 1 s old.
  const blocker = net.connect(Number(new URL(cfg.app).port), "127.0.0.1");
  blocker.on("data", () => {});
  blocker.on("error", () => {});
  blocker.write(`GET ${cfg.blocker}?stream=0 HTTP/1.1\r\nHost: x\r\n\r\n`);

  const res = await page.goto(cfg.base);
  const h = res.headers();
  ok(res.status() === 200, "the endpoint's root answers the page (200)", res.status());
  const csp = h["content-security-policy"] || "";
  ok(/^default-src 'none'; script-src 'sha256-[A-Za-z0-9+/]{43}='; style-src 'sha256-[A-Za-z0-9+/]{43}='; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'$/.test(csp),
    "the page's Content-Security-Policy forbids everything but its own script, style and fetches", csp);
  console.log(`# Content-Security-Policy: ${csp}`);
  ok(h["x-frame-options"] === "DENY" && h["referrer-policy"] === "no-referrer" && h["x-content-type-options"] === "nosniff"
    && h["cache-control"] === "no-store" && h["content-type"] === "text/html; charset=utf-8",
    "the page's other safety headers", JSON.stringify(h));

  // The script ran under that policy (its hash matched), and so did the style.
  const held0 = await waitText(card(page).locator(".f-held"), "0");
  ok(held0 === "0", "the script ran: the scope default shows 0 held", held0);
  const bg = await card(page).locator(".state").evaluate((e) => getComputedStyle(e).backgroundColor);
  ok(bg !== "rgba(0, 0, 0, 0)", "the style applied: the state badge has its colour", bg);
  ok((await card(page).locator(".state").textContent()) === "running", "the scope shows as running");

  // Every scope has its card, in the order of status; a scope whose backend is away shows
  // as down, with why.
  const down = held("/api/down");
  const api = page.locator('article[data-scope="api"]');
  const apiState = await waitText(api.locator(".state"), "down", 10000);
  ok(apiState === "down", "a scope whose backend is away shows as down", apiState);
  const apiWhy = await api.locator(".why").textContent();
  ok(/the backend failed \(no connection to the backend \(502\)\) at .*; nginx checks it/.test(apiWhy),
    "with why: the last error, since when, and that nginx checks it", apiWhy);
  const names = await page.locator("article").evaluateAll((a) => a.map((e) => e.dataset.scope));
  const doc = await (await fetch(cfg.base + "status")).json();
  ok(JSON.stringify(names) === JSON.stringify(doc.scopes.map((s) => s.name)) && names.length === 3,
    "a card for every scope of status, in its order", names.join(","));
  ok((await page.locator('article[data-scope="billing"] .state').textContent()) === "running", "billing runs");

  // The blocker's path shows as text; nothing in it runs or becomes an element.
  const path = card(page).locator(".b-table td.path");
  const shown = await waitText(path.first(), (t) => t !== null && t.length > 0, 6000);
  ok(shown === cfg.blocker, "a blocker's path with <script> and <img onerror> shows as text, unchanged", shown);
  const dom = await page.evaluate(() => ({
    imgs: document.querySelectorAll("img").length,
    scripts: document.querySelectorAll("script").length,
    xss: window.__xss === undefined ? null : window.__xss,
    violations: window.__violations,
  }));
  ok(dom.imgs === 0 && dom.scripts === 1 && dom.xss === null && dom.violations.length === 0,
    "no element, script or CSP violation came from it", JSON.stringify(dom));

  // Loading and watching the page only reads.
  await sleep(1500);
  const writes = w.requests.filter((r) => !r.startsWith("GET "));
  ok(writes.length === 0, "loading and polling the page sends only GETs", writes.join(", "));
  const st0 = await status();
  ok(st0 && !st0.paused, "the scope is still running after the page loaded and polled");

  // Pause, with an auto-resume.
  await page.selectOption("#auto", "15m");
  await card(page).locator(".b-pause").click();
  ok(await waitFor(async () => (await status()).paused), "the Pause button paused the scope (JSON status)");
  const st1 = await status();
  ok(st1.auto_resume_in_ms > 890000 && st1.auto_resume_in_ms <= 900000, "with the chosen auto-resume (15 min)", st1.auto_resume_in_ms);
  const posts = w.requests.filter((r) => !r.startsWith("GET "));
  ok(posts.length === 1 && posts[0] === `POST ${cfg.base}pause?scope=default&auto_resume=15m`,
    "it sent intermissionctl's POST pause?scope=default&auto_resume=15m", posts.join(", "));
  const said = await waitText(page.locator("#msg"), (t) => /paused default/.test(t || ""));
  ok(/^\S+.*: paused default$/.test(said || ""), "the page says, with the time, what the pause did (no figure that goes stale)", said);
  const badge = await waitText(card(page).locator(".state"), "paused");
  ok(badge === "paused", "the page shows the scope paused", badge);
  const countdown = await waitText(card(page).locator(".f-auto"), (t) => /^1[45] min \d\d s$/.test(t || ""));
  ok(/^1[45] min \d\d s$/.test(countdown || ""), "the auto-resume countdown shows", countdown);
  const c1 = await card(page).locator(".f-auto").textContent();
  await sleep(2200);
  const c2 = await card(page).locator(".f-auto").textContent();
  ok(c1 !== c2, "and counts down", `${c1} -> ${c2}`);

  // Held requests: the count changes on the page without a reload.
  const answers = [held("/held/1"), held("/held/2"), held("/held/3")];
  const n = await waitText(card(page).locator(".f-held"), "3");
  ok(n === "3", "3 held requests show as held 3, without a reload", n);
  ok(w.navigations === 1, "no reload: one navigation", w.navigations);
  const oldest = await waitText(card(page).locator(".f-oldest"), (t) => /^\d+\.\d s$/.test(t || "") && t !== "0.0 s");
  ok(/^\d+\.\d s$/.test(oldest || ""), "the oldest held request's age shows", oldest);
  await sleep(1200);
  const g = await card(page).evaluate((e) => ({
    max: e.querySelector(".g-max").textContent,
    held: (e.querySelector(".l-held").getAttribute("points") || "").split(" ").length,
    fly: (e.querySelector(".l-fly").getAttribute("points") || "").split(" ").length,
  }));
  ok(g.max === "3" && g.held >= 5 && g.fly >= 5, "the graph has points for held and in flight, peak 3", JSON.stringify(g));
  ok((await card(page).locator(".f-fly").textContent()) === "1", "the blocker counts in flight");

  await page.screenshot({ path: join(cfg.shots, "status.png"), fullPage: true });
  console.log(`# screenshot: ${join(cfg.shots, "status.png")}`);

  // Resume: the held requests are answered 200.
  await card(page).locator(".b-resume").click();
  const codes = await Promise.all(answers);
  ok(codes.every((c) => c === 200), "the Resume button released the held requests: each answered 200", codes.join(","));
  ok(await waitFor(async () => !(await status()).paused), "the scope runs again (JSON status)");
  const msg = await waitText(page.locator("#msg"), (t) => /released 3/.test(t || ""));
  ok(/resumed default, released 3/.test(msg || ""), "the page says what the resume released", msg);
  ok((await waitText(card(page).locator(".f-held"), "0")) === "0", "held is back to 0 on the page");
  ok((await waitText(card(page).locator(".state"), "running")) === "running", "the page shows the scope running");
  blocker.destroy();
  void down; // answered when nginx stops

  ok(w.dialogs.length === 0, "no dialog opened", w.dialogs.join("; "));
  ok(w.errors.length === 0, "no script error", w.errors.join("; "));
  ok(w.console.length === 0, "no console error or warning", w.console.join("; "));
  const v = await page.evaluate(() => window.__violations);
  ok(v.length === 0, "no CSP violation", v.join("; "));

  // A GET of a command that changes state changes nothing (the browser's own navigation).
  const other = await b.ctx.newPage();
  const g1 = await other.goto(cfg.base + "pause?scope=default");
  ok(g1.status() === 405, "a browser's GET of pause is a 405", g1.status());
  ok(!(await status()).paused, "and paused nothing");

  // Another site's page POSTs to the endpoint: a form (a top-level navigation) and a
  // no-cors fetch, neither of which needs a preflight. Both are refused.
  const evil = await b.ctx.newPage();
  const seen = [];
  evil.on("response", (r) => { if (r.url().startsWith(cfg.base)) seen.push(r.request().method() + " " + r.status()); });
  await evil.goto(cfg.evil);
  await evil.waitForURL((u) => u.href.startsWith(cfg.base), { timeout: 8000 }).catch(() => {});
  const body = await evil.textContent("body").catch(() => "");
  ok(/cross-site/.test(body || ""), "another site's form POST to pause is refused: the browser shows the 403's reason", body);
  ok(seen.includes("POST 403"), "its answer is a 403", seen.join(", "));
  ok(!(await status()).paused, "the cross-site form paused nothing");
  await evil.goto(cfg.evil + "fetch");
  await evil.evaluate(async (u) => { try { await fetch(u, { method: "POST", mode: "no-cors" }); } catch (e) { /* opaque */ } }, cfg.base + "pause");
  await sleep(300);
  ok(seen.filter((s) => s === "POST 403").length === 2, "another site's no-cors fetch POST is a 403 too", seen.join(", "));
  ok(!(await status()).paused, "the cross-site fetch paused nothing");
  await b.close();
}

async function withAuth() {
  const { base, user, pass } = cfg.auth;
  const b = await browser({ httpCredentials: { username: user, password: pass } });
  const page = b.ctx.pages()[0] || (await b.ctx.newPage());
  const w = await watch(page);
  const res = await page.goto(base);
  ok(res.status() === 200, "behind auth_basic, with credentials: the page (200)", res.status());
  ok((await waitText(card(page).locator(".state"), "running")) === "running", "behind auth_basic: the page reads status");
  await page.selectOption("#auto", "");
  await card(page).locator(".b-pause").click();
  ok(await waitFor(async () => (await status(cfg.auth)).paused), "behind auth_basic: Pause paused the scope");
  ok((await status(cfg.auth)).auto_resume_at === null, "without an auto-resume when none is chosen");
  ok((await waitText(card(page).locator(".state"), "paused")) === "paused", "behind auth_basic: the page shows it paused");
  ok((await waitText(card(page).locator(".f-auto"), "\u2014")) === "\u2014", "no countdown without an auto-resume");
  await page.screenshot({ path: join(cfg.shots, "status-auth.png"), fullPage: true });
  console.log(`# screenshot: ${join(cfg.shots, "status-auth.png")}`);
  await page.locator("#resume-all").click();
  ok(await waitFor(async () => !(await status(cfg.auth)).paused), "behind auth_basic: Resume all resumed it");
  ok(w.requests.filter((r) => r.startsWith("POST ")).join(", ") === `POST ${base}pause?scope=default, POST ${base}resume`,
    "behind auth_basic: the page sent POST pause?scope=default and POST resume", w.requests.join(", "));
  ok(w.dialogs.length === 0 && w.errors.length === 0 && w.console.length === 0,
    "behind auth_basic: no dialog, script error or console error", [...w.dialogs, ...w.errors, ...w.console].join("; "));
  await b.close();
}

try {
  await plain();
  await withAuth();
} catch (e) {
  ok(false, "the browser run completed", e.stack || e);
}
process.exit(failed ? 1 : 0);
