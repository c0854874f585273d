/* The wire panel: one compact line per event of the emulated DingTalk (connections, frames pushed, acks,
 * redeliveries, REST calls, bot messages, what people typed), newest at the bottom; a click on a line shows
 * the whole event as JSON. Filter chips hide the Stream, REST or Chat lines.
 *
 *   SandboxWire.setup(chatName)   once; chatName(conversationId) -> a readable name
 *   SandboxWire.add(event)        for every event of /_fake/events
 *   SandboxWire.clear()
 */
(function (global) {
  "use strict";

  const MAX_LINES = 1500;
  const STREAM_KINDS = new Set(["connection", "frame", "ack", "redelivery"]);
  const LABELS = { connection: "CONN", redelivery: "RETRY", outbound: "SEND", card_callback: "BUTTON" };
  const filters = { stream: true, rest: true, chat: true };
  let chatName = (cid) => short(cid);

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function short(id) {
    return id ? String(id).slice(0, 8) : "–";
  }

  function clock(ms) {
    const d = new Date(ms || Date.now());
    const two = (n) => String(n).padStart(2, "0");
    return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}.${String(d.getMilliseconds()).padStart(3, "0")}`;
  }

  // [summary, tone] where tone is "", "warn" or "bad".
  function describe(ev) {
    const mid = short(ev.message_id);
    switch (ev.kind) {
      case "connection":
        return [`${ev.event} ${short(ev.connection_id)}${ev.app ? " · " + ev.app : ""}` +
          (ev.close_code != null && ev.event === "closed" ? ` · code ${ev.close_code}` : "") +
          (ev.reason ? ` · ${ev.reason}` : ""), ev.event === "rejected" ? "bad" : ""];
      case "frame":
        if (ev.direction === "dropped") return [`✕ not pushed ${mid} · ${ev.reason}`, "warn"];
        if (ev.direction === "queued") return [`⏸ queued ${mid} · no live connection (${ev.queued} waiting)`, "warn"];
        if (ev.direction === "in") return ["⚠ unreadable frame from the client", "bad"];
        if (ev.type === "raw") return [`→ raw frame · ${ev.size} bytes`, ""];
        return [`→ ${ev.type || ""} ${ev.topic || ""} ${mid}` + (ev.attempt > 1 ? ` · attempt ${ev.attempt}` : "") +
          (ev.ok === false ? ` · failed: ${ev.error}` : ""), ev.ok === false ? "bad" : ""];
      case "ack":
        return [`← ack ${ev.code}${ev.message && ev.message !== "OK" ? " " + ev.message : ""} ${mid}` +
          (ev.latency_s != null ? ` · ${(ev.latency_s * 1000).toFixed(1)} ms` : "") + (ev.topic === "ping" ? " · pong" : ""),
          ev.code === 200 ? "" : "bad"];
      case "redelivery":
        if (ev.duplicate) return [`↻ duplicate ${mid}`, "warn"];
        if (ev.gave_up) return [`↻ gave up on ${mid} after ${ev.attempt} attempts`, "bad"];
        return [`↻ redeliver ${mid} · attempt ${ev.attempt} (no ack in time)`, "warn"];
      case "rest": {
        const code = ev.response && typeof ev.response === "object" ? ev.response.errcode : 0;
        const err = code ? ` · errcode ${code}` : "";
        return [`${ev.method} ${ev.path} → ${ev.status}${err}${ev.fault ? " · fault " + ev.fault : ""}`,
          ev.status >= 400 || err ? "bad" : ""];
      }
      case "outbound":
        return [`✉ ${ev.via} ${ev.msgtype} → ${chatName(ev.conversation_id)}${ev.title ? ` “${ev.title}”` : ""}` +
          (ev.at_user_ids && ev.at_user_ids.length ? ` @${ev.at_user_ids.join(",")}` : ""), ""];
      case "card":
        return [`▤ card ${short(ev.out_track_id.replace(/^edgecrab_/, ""))} ${ev.action} · ${ev.status || "–"}` +
          ` · ${(ev.text || "").length} chars${ev.stream_finalized ? " · final" : ""}`,
          ev.status === "failed" ? "bad" : ""];
      case "card_callback":
        return [`▤ button ${(ev.action_ids || []).join(",")} pressed on card ${short(ev.out_track_id.replace(/^edgecrab_/, ""))}`, "warn"];
      case "chat": {
        const at = ev.at_bot ? " (@robot)" : ev.at_bot === false ? " (no @)" : "";
        return [`${ev.sender.nick} → ${chatName(ev.conversation_id)}${at}: ${ev.text}`, ""];
      }
      default:
        return [JSON.stringify(ev), ""];
    }
  }

  function filterOf(kind) {
    return STREAM_KINDS.has(kind) ? "stream" : kind === "chat" ? "chat" : "rest";
  }

  function add(ev) {
    const list = document.getElementById("wire");
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    const [text, tone] = describe(ev);
    const li = el("li", `k-${ev.kind}${tone ? " " + tone : ""}`);
    li.dataset.kind = ev.kind;
    li.dataset.filter = filterOf(ev.kind);
    if (!filters[li.dataset.filter]) li.classList.add("hidden");
    const line = el("button", "ev-line");
    line.type = "button";
    line.title = text;
    line.append(el("time", "", clock(ev.ts)), el("span", "ev-kind", LABELS[ev.kind] || ev.kind.toUpperCase()),
      el("span", "ev-text", text));
    line.addEventListener("click", () => {
      const open = li.querySelector(".ev-detail");
      if (open) open.remove();
      else li.append(el("pre", "ev-detail", JSON.stringify(ev, null, 2)));
    });
    li.append(line);
    list.append(li);
    while (list.childElementCount > MAX_LINES) list.firstElementChild.remove();
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  function clear() {
    document.getElementById("wire").replaceChildren();
  }

  function setup(namer) {
    chatName = namer;
    document.getElementById("wire-clear").addEventListener("click", clear);
    for (const chip of document.querySelectorAll(".chip[data-filter]")) {
      chip.addEventListener("click", () => {
        const name = chip.dataset.filter;
        filters[name] = !filters[name];
        chip.classList.toggle("on", filters[name]);
        chip.setAttribute("aria-pressed", String(filters[name]));
        for (const li of document.getElementById("wire").children) li.classList.toggle("hidden", !filters[li.dataset.filter]);
      });
    }
  }

  global.SandboxWire = { setup, add, clear };
})(window);
