/* AI cards in the sandbox web chat (reply_mode: card).
 *
 * The emulator publishes a `card` event on /_fake/events for every change of a card (created, delivered,
 * streamed, updated): its outTrackId, status (inputting, finished, failed), the text a user sees, and where
 * it was delivered. A card is one bot bubble that is painted again on every event: it grows while the agent
 * writes, then shows whether it finished, stopped or failed. Its stop button presses the card's button in
 * the emulator (POST /_fake/cards/{id}/callback), which DingTalk would push to the gateway as a card callback.
 *
 *   SandboxCards.item(ev)          the chat item for a card event's first sighting, or null
 *   SandboxCards.update(item, ev)  apply a later event to its item (and repaint it)
 *   SandboxCards.node(item, who)   the bubble for an item (who: the sender line)
 */
(function (global) {
  "use strict";

  const STOPPED_MARK = "⏹️ 已停止 (stopped)";
  const LABELS = {
    inputting: "writing…",
    processing: "thinking…",
    finished: "finished",
    stopped: "stopped",
    failed: "failed",
  };

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function stateOf(ev) {
    if (ev.status === "finished" && (ev.text || "").trim().endsWith(STOPPED_MARK)) return "stopped";
    return ev.status || "processing";
  }

  function item(ev) {
    const cid = (ev.conversation_ids || [])[0];
    if (!cid) return null; // not delivered (yet)
    return {
      type: "card", cid, id: ev.out_track_id, text: ev.text || "", cardState: stateOf(ev), robot: ev.robot, ts: ev.ts,
    };
  }

  function update(it, ev) {
    it.text = ev.text || "";
    it.cardState = stateOf(ev);
    paint(it);
  }

  async function stop(it) {
    it.stopButton.disabled = true;
    it.stopButton.textContent = "stopping…";
    await fetch(`/_fake/cards/${encodeURIComponent(it.id)}/callback`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ action_ids: ["stop"] }),
    });
  }

  function paint(it) {
    if (!it.bubbleEl) return;
    // The card's markdown dialect uses <br> for a line break; the renderer takes markdown only.
    const text = it.text.replace(/<br>/g, "\n\n");
    it.contentEl.replaceChildren(text ? DingMarkdown.render(text, {}) : el("span", "card-empty", "…"));
    it.bubbleEl.dataset.cardState = it.cardState;
    it.stateEl.textContent = LABELS[it.cardState] || it.cardState;
    it.stateEl.className = `card-state ${it.cardState}`;
    it.stopButton.hidden = it.cardState !== "inputting" && it.cardState !== "processing";
  }

  function node(it, who) {
    const body = el("div", "body");
    const bubble = el("div", "bubble markdown card");
    bubble.dataset.card = it.id;
    const content = el("div", "card-content");
    const foot = el("div", "card-foot");
    const stateEl = el("span", "card-state");
    const button = el("button", "card-stop", "■ Stop");
    button.type = "button";
    button.addEventListener("click", () => stop(it));
    foot.append(stateEl, button);
    bubble.append(content, foot);
    body.append(who, bubble);
    Object.assign(it, { bubbleEl: bubble, contentEl: content, stateEl, stopButton: button });
    paint(it);
    return body;
  }

  global.SandboxCards = { item, update, node };
})(window);
