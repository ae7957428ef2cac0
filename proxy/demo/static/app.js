"use strict";
// The demo page: fill both galleries, show who is signed in, and poll the comparison numbers.

const role = (document.cookie.match(/(?:^|; )demo_role=([^;]*)/) || [])[1] || "anonymous";
document.getElementById("who").textContent = role;

function renderGalleries(count, bust) {
  for (const grid of document.querySelectorAll(".grid")) {
    grid.textContent = "";
    for (let n = 1; n <= count; n++) {
      const img = document.createElement("img");
      img.src = grid.dataset.prefix + n + (bust ? "" : "");
      img.alt = "employee " + n;
      img.dataset.employee = String(n);
      grid.appendChild(img);
    }
  }
}

function human(bytes) {
  if (bytes === null || bytes === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let value = bytes, unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit++; }
  return (unit ? value.toFixed(1) : value) + " " + units[unit];
}

function set(id, text) { document.getElementById(id).textContent = text; }

function viewCounts() {
  // Resource Timing: transferSize 0 means the browser answered from its cache.
  const counts = { stream: [0, 0], redirect: [0, 0] };
  for (const entry of performance.getEntriesByType("resource")) {
    const path = new URL(entry.name).pathname;
    const kind = path.startsWith("/stream/photos/") ? "stream"
      : path.startsWith("/photos/") ? "redirect" : null;
    if (!kind) continue;
    counts[kind][entry.transferSize > 0 ? 0 : 1] += 1;
  }
  return counts;
}

async function refresh() {
  const response = await fetch("/_demo/stats", { cache: "no-store" });
  const stats = await response.json();
  const by = stats.proxy.by_delivery;
  for (const kind of ["stream", "redirect"]) {
    const s = by[kind] || {};
    set(kind + "-requests", s.requests ?? 0);
    set(kind + "-bytes", human(s.bytes_sent ?? 0));
    set(kind + "-304", s.not_modified ?? 0);
    set(kind + "-ttfb", s.mean_ttfb_ms == null ? "–" : s.mean_ttfb_ms.toFixed(2) + " ms");
  }
  set("s3-proxy", stats.s3.proxy_requests + " (by the proxy)");
  set("s3-presigned", stats.s3.presigned_requests + " (by browsers)");
  set("s3-proxy-bytes", human(stats.s3.proxy_bytes));
  set("s3-presigned-bytes", human(stats.s3.presigned_bytes));
  const view = viewCounts();
  set("view-stream", view.stream[0] + " / " + view.stream[1]);
  set("view-redirect", view.redirect[0] + " / " + view.redirect[1]);
  window.demoStats = stats;
}

async function main() {
  const info = await (await fetch("/_demo/info", { cache: "no-store" })).json();
  document.getElementById("share-link").href = info.share_link;
  renderGalleries(info.photos);
  document.getElementById("reload").addEventListener("click", () => location.reload());
  document.getElementById("admin-report").addEventListener("click", async (event) => {
    event.preventDefault();
    const answer = await fetch("/admin/reports/q4-report.csv");
    set("admin-result", answer.ok
      ? "200: " + (await answer.text()).split("\n")[0] + " …"
      : answer.status + ": " + (await answer.json()).error);
    if (answer.ok) location.href = "/admin/reports/q4-report.csv";
  });
  window.addEventListener("load", refresh);
  setInterval(refresh, 2000);
}

main();
