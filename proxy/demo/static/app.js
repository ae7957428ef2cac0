"use strict";
// The demo page: show who is signed in, load each gallery, and say what that view cost.
//
// What a view cost is counted where the traffic happens, at the proxy (its metrics), at the
// stand-in CloudFront edge and at the demo's S3, read before a gallery's images are requested
// and after every one has loaded or failed. The galleries load one after the other, so each reading belongs to one method. The
// browser cannot tell by itself: Resource Timing reports 0 bytes for S3's cross-origin answers
// (no Timing-Allow-Origin), which would read as "from the cache" on a first view.

const KINDS = ["stream", "redirect", "cloudfront"];
const COLOURS = { stream: "#3867d6", redirect: "#e17a16", cloudfront: "#2a9d5c" };
// What the proxy counts each column's requests under: the cloudfront column signs its whole
// gallery with one POST /_sign (delivery "sign"); a refused image asks its route.
const DELIVERIES = { stream: ["stream"], redirect: ["redirect"], cloudfront: ["sign", "cloudfront"] };
const LAST_VIEW = "demo-last-view"; // sessionStorage: the previous view's numbers, for the charts

const role = (document.cookie.match(/(?:^|; )demo_role=([^;]*)/) || [])[1] || "anonymous";
document.getElementById("who").textContent = role;

function set(id, text) { document.getElementById(id).textContent = text; }

function human(bytes) {
  if (bytes === null || bytes === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let value = bytes, unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit++; }
  return (unit ? value.toFixed(1) : value) + " " + units[unit];
}

function ms(value) { return value === null ? "no request" : value.toFixed(2) + " ms"; }

async function readStats(settled) {
  // `settled`: the server first waits until every answer it has begun is counted.
  const response = await fetch("/_demo/stats" + (settled ? "?settled" : ""), { cache: "no-store" });
  return response.json();
}

async function signGallery(grid, count) {
  // The cloudfront column's one proxy request: POST /_sign for every photo. Its answer names
  // each photo's URL at the edge and sets the signed cookies that open them all. A path the
  // proxy refused (or a refused batch) is shown from its proxy path, so it fails with the
  // proxy's own answer, as in the other columns.
  const paths = Array.from({ length: count }, (_, i) => grid.dataset.prefix + (i + 1));
  try {
    const answer = await fetch("/_sign", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ paths }),
      cache: "no-store",
    });
    if (answer.ok) {
      const { results } = await answer.json();
      return results.map((r) => (r.status ? null : r.url));
    }
  } catch { /* shown as failed images below */ }
  return paths.map(() => null);
}

function loadGallery(grid, count, sources) {
  // Resolves once every image has loaded or failed: [{ img, caption, ok }]. `sources`: the
  // URL of each image when they are not the column's own proxy paths.
  grid.textContent = "";
  const outcomes = [];
  for (let n = 1; n <= count; n++) {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    const caption = document.createElement("figcaption");
    img.alt = "employee " + n;
    img.dataset.employee = String(n);
    outcomes.push(new Promise((resolve) => {
      img.addEventListener("load", () => resolve({ img, caption, ok: true }), { once: true });
      img.addEventListener("error", () => resolve({ img, caption, ok: false }), { once: true });
    }));
    img.dataset.check = grid.dataset.prefix + n;  // where a failure is asked about
    img.src = (sources && sources[n - 1]) || img.dataset.check;
    figure.append(img, caption);
    grid.appendChild(figure);
  }
  return Promise.all(outcomes);
}

function difference(kind, before, after, outcomes) {
  // What the proxy and S3 counted between two readings, as this one gallery's numbers.
  const count = (stats, name) => DELIVERIES[kind]
    .reduce((sum, delivery) => sum + ((stats.proxy.by_delivery[delivery] || {})[name] || 0), 0);
  const delta = (name) => count(after, name) - count(before, name);
  const s3 = (name) => after.s3[name] - before.s3[name];
  const edge = (name) => (after.edge[name] || 0) - (before.edge[name] || 0);
  const loaded = outcomes.filter((o) => o.ok).length;
  const byEdge = kind === "cloudfront";
  const view = {
    loaded,
    failed: outcomes.length - loaded,
    proxyRequests: delta("requests"),
    proxyNotModified: delta("not_modified"),
    proxyBytes: delta("bytes_sent"),
    ttfb: delta("requests") ? delta("ttfb_ms_sum") / delta("requests") : null,
    // Who asked S3 on this column's behalf: the proxy, or (cloudfront) the edge filling its cache.
    proxyS3Requests: s3(byEdge ? "edge_requests" : "proxy_requests"),
    proxyS3Bytes: s3(byEdge ? "edge_bytes" : "proxy_bytes"),
    browserS3Requests: s3("presigned_requests"),
    browserS3NotModified: s3("presigned_not_modified"),
    browserS3Bytes: s3("presigned_bytes"),
    browserEdgeRequests: byEdge ? edge("requests") : 0,
    edgeNotModified: byEdge ? edge("not_modified") : 0,
    edgeRefused: byEdge ? edge("refused") : 0,
    settled: before.settled && after.settled,
  };
  // Image bodies that crossed the network: a 200 from the proxy (stream), from S3 (redirect)
  // or from the edge (cloudfront).
  const sent = {
    stream: view.proxyRequests - view.proxyNotModified - view.failed,
    redirect: view.browserS3Requests - view.browserS3NotModified,
    cloudfront: view.browserEdgeRequests - view.edgeNotModified - view.edgeRefused,
  }[kind];
  view.fromCache = Math.max(loaded - sent, 0);
  view.browserRequests = view.proxyRequests + view.browserS3Requests + view.browserEdgeRequests;
  return view;
}

function showView(view) {
  for (const kind of KINDS) {
    const v = view[kind];
    set(`view-${kind}-images`, v.loaded + " / " + v.failed);
    set(`view-${kind}-proxy-requests`, v.proxyRequests);
    set(`view-${kind}-browser-edge`, v.browserEdgeRequests);
    set(`view-${kind}-browser-s3`, v.browserS3Requests);
    set(`view-${kind}-from-cache`, v.fromCache);
    set(`view-${kind}-304`, {
      stream: v.proxyNotModified + " from the proxy",
      redirect: v.browserS3NotModified + " from S3",
      cloudfront: v.edgeNotModified + " from the edge",
    }[kind]);
    set(`view-${kind}-proxy-bytes`, human(v.proxyBytes));
    set(`view-${kind}-proxy-s3`, v.proxyS3Requests);
    set(`view-${kind}-s3-bytes`, human(v.proxyS3Bytes + v.browserS3Bytes)
      + { stream: " (to the proxy)", redirect: " (to this browser)", cloudfront: " (to the edge)" }[kind]);
    const what = { stream: "", redirect: " (the 302)", cloudfront: " (the sign call)" }[kind];
    set(`view-${kind}-ttfb`, ms(v.ttfb) + (v.ttfb !== null ? what : ""));
  }
  const complete = KINDS.every((kind) => view[kind].settled);
  let state = complete
    ? "Counted: the numbers below are this view's alone."
    : "Some answers were still in progress when counted: the numbers may be short.";
  if (role === "anonymous" && view.redirect.fromCache) {
    // The truth about caching a redirect: a fresh copy is shown without asking anyone.
    state += ` Signed out, this browser still shows ${view.redirect.fromCache} redirect images`
      + " from its cache, without a request: a cached redirect and image stay usable until their"
      + " max-age ends.";
  }
  set("view-state", state);
}

function showCharts(view, previous) {
  const views = previous ? [previous, view] : [view];
  const label = (v, i) => (i === views.length - 1 ? "this view" : "previous view") + " (" + v.role + ")";
  const groups = (pick) => views.map((v, i) => ({
    label: label(v, i),
    values: Object.fromEntries(KINDS.map((kind) => [kind, v[kind] ? pick(v[kind]) : null])),
  }));
  barChart(document.getElementById("chart-bytes"), "bytes through the proxy",
    groups((v) => v.proxyBytes), human);
  barChart(document.getElementById("chart-requests"), "requests sent (proxy + S3 + edge)",
    groups((v) => v.browserRequests), String);
  barChart(document.getElementById("chart-ttfb"), "mean time to first byte at the proxy",
    groups((v) => v.ttfb), (x) => (x === null ? "no request" : x.toFixed(2) + " ms"));
}

const SVG = "http://www.w3.org/2000/svg";

function svg(name, attributes, text) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

function barChart(figure, title, groups, format) {
  // A bar per method in each group (a view), labelled with its value or why it has none.
  const width = 300, height = 200, top = 48, bottom = 24, barWidth = 30, gap = 6;
  const plot = height - top - bottom;
  const values = groups.flatMap((g) => KINDS.map((k) => g.values[k] || 0));
  const max = Math.max(...values, 1e-9);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title });
  chart.append(svg("text", { x: 6, y: 15, class: "chart-title" }, title));
  KINDS.forEach((kind, k) => {  // the legend
    const x = 6 + k * 84;
    chart.append(svg("rect", { x, y: 22, width: 10, height: 10, fill: COLOURS[kind] }));
    chart.append(svg("text", { x: x + 14, y: 31, class: "legend" }, kind));
  });
  chart.append(svg("line", { x1: 4, x2: width - 4, y1: top + plot, y2: top + plot, class: "axis" }));
  const groupWidth = (width - 8) / groups.length;
  groups.forEach((group, g) => {
    const middle = 4 + groupWidth * (g + 0.5);
    KINDS.forEach((kind, k) => {
      const value = group.values[kind];
      const size = value ? Math.max((value / max) * plot, 1) : 0;
      const x = middle - (KINDS.length * (barWidth + gap) - gap) / 2 + k * (barWidth + gap);
      const bar = svg("rect", {
        x, y: top + plot - size, width: barWidth, height: size, fill: COLOURS[kind],
        class: "bar", "data-kind": kind, "data-value": value === null ? "" : String(value),
      });
      bar.append(svg("title", {}, `${kind}, ${group.label}: ${format(value)}`));
      chart.append(bar);
      chart.append(svg("text", {
        x: x + barWidth / 2, y: top + plot - size - 4, class: "value", "text-anchor": "middle",
      }, format(value)));
    });
    chart.append(svg("text", {
      x: middle, y: top + plot + 16, class: "group", "text-anchor": "middle",
    }, group.label));
  });
  figure.replaceChildren(chart);
}

async function explainFailures(outcomes) {
  // An <img> hears no status. Ask the proxy the same question, with the same cookie, and show
  // its answer under the image; a redirect is not followed, so S3 is not asked again.
  for (const { img, caption, ok } of outcomes) {
    if (ok) continue;
    const answer = await fetch(img.dataset.check, { redirect: "manual", cache: "no-store" });
    if (answer.type === "opaqueredirect") {
      caption.textContent = img.dataset.check.startsWith("/cdn/")
        ? "302 to the edge, which did not deliver the image"
        : "302 to S3, which did not deliver the image";
      continue;
    }
    let error = "";
    try { error = (await answer.json()).error || ""; } catch { /* not the proxy's JSON */ }
    if (answer.status === 401) {
      // The proxy says why only in its challenge (RFC 6750): a bare "Bearer" means no token
      // came at all; error="invalid_token", that the token was refused.
      const challenge = answer.headers.get("WWW-Authenticate") || "";
      error = challenge.includes("invalid_token") ? "token refused" : "no token";
    }
    const advice = { 401: "sign in", 403: "not allowed for " + role, 404: "no such photo" };
    const why = advice[answer.status] || "";
    caption.textContent = answer.status + ": " + [why, error ? `(${error})` : ""].filter(Boolean).join(" ");
    caption.dataset.status = String(answer.status);
  }
}

async function refreshTotals() {
  const stats = await readStats(false);
  const by = stats.proxy.by_delivery;
  for (const kind of KINDS) {
    const sum = (name) => DELIVERIES[kind].reduce((total, d) => total + ((by[d] || {})[name] || 0), 0);
    const requests = sum("requests");
    set(`total-${kind}-requests`, requests);
    set(`total-${kind}-bytes`, human(sum("bytes_sent")));
    set(`total-${kind}-304`, sum("not_modified"));
    set(`total-${kind}-ttfb`, requests ? (sum("ttfb_ms_sum") / requests).toFixed(2) + " ms" : "–");
  }
  set("total-s3-proxy", stats.s3.proxy_requests + " (by the proxy)");
  set("total-s3-presigned", stats.s3.presigned_requests + " (by browsers)");
  set("total-s3-edge", stats.s3.edge_requests + " (by the edge)");
  set("total-s3-proxy-bytes", human(stats.s3.proxy_bytes));
  set("total-s3-presigned-bytes", human(stats.s3.presigned_bytes));
  set("total-s3-edge-bytes", human(stats.s3.edge_bytes));
}

async function viewGalleries(photos) {
  const view = { role };
  const everyImage = [];
  let reading = await readStats(true);
  for (const kind of KINDS) {
    const grid = document.querySelector(`#col-${kind} .grid`);
    const sources = kind === "cloudfront" ? await signGallery(grid, photos) : null;
    const outcomes = await loadGallery(grid, photos, sources);
    const after = await readStats(true);
    view[kind] = difference(kind, reading, after, outcomes);
    everyImage.push(...outcomes);
    reading = after;
  }
  const previous = JSON.parse(sessionStorage.getItem(LAST_VIEW) || "null");
  sessionStorage.setItem(LAST_VIEW, JSON.stringify(view));
  set("view-title", "(as " + role + (previous ? "; the previous view in this tab is charted too)" : ")"));
  showView(view);
  showCharts(view, previous);
  window.demoView = view;
  await explainFailures(everyImage);
  document.getElementById("view-panel").dataset.state = "counted";
  await refreshTotals();
}

const UPLOAD_PREFIXES = { stream: "/stream/uploads/", redirect: "/uploads/" };

async function uploadPicture(method) {
  // A PUT with the cookie's token. By redirect, the browser follows the 307 itself: same
  // method, body and Content-Type, to S3 (which sees neither the cookie nor the token).
  const file = document.getElementById("upload-file").files[0];
  if (!file) { set("upload-result", "choose a picture first"); return; }
  const name = method + "-" + file.name.replace(/[^A-Za-z0-9._-]/g, "_");
  const path = UPLOAD_PREFIXES[method] + name;
  let answer;
  try {
    answer = await fetch(path, {
      method: "PUT", body: file, headers: { "Content-Type": file.type || "application/octet-stream" },
    });
  } catch (error) {
    set("upload-result", `${method}: the upload failed (${error.message})`);
    return;
  }
  const result = document.getElementById("upload-result");
  result.dataset.status = String(answer.status);
  if (!answer.ok) {
    let error = "";
    try { error = (await answer.json()).error || ""; } catch { /* S3's XML, not the proxy's JSON */ }
    const advice = { 401: "sign in first" }[answer.status] || "";
    set("upload-result", `${method}: ${answer.status} ` + [advice, error ? `(${error})` : ""].filter(Boolean).join(" "));
    return;
  }
  // By stream, the proxy's 201 (200 when it replaced a picture); by redirect, S3's 200 at
  // the end of the redirect.
  set("upload-result", `${method}: ${answer.status} from ${answer.redirected ? "S3, after a 307 from the proxy" : "the proxy"}; shown below from ${path}`);
  const figure = document.createElement("figure");
  const img = document.createElement("img");
  const caption = document.createElement("figcaption");
  img.alt = name;
  img.dataset.method = method;
  img.src = path + "?v=" + Date.now();  // a new query each time: never an older copy
  caption.textContent = method + ": " + name;
  figure.append(img, caption);
  document.getElementById("upload-shown").prepend(figure);
}

async function main() {
  const info = await (await fetch("/_demo/info", { cache: "no-store" })).json();
  document.getElementById("share-link").href = info.share_link;
  document.getElementById("reload").addEventListener("click", () => location.reload());
  document.getElementById("admin-report").addEventListener("click", async (event) => {
    event.preventDefault();
    const answer = await fetch("/admin/reports/q4-report.csv");
    set("admin-result", answer.ok
      ? "200: " + (await answer.text()).split("\n")[0] + " …"
      : answer.status + ": " + (await answer.json()).error);
    if (answer.ok) location.href = "/admin/reports/q4-report.csv";
  });
  for (const method of ["stream", "redirect"]) {
    document.getElementById("upload-" + method).addEventListener("click", () => uploadPicture(method));
  }
  await viewGalleries(info.photos);
  setInterval(refreshTotals, 2000);
}

main();
