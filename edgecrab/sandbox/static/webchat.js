/* edgecrab sandbox web chat.
 *
 * Data flow: the emulator's event websocket (/_fake/events) carries every event of the fake DingTalk. `chat`
 * events (what a person typed here) and `outbound` events (what the bot sent) become chat bubbles; frame, ack
 * and redelivery events of our own messages become the status line under them; every event is a line in the
 * wire panel. /sandbox/history replays the chat after a reload; bus `seq` numbers keep anything from showing
 * twice. All text goes into the page through textContent or DingMarkdown (DOM nodes only), never innerHTML.
 */
(function () {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const RANK = { sending: 0, queued: 1, pushed: 2, redelivered: 3, acked: 4, rejected: 4, gaveup: 5, dropped: 5 };

  const state = {
    dir: null,
    me: null, // the person chatting (their dingtalk_id "key")
    active: null, // conversation id on screen
    convs: new Map(), // conversation id -> {items: [], unread: 0}
    seen: new Set(), // bus seq numbers already applied to the chat
    sent: new Map(), // stream message id -> user item
    cards: new Map(), // outTrackId -> card item (SandboxCards)
    atBot: true,
    ws: null,
  };

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }

  function clock(ms) {
    const d = new Date(ms || Date.now());
    return `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
  }

  function short(id) {
    return id ? String(id).slice(0, 8) : "–";
  }

  const PALETTE = ["#0089ff", "#00b386", "#7c5cff", "#f5a623", "#ff6b6b", "#14b8c8", "#e05dad"];
  function avatar(name, cls) {
    const a = el("div", "avatar" + (cls ? " " + cls : ""));
    const text = String(name || "?").replace(/\s*\(.*\)$/, "").trim();
    a.textContent = /^[\x00-\x7f]/.test(text) ? text.split(/\s+/).map((w) => w[0]).join("").slice(0, 2).toUpperCase()
      : text.slice(-2);
    let h = 0;
    for (const ch of text) h = (h * 31 + ch.codePointAt(0)) >>> 0;
    a.style.background = PALETTE[h % PALETTE.length];
    return a;
  }

  function botAvatar(small) {
    const a = el("div", "avatar bot" + (small ? " small" : ""), "🦀");
    return a;
  }

  // --- directory ---------------------------------------------------------------------------------------
  function user(key) {
    return state.dir.users.find((u) => u.key === key);
  }
  function me() {
    return user(state.me);
  }
  function groupOf(cid) {
    return state.dir.groups.find((g) => g.conversation_id === cid);
  }
  function dmOwner(cid) {
    return state.dir.users.find((u) => u.dm_conversation_id === cid);
  }
  function chatName(cid) {
    const g = groupOf(cid);
    if (g) return g.title;
    const owner = dmOwner(cid);
    return owner ? `DM ${owner.nick}` : short(cid);
  }

  function mentionMap() {
    const map = {};
    for (const u of state.dir.users) if (u.staff_id) map[u.staff_id] = u.nick;
    return map;
  }
  function conv(cid) {
    if (!state.convs.has(cid)) state.convs.set(cid, { items: [], unread: 0 });
    return state.convs.get(cid);
  }

  async function getJSON(url, options) {
    const response = await fetch(url, options);
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
    return body;
  }

  async function refreshDirectory() {
    const dir = await getJSON("/sandbox/directory");
    if (state.dir && state.dir.instance !== dir.instance) {
      location.reload(); // the emulator restarted: its event numbers start again
      return;
    }
    state.dir = dir;
    $("deliver-unmentioned").checked = !!dir.deliver_unmentioned;
    renderStatus();
  }

  let refreshTimer = null;
  function refreshSoon() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(() => refreshDirectory().then(renderSidebar).catch(() => {}), 150);
  }

  // --- rendering: sidebar, header ----------------------------------------------------------------------
  function renderStatus() {
    const box = $("gateway-status");
    const label = box.querySelector(".label");
    box.classList.remove("online", "down");
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) {
      box.classList.add("down");
      label.textContent = "emulator unreachable";
      box.title = "The page lost its event stream; retrying.";
    } else if (state.dir && state.dir.connections > 0) {
      box.classList.add("online");
      label.textContent = state.dir.connections === 1 ? "gateway connected" : `${state.dir.connections} gateway connections`;
      box.title = "A gateway holds a Stream connection to this emulator.";
    } else {
      label.textContent = "no gateway connected";
      box.title = `Messages queue until a gateway connects: DINGTALK_API_BASE=${state.dir ? state.dir.base_url : ""} ` +
        "DINGTALK_APP_KEY=… edgecrab gateway start";
    }
  }

  function renderSidebar() {
    const people = $("people");
    people.replaceChildren();
    for (const u of state.dir.users) {
      const b = el("button");
      b.type = "button";
      b.dataset.key = u.key;
      b.setAttribute("aria-current", String(u.key === state.me));
      b.title = u.outsider ? `from another organisation (${u.corp_id}); no staff id`
        : `staff id ${u.staff_id} · ${u.corp_id}`;
      b.append(avatar(u.nick, "small"), el("span", "name", u.nick.replace(/\s*\(external\)$/, "")));
      if (u.is_admin) b.append(el("span", "tag admin", "admin"));
      if (u.outsider) b.append(el("span", "tag external", "external"));
      b.addEventListener("click", () => choosePerson(u.key));
      const li = el("li");
      li.append(b);
      people.append(li);
    }
    const chats = $("chats");
    chats.replaceChildren();
    const entries = [{ cid: me().dm_conversation_id, title: state.dir.bot.name, dm: true }]
      .concat(state.dir.groups.map((g, k) => ({ cid: g.conversation_id, title: g.title, alt: k % 2 === 1 })));
    for (const entry of entries) {
      const c = conv(entry.cid);
      const b = el("button");
      b.type = "button";
      b.dataset.cid = entry.cid;
      b.setAttribute("aria-current", String(entry.cid === state.active));
      const meta = el("div", "meta");
      const title = el("div", "title", entry.title);
      if (entry.dm) title.append(" ", el("span", "tag robot", "Robot"));
      meta.append(title, el("div", "preview", preview(c, entry.dm)));
      b.append(entry.dm ? botAvatar() : avatar(entry.title, "group" + (entry.alt ? " alt" : "")), meta);
      if (c.unread && entry.cid !== state.active) b.append(el("span", "badge-unread", String(c.unread)));
      b.addEventListener("click", () => openChat(entry.cid));
      const li = el("li");
      li.append(b);
      chats.append(li);
    }
  }

  function preview(c, dm) {
    const last = c.items[c.items.length - 1];
    if (!last) return dm ? "Direct message with the robot" : "Group chat · mention the robot with @";
    if (last.type === "bot" || last.type === "card") return `${state.dir.bot.name}: ${last.title || last.text}`;
    return `${last.sender.nick}: ${last.text}`;
  }

  function renderHeader() {
    const group = groupOf(state.active);
    const slot = $("chat-avatar");
    const fresh = group ? avatar(group.title, "group") : botAvatar();
    fresh.id = "chat-avatar";
    slot.replaceWith(fresh);
    $("chat-title").textContent = group ? group.title : state.dir.bot.name;
    $("chat-subtitle").textContent = group
      ? `Group · the robot ${state.dir.bot.name} is a member · you are ${me().nick}`
      : `Robot · direct message with ${me().nick}`;
    $("group-tools").hidden = !group;
    $("input").placeholder = group ? `Message ${group.title} (Enter to send, Shift+Enter for a new line)`
      : `Message ${state.dir.bot.name} (Enter to send, Shift+Enter for a new line)`;
    renderAtToggle();
  }

  function renderAtToggle() {
    const b = $("at-toggle");
    b.replaceChildren(el("span", "switch"), `@${state.dir.bot.name}`);
    b.setAttribute("aria-pressed", String(state.atBot));
    b.title = state.atBot ? "The message @mentions the robot (click to send it without)" : "Click to @mention the robot";
    const hint = $("at-hint");
    hint.classList.toggle("warn", !state.atBot);
    if (state.atBot) {
      hint.textContent = "DingTalk pushes group messages that @ the robot to the gateway.";
    } else if ($("deliver-unmentioned").checked) {
      hint.textContent = "Without @: pushed anyway (relay mode); the gateway should ignore it.";
    } else {
      hint.textContent = "Without @: DingTalk never pushes it to the robot, so no reply comes.";
    }
  }

  // --- rendering: messages -----------------------------------------------------------------------------
  function renderMessages() {
    const box = $("messages");
    box.replaceChildren();
    const c = conv(state.active);
    c.unread = 0;
    if (!c.items.length) {
      const empty = el("div", "empty");
      const group = groupOf(state.active);
      empty.append(el("strong", "", group ? group.title : `Say hi to ${state.dir.bot.name}`), el("br"),
        group ? "Write with @ to ask the robot; without @ DingTalk keeps the message from it."
          : "Your message goes through the emulated DingTalk Stream to the gateway, and the reply comes back " +
            "through its sessionWebhook. Try /help.");
      box.append(empty);
    }
    for (const item of c.items) box.append(messageNode(item));
    box.scrollTop = box.scrollHeight;
  }

  function messageNode(item) {
    const row = el("div", "msg " + item.type);
    row.dataset.role = item.type;
    const body = el("div", "body");
    const who = el("div", "who");
    let bubble;
    if (item.type === "card") {
      row.classList.add("bot");
      row.append(botAvatar());
      who.append(el("span", "", state.dir.bot.name), el("span", "tag robot", "AI card"), el("time", "", clock(item.ts)));
      row.append(SandboxCards.node(item, who));
      return row;
    }
    if (item.type === "bot") {
      row.append(botAvatar());
      who.append(el("span", "", state.dir.bot.name), el("span", "tag robot", "Robot"), el("time", "", clock(item.ts)));
      const markdown = item.msgtype === "markdown" || item.msgtype === "sampleMarkdown";
      const media = mediaNode(item);
      bubble = el("div", "bubble " + (media ? "media" : markdown ? "markdown" : "text"));
      const render = markdown ? DingMarkdown.render : DingMarkdown.renderText;
      bubble.append(media || render(item.text, { mentions: mentionOnly(item.at_user_ids) }));
      body.append(who, bubble);
      if (item.title) body.append(el("div", "md-title", `title: ${item.title}`));
      body.lastChild.title = `sent via ${item.via}${item.msgtype ? " as " + item.msgtype : ""}`;
    } else {
      const mine = item.sender.key === state.me;
      if (mine) row.classList.add("mine");
      row.append(avatar(item.sender.nick));
      who.append(el("span", "", item.sender.nick.replace(/\s*\(external\)$/, "")), el("time", "", clock(item.ts)));
      bubble = el("div", "bubble text");
      if (item.at_bot) {
        bubble.append(el("span", "mention", `@${state.dir.bot.name}`), " ");
      }
      bubble.append(DingMarkdown.renderText(item.text, {}));
      const note = el("div", "note");
      item.noteEl = note;
      item.bubbleEl = bubble;
      body.append(who, bubble, note);
      paintStatus(item);
    }
    row.append(body);
    return row;
  }

  // A picture (sampleImageMsg) or a file (sampleFile) the bot sent through the OpenAPI: the emulator serves
  // uploaded media at /_fake/media/<mediaId>. Anything else: null (the text is rendered).
  function mediaNode(item) {
    let param = {};
    try {
      param = JSON.parse((item.body && item.body.msgParam) || "{}") || {};
    } catch (e) {
      return null;
    }
    const url = (id) => "/_fake/media/" + encodeURIComponent(id);
    if (item.msgtype === "sampleImageMsg" && typeof param.photoURL === "string") {
      const img = el("img", "md-img sent-image");
      const src = param.photoURL;
      img.setAttribute("src", src.startsWith("@") ? url(src) : /^https?:\/\//i.test(src) ? src : "");
      img.setAttribute("alt", "picture");
      img.setAttribute("referrerpolicy", "no-referrer");
      return img;
    }
    if (item.msgtype === "sampleFile" && typeof param.mediaId === "string") {
      const a = el("a", "sent-file", `📎 ${param.fileName || "file"}`);
      a.setAttribute("href", url(param.mediaId));
      a.setAttribute("download", param.fileName || "file");
      a.setAttribute("rel", "noopener");
      return a;
    }
    return null;
  }

  function mentionOnly(ids) {
    const all = mentionMap();
    const map = {};
    for (const id of ids || []) if (all[id]) map[id] = all[id];
    return map;
  }

  function paintStatus(item) {
    const note = item.noteEl;
    if (!note) return;
    note.className = "note";
    const s = item.status;
    const text = {
      sending: "sending…",
      queued: "queued: no gateway connected yet",
      pushed: "pushed to the gateway, waiting for its ack",
      redelivered: `no ack in time: DingTalk redelivered it (attempt ${item.attempt || 2})`,
      acked: `${item.at_bot === false ? "pushed anyway (relay mode)" : "delivered"} · acked ${item.ackCode}` +
        (item.latency != null ? ` in ${Math.max(1, Math.round(item.latency * 1000))} ms` : ""),
      rejected: `the gateway answered ${item.ackCode}${item.ackMessage ? ": " + item.ackMessage : ""}`,
      gaveup: "DingTalk gave up: never acked",
      dropped: "not delivered: DingTalk only pushes group messages that @ the robot",
    }[s] || s;
    note.textContent = text;
    if (s === "acked") note.classList.add("ok");
    if (s === "dropped" || s === "redelivered" || s === "queued") note.classList.add("warn");
    if (s === "rejected" || s === "gaveup") note.classList.add("bad");
    if (item.bubbleEl) item.bubbleEl.classList.toggle("dropped", s === "dropped");
    note.dataset.status = s;
  }

  function setStatus(item, status, extra) {
    if (RANK[status] < RANK[item.status]) return;
    Object.assign(item, extra || {}, { status });
    paintStatus(item);
  }

  // --- applying events ---------------------------------------------------------------------------------
  function addItem(cid, item) {
    const c = conv(cid);
    c.items.push(item);
    if (cid === state.active) {
      const box = $("messages");
      const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
      if (c.items.length === 1) box.replaceChildren();
      box.append(messageNode(item));
      if (atBottom || item.type === "user") box.scrollTop = box.scrollHeight;
    } else if (visibleTo(cid)) {
      c.unread += 1;
    }
    renderSidebarSoon();
  }

  function visibleTo(cid) {
    return !!groupOf(cid) || cid === me().dm_conversation_id;
  }

  let sidebarTimer = null;
  function renderSidebarSoon() {
    if (sidebarTimer) return;
    sidebarTimer = requestAnimationFrame(() => {
      sidebarTimer = null;
      renderSidebar();
    });
  }

  function applyChat(ev) {
    if (state.seen.has(ev.seq)) return;
    state.seen.add(ev.seq);
    if (ev.kind === "chat") {
      const item = { type: "user", sender: ev.sender, text: ev.text, at_bot: ev.at_bot, ts: ev.ts, status: "sending" };
      state.sent.set(ev.message_id, item);
      addItem(ev.conversation_id, item);
      return;
    }
    if (ev.kind === "card") {
      const known = state.cards.get(ev.out_track_id);
      if (known) SandboxCards.update(known, ev);
      else {
        const card = SandboxCards.item(ev);
        if (card) {
          state.cards.set(card.id, card);
          addItem(card.cid, card);
        }
      }
      return;
    }
    if (ev.kind === "outbound") {
      if (!groupOf(ev.conversation_id) && !dmOwner(ev.conversation_id)) refreshSoon();
      addItem(ev.conversation_id, {
        type: "bot", text: ev.text, title: ev.title, msgtype: ev.msgtype, via: ev.via, body: ev.body,
        at_user_ids: ev.at_user_ids || [], ts: ev.ts,
      });
      return;
    }
    const item = state.sent.get(ev.message_id);
    if (!item) return;
    if (ev.kind === "frame") {
      if (ev.direction === "dropped") setStatus(item, "dropped");
      else if (ev.direction === "queued") setStatus(item, "queued");
      else if (ev.direction === "out" && ev.ok) setStatus(item, "pushed");
    } else if (ev.kind === "ack") {
      if (ev.code === 200) setStatus(item, "acked", { ackCode: ev.code, latency: ev.latency_s });
      else setStatus(item, "rejected", { ackCode: ev.code, ackMessage: ev.message });
    } else if (ev.kind === "redelivery" && !ev.duplicate) {
      if (ev.gave_up) setStatus(item, "gaveup");
      else setStatus(item, "redelivered", { attempt: ev.attempt });
    }
  }

  // --- event stream ------------------------------------------------------------------------------------
  function connectEvents(onOpen) {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}/_fake/events?replay=1`);
    state.ws = ws;
    let buffered = [];
    let live = false;
    ws.addEventListener("open", () => {
      renderStatus();
      onOpen().then(() => {
        live = true;
        buffered.forEach(handle);
        buffered = null;
      });
    });
    ws.addEventListener("message", (msg) => {
      let ev;
      try {
        ev = JSON.parse(msg.data);
      } catch (err) {
        return;
      }
      if (live) handle(ev);
      else buffered.push(ev);
    });
    ws.addEventListener("close", () => {
      renderStatus();
      setTimeout(() => connectEvents(() => refreshDirectory().then(SandboxWire.clear)), 1000);
    });
  }

  function handle(ev) {
    SandboxWire.add(ev);
    if (ev.kind === "connection") refreshSoon();
    applyChat(ev);
  }

  // --- actions -----------------------------------------------------------------------------------------
  function choosePerson(key) {
    state.me = key;
    try { localStorage.setItem("edgecrab.sandbox.me", key); } catch (err) { /* private mode */ }
    if (!groupOf(state.active)) state.active = me().dm_conversation_id;
    openChat(state.active);
  }

  function openChat(cid) {
    state.active = cid;
    renderSidebar();
    renderHeader();
    renderMessages();
    $("input").focus();
  }

  async function send(event) {
    event.preventDefault();
    const input = $("input");
    const text = input.value;
    if (!text.trim()) return;
    const group = groupOf(state.active);
    const error = $("composer-error");
    error.hidden = true;
    $("send").disabled = true;
    try {
      await getJSON("/sandbox/send", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({
          user: state.me, text, conversation_id: group ? group.conversation_id : null, at_bot: group ? state.atBot : true,
        }),
      });
      input.value = "";
    } catch (err) {
      error.textContent = `Not sent: ${err.message}`;
      error.hidden = false;
    } finally {
      $("send").disabled = false;
      input.focus();
    }
  }

  // A picture, file or voice note: the bytes go to /sandbox/upload, which pushes a DingTalk media message
  // whose download code the emulator serves (messageFiles/download), as DingTalk does.
  async function upload(file, kind) {
    const group = groupOf(state.active);
    const query = new URLSearchParams({
      kind, name: file.name || kind, user: state.me, at_bot: String(group ? state.atBot : true),
    });
    if (group) query.set("conversation_id", group.conversation_id);
    if (kind === "audio") query.set("recognition", $("input").value);
    const error = $("composer-error");
    error.hidden = true;
    try {
      await getJSON(`/sandbox/upload?${query}`, {
        method: "POST", headers: { "Content-Type": "application/octet-stream" }, body: file,
      });
      if (kind === "audio") $("input").value = "";
    } catch (err) {
      error.textContent = `Not sent: ${err.message}`;
      error.hidden = false;
    }
  }

  function kindOf(file) {
    return file.type && file.type.startsWith("image/") ? "picture" : "file";
  }

  async function uploadAll(files, kind) {
    for (const file of Array.from(files)) await upload(file, kind || kindOf(file));
  }

  function wireUploads() {
    $("attach").addEventListener("click", () => $("attach-file").click());
    $("voice").addEventListener("click", () => $("voice-file").click());
    $("attach-file").addEventListener("change", async (e) => { await uploadAll(e.target.files); e.target.value = ""; });
    $("voice-file").addEventListener("change", async (e) => { await uploadAll(e.target.files, "audio"); e.target.value = ""; });
    const chat = document.querySelector(".chat");
    chat.addEventListener("dragover", (e) => { e.preventDefault(); chat.classList.add("dropping"); });
    chat.addEventListener("dragleave", () => chat.classList.remove("dropping"));
    chat.addEventListener("drop", async (e) => {
      e.preventDefault();
      chat.classList.remove("dropping");
      if (e.dataTransfer && e.dataTransfer.files.length) await uploadAll(e.dataTransfer.files);
    });
  }

  async function setDeliverUnmentioned() {
    const box = $("deliver-unmentioned");
    try {
      await getJSON("/_fake/settings", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ deliver_unmentioned: box.checked }),
      });
    } catch (err) {
      box.checked = !box.checked;
    }
    renderAtToggle();
  }

  function wireUp() {
    $("composer").addEventListener("submit", send);
    $("input").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        $("composer").requestSubmit();
      }
    });
    $("at-toggle").addEventListener("click", () => {
      state.atBot = !state.atBot;
      renderAtToggle();
    });
    $("deliver-unmentioned").addEventListener("change", setDeliverUnmentioned);
    wireUploads();
    SandboxWire.setup(chatName);
  }

  async function start() {
    wireUp();
    await refreshDirectory();
    let saved = null;
    try { saved = localStorage.getItem("edgecrab.sandbox.me"); } catch (err) { /* private mode */ }
    state.me = saved && user(saved) ? saved : state.dir.users[0].key;
    state.active = me().dm_conversation_id;
    openChat(state.active);
    connectEvents(async () => {
      const history = await getJSON("/sandbox/history");
      history.events.forEach(applyChat);
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    start().catch((err) => {
      const box = $("messages");
      box.replaceChildren(el("div", "empty", `The emulator did not answer: ${err.message}`));
    });
  });
})();
