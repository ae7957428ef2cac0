"use strict";
// The demo's huge-file panel: a presigned multipart upload through the sign API.
//
// The proxy sees only small JSON calls (multipart, resume, complete, abort); the parts go from
// this page straight to S3 with the URLs it signed. The upload survives a reload: its id and
// size are kept in localStorage, and `resume` says which parts S3 already holds. The file is
// generated from each byte's offset, so a reload makes the same bytes again.
//
// The part ETags are taken from `resume` (S3's ListParts), not from the PUT answers: S3 shows a
// page an ETag header only if the bucket's CORS exposes it, which the demo's S3 does not.

(function () {
  const STATE = "demo-multipart"; // localStorage: { path, upload_id, size, part_size }
  const PARALLEL = 3;
  const counts = { proxyRequests: 0, proxyBytes: 0, s3Requests: 0, s3Bytes: 0 };
  const status = document.getElementById("multipart-status");
  const bar = document.getElementById("multipart-progress");

  function human(bytes) {
    const units = ["B", "KiB", "MiB", "GiB"];
    let value = bytes, unit = 0;
    while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit++; }
    return (unit ? value.toFixed(1) : value) + " " + units[unit];
  }

  function say(state, text) {
    status.dataset.state = state;
    status.textContent = text;
  }

  function showCounts() {
    document.getElementById("multipart-proxy-requests").textContent = counts.proxyRequests;
    document.getElementById("multipart-proxy-bytes").textContent = human(counts.proxyBytes);
    document.getElementById("multipart-s3-requests").textContent = counts.s3Requests;
    document.getElementById("multipart-s3-bytes").textContent = human(counts.s3Bytes);
    status.dataset.proxyBytes = String(counts.proxyBytes);
    status.dataset.s3Bytes = String(counts.s3Bytes);
  }

  // Byte i of the file is byte (i % 4) of a hash of the word i / 4: any part can be made
  // alone, and tests can recompute it (tests/test_demo.py).
  function partBytes(size, partSize, number) {
    const start = (number - 1) * partSize;
    const length = Math.min(partSize, size - start);
    const words = new Uint32Array(Math.ceil(length / 4));
    const first = start / 4; // part sizes are whole MiB: a part starts on a word
    for (let w = 0; w < words.length; w++) {
      let x = Math.imul(first + w, 2654435761) >>> 0;
      x ^= x >>> 16;
      x = Math.imul(x, 0x85ebca6b) >>> 0;
      x ^= x >>> 13;
      words[w] = x;
    }
    return new Uint8Array(words.buffer, 0, length);
  }

  async function sign(kind, entry) {
    // One entry of one kind; its refusal (an entry's own status) is thrown.
    const text = JSON.stringify({ [kind]: [entry] });
    const answer = await fetch("/_sign", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: text,
    });
    const reply = await answer.text();
    counts.proxyRequests += 1;
    counts.proxyBytes += text.length + reply.length;
    showCounts();
    let data = {};
    try { data = JSON.parse(reply); } catch { /* not the proxy's JSON */ }
    if (!answer.ok) throw new Error(`${answer.status} ${data.error || ""}`.trim());
    const result = data[kind][0];
    if (result.status >= 400) throw Object.assign(new Error(`${kind}: ${result.status} ${result.error}`), { status: result.status });
    return result;
  }

  async function sendPart(state, part, progress) {
    const body = partBytes(state.size, state.part_size, part.number);
    // Straight to S3: no token, no cookie; the URL signs this part's exact length.
    const answer = await fetch(part.url, { method: "PUT", body, credentials: "omit" });
    counts.s3Requests += 1;
    if (!answer.ok) throw new Error(`part ${part.number}: ${answer.status} from S3`);
    counts.s3Bytes += body.length;
    progress.sent += body.length;
    bar.value = progress.sent / state.size;
    status.dataset.parts = String(Number(status.dataset.parts || 0) + 1);
    showCounts();
  }

  async function sendAll(state, parts, progress) {
    const queue = parts.slice();
    const worker = async () => {
      while (queue.length) await sendPart(state, queue.shift(), progress);
    };
    await Promise.all(Array.from({ length: PARALLEL }, worker));
  }

  async function finish(state, first, held) {
    // Send what is missing; ask S3 what it holds (and for URLs of the rest) until it is all there.
    const progress = { sent: held.reduce((sum, part) => sum + part.size, 0) };
    bar.value = progress.sent / state.size;
    let parts = first;
    for (;;) {
      say("uploading", `uploading ${human(state.size)}: ${human(progress.sent)} in S3`);
      await sendAll(state, parts, progress);
      const resumed = await sign("resume", { path: state.path, upload_id: state.upload_id, size: state.size });
      if (!resumed.parts.length) {
        const listed = resumed.uploaded.map((part) => ({ number: part.number, etag: part.etag }));
        const done = await sign("complete", { path: state.path, upload_id: state.upload_id, parts: listed });
        localStorage.removeItem(STATE);
        bar.value = 1;
        status.dataset.etag = done.etag;
        say("done", `done: ${human(state.size)} in ${listed.length} parts at ${state.path} (ETag ${done.etag}); ` +
          `${human(counts.proxyBytes)} of JSON through the proxy, ${human(counts.s3Bytes)} straight to S3 from this page`);
        return;
      }
      parts = resumed.parts;
    }
  }

  async function start() {
    if (localStorage.getItem(STATE)) { say("error", "an upload is in progress: let it finish, or abort it"); return; }
    const size = Number(document.getElementById("multipart-size").value);
    const path = "/big/uploads/generated-" + size + ".bin";
    try {
      const begun = await sign("multipart", { path, content_type: "application/octet-stream", size });
      const state = { path, upload_id: begun.upload_id, size, part_size: begun.part_size };
      localStorage.setItem(STATE, JSON.stringify(state));
      await finish(state, begun.parts, []);
    } catch (error) {
      say("error", `upload failed: ${error.message}` + (error.status === 401 ? " (sign in first)" : ""));
    }
  }

  async function resumeAfterReload() {
    const kept = localStorage.getItem(STATE);
    if (!kept) return;
    const state = JSON.parse(kept);
    try {
      const resumed = await sign("resume", { path: state.path, upload_id: state.upload_id, size: state.size });
      status.dataset.resumedParts = String(resumed.uploaded.length);
      say("uploading", `resuming: S3 holds ${resumed.uploaded.length} part(s) of ${state.path}`);
      await finish(state, resumed.parts, resumed.uploaded);
      status.textContent = `resumed after a reload (S3 held ${resumed.uploaded.length} part(s)); ` + status.textContent;
    } catch (error) {
      if (error.status === 404) localStorage.removeItem(STATE); // completed, aborted or expired
      say("error", `resume failed: ${error.message}`);
    }
  }

  async function abort() {
    const kept = localStorage.getItem(STATE);
    if (!kept) { say("idle", "no upload in progress"); return; }
    const state = JSON.parse(kept);
    localStorage.removeItem(STATE);
    try {
      await sign("abort", { path: state.path, upload_id: state.upload_id });
      say("aborted", "aborted: S3 dropped the upload and its parts");
    } catch (error) {
      say("error", `abort failed: ${error.message}`);
    }
  }

  document.getElementById("multipart-start").addEventListener("click", start);
  document.getElementById("multipart-abort").addEventListener("click", abort);
  resumeAfterReload();
})();
