/* DingTalk's markdown subset, rendered the way the DingTalk clients show it: headings, bold, italic, links,
 * images, ordered and unordered lists, quotes, rules, code blocks (preformatted) and tables.
 *
 * Safety: the output is built with DOM calls only (createElement, createTextNode, setAttribute); text never
 * goes through innerHTML, and links and images keep only http(s)/mailto/dingtalk URLs. HTML written in a
 * message therefore shows as text. Character references (&lt; &amp; &#39; ...) are decoded into text,
 * because DingTalk's renderer is HTML based and shows them as characters (the gateway escapes < and > that
 * way on purpose).
 *
 * Like DingTalk, a single newline inside a paragraph is not a line break.
 *
 *   DingMarkdown.render(text, {mentions: {staffId: "nick"}}) -> DocumentFragment   (msgtype markdown)
 *   DingMarkdown.renderText(text, {mentions})               -> DocumentFragment   (msgtype text)
 */
(function (global) {
  "use strict";

  const NAMED = { lt: "<", gt: ">", amp: "&", quot: '"', apos: "'", nbsp: "\u00a0" };
  const ENTITY = /&(#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z]+);/g;
  const FENCE = /^[ \t]*(`{3,}|~{3,})(.*)$/;
  const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*#*[ \t]*$/;
  const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
  const QUOTE = /^ {0,3}>[ \t]?/;
  const ITEM = /^([ \t]*)([-*+]|\d{1,9}[.)])(?:[ \t]+(.*)|[ \t]*$)/;
  const TABLE_SEP = /^[ \t]*\|?[ \t]*:?-+:?[ \t]*(\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$/;
  const LINK = /^\[([^\]\n]+)\]\(([^)\s]+)(?:[ \t]+"[^"\n]*")?\)/;
  const IMAGE = /^!\[([^\]\n]*)\]\(([^)\s]+)(?:[ \t]+"[^"\n]*")?\)/;
  const AUTOLINK = /^https?:\/\/[^\s<>"'）。，]+/;
  const PUNCT = /[!-/:-@[-`{-~]/;

  function decode(text) {
    return text.replace(ENTITY, (whole, name) => {
      if (name[0] === "#") {
        const code = name[1] === "x" || name[1] === "X" ? parseInt(name.slice(2), 16) : parseInt(name.slice(1), 10);
        return code > 0 && code <= 0x10ffff && !(code >= 0xd800 && code <= 0xdfff) ? String.fromCodePoint(code) : whole;
      }
      return Object.prototype.hasOwnProperty.call(NAMED, name) ? NAMED[name] : whole;
    });
  }

  function safeUrl(url, image) {
    const u = decode(url).trim();
    if (/^https?:\/\//i.test(u)) return u;
    // DingTalk shows an uploaded picture by its mediaId; the emulator serves its uploads under /_fake/media/.
    if (image && /^@[A-Za-z0-9_\-=+/]+$/.test(u)) return "/_fake/media/" + encodeURIComponent(u);
    if (!image && /^(mailto:|dingtalk:\/\/)/i.test(u)) return u;
    return null;
  }

  function node(tag, cls) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    return e;
  }

  // --- inline ------------------------------------------------------------------------------------------
  function inline(text, ctx, out) {
    out = out || document.createDocumentFragment();
    let plain = "";
    const flush = () => {
      if (plain) out.appendChild(document.createTextNode(decode(plain)));
      plain = "";
    };
    let i = 0;
    while (i < text.length) {
      const ch = text[i];
      const rest = text.slice(i);
      const prev = i > 0 ? text[i - 1] : " ";
      if (ch === "\\" && i + 1 < text.length && PUNCT.test(text[i + 1])) {
        plain += text[i + 1];
        i += 2;
        continue;
      }
      if (ch === "`") {
        const run = /^`+/.exec(rest)[0];
        const end = text.indexOf(run, i + run.length);
        if (end > i) {
          flush();
          let code = text.slice(i + run.length, end);
          if (code.length > 2 && code[0] === " " && code[code.length - 1] === " ") code = code.slice(1, -1);
          const c = node("code");
          c.textContent = decode(code);
          out.appendChild(c);
          i = end + run.length;
          continue;
        }
        plain += run;
        i += run.length;
        continue;
      }
      let m = ch === "!" ? IMAGE.exec(rest) : null;
      if (m) {
        flush();
        const src = safeUrl(m[2], true);
        if (src) {
          const img = node("img", "md-img");
          img.setAttribute("src", src);
          img.setAttribute("alt", decode(m[1]));
          img.setAttribute("referrerpolicy", "no-referrer");
          img.setAttribute("loading", "lazy");
          out.appendChild(img);
        } else {
          out.appendChild(document.createTextNode(decode(m[0])));
        }
        i += m[0].length;
        continue;
      }
      m = ch === "[" && !ctx.inLink ? LINK.exec(rest) : null;
      if (m) {
        flush();
        const href = safeUrl(m[2], false);
        const a = node(href ? "a" : "span", href ? "" : "md-badlink");
        if (href) {
          a.setAttribute("href", href);
          a.setAttribute("target", "_blank");
          a.setAttribute("rel", "noopener noreferrer");
        }
        inline(m[1], Object.assign({}, ctx, { inLink: true }), a);
        out.appendChild(a);
        i += m[0].length;
        continue;
      }
      if ((ch === "*" || ch === "_") && text[i + 1] === ch) {
        const end = closing(text, i + 2, ch + ch);
        if (end > 0) {
          flush();
          out.appendChild(inline(text.slice(i + 2, end), ctx, node("strong")));
          i = end + 2;
          continue;
        }
      } else if ((ch === "*" || (ch === "_" && !/\w/.test(prev))) && text[i + 1] !== ch) {
        const end = closing(text, i + 1, ch);
        if (end > 0 && (ch === "*" || !/\w/.test(text[end + 1] || " "))) {
          flush();
          out.appendChild(inline(text.slice(i + 1, end), ctx, node("em")));
          i = end + 1;
          continue;
        }
      }
      m = ch === "h" && !ctx.inLink && !/\w/.test(prev) ? AUTOLINK.exec(rest) : null;
      if (m) {
        flush();
        const a = autolink(m[0]);
        out.appendChild(a);
        i += a.textContent.length;
        continue;
      }
      if (ch === "@" && ctx.mentions) {
        const id = mentionAt(text, i + 1, ctx.mentions);
        if (id) {
          flush();
          const span = node("span", "mention");
          span.textContent = "@" + ctx.mentions[id];
          span.title = id;
          out.appendChild(span);
          i += 1 + id.length;
          continue;
        }
      }
      plain += ch;
      i += 1;
    }
    flush();
    return out;
  }

  // A bare URL as a link; trailing punctuation (a sentence's full stop, a closing parenthesis) stays text.
  function autolink(raw) {
    const url = raw.replace(/[.,;:!?)\]]+$/, "");
    const a = node("a");
    a.setAttribute("href", url);
    a.setAttribute("target", "_blank");
    a.setAttribute("rel", "noopener noreferrer");
    a.textContent = url;
    return a;
  }

  // The end of an emphasis span opened before `from`: same delimiter, not after a space, content non-empty.
  function closing(text, from, delim) {
    if (from >= text.length || /\s/.test(text[from])) return -1;
    let j = text.indexOf(delim, from + 1);
    while (j > 0) {
      if (!/\s/.test(text[j - 1]) && text[j - 1] !== "\\" && (delim.length === 2 || text[j + 1] !== delim)) return j;
      j = text.indexOf(delim, j + 1);
    }
    return -1;
  }

  function mentionAt(text, start, mentions) {
    let best = "";
    for (const id of Object.keys(mentions)) {
      if (id.length > best.length && text.startsWith(id, start)) {
        const after = text[start + id.length];
        if (after === undefined || !/[A-Za-z0-9_]/.test(after)) best = id;
      }
    }
    return best;
  }

  // --- blocks ------------------------------------------------------------------------------------------
  function isBlockStart(line, next) {
    return (
      FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line) ||
      (line.includes("|") && next !== undefined && TABLE_SEP.test(next) && next.includes("-"))
    );
  }

  function cells(row) {
    let r = row.trim();
    if (r.startsWith("|")) r = r.slice(1);
    if (r.endsWith("|") && !r.endsWith("\\|")) r = r.slice(0, -1);
    return r.split(/(?<!\\)\|/).map((c) => c.trim().replace(/\\\|/g, "|"));
  }

  function table(lines, ctx) {
    const aligns = cells(lines[1]).map((c) =>
      c.startsWith(":") && c.endsWith(":") ? "center" : c.endsWith(":") ? "right" : c.startsWith(":") ? "left" : "");
    const wrap = node("div", "md-table");
    const t = node("table");
    const row = (text, tag, parent) => {
      const tr = node("tr");
      cells(text).forEach((c, k) => {
        const cell = node(tag);
        if (aligns[k]) cell.style.textAlign = aligns[k];
        inline(c, ctx, cell);
        tr.appendChild(cell);
      });
      parent.appendChild(tr);
    };
    const head = node("thead");
    row(lines[0], "th", head);
    t.appendChild(head);
    const body = node("tbody");
    lines.slice(2).forEach((l) => row(l, "td", body));
    t.appendChild(body);
    wrap.appendChild(t);
    return wrap;
  }

  function indentOf(s) {
    return s.replace(/\t/g, "    ").length;
  }

  // Items indented by two or more columns past the current level open a nested list in the item above.
  function list(lines, ctx) {
    const root = document.createDocumentFragment();
    const stack = []; // open lists, outermost first: {indent, el, ordered, lastLi}
    const open = (ordered, first, parent) => {
      const el = node(ordered ? "ol" : "ul");
      const start = parseInt(first, 10);
      if (ordered && start !== 1) el.setAttribute("start", String(start));
      parent.appendChild(el);
      return el;
    };
    for (const line of lines) {
      const m = ITEM.exec(line);
      let top = stack[stack.length - 1];
      if (!m) { // a continuation line belongs to the item above
        if (top && top.lastLi) {
          top.lastLi.appendChild(document.createTextNode(" "));
          inline(line.trim(), ctx, top.lastLi);
        }
        continue;
      }
      const indent = indentOf(m[1]);
      const ordered = /\d/.test(m[2]);
      while (stack.length && indent < stack[stack.length - 1].indent) stack.pop();
      top = stack[stack.length - 1];
      if (!top) {
        top = { indent, el: open(ordered, m[2], root), ordered, lastLi: null };
        stack.push(top);
      } else if (indent >= top.indent + 2 && top.lastLi) {
        top = { indent, el: open(ordered, m[2], top.lastLi), ordered, lastLi: null };
        stack.push(top);
      } else if (top.ordered !== ordered) {
        const el = open(ordered, m[2], top.el.parentNode || root);
        stack[stack.length - 1] = top = { indent: top.indent, el, ordered, lastLi: null };
      }
      const li = node("li");
      inline(m[3] || "", ctx, li);
      top.el.appendChild(li);
      top.lastLi = li;
    }
    return root;
  }

  function blocks(lines, ctx) {
    const out = document.createDocumentFragment();
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      if (!line.trim()) {
        i += 1;
        continue;
      }
      let m = FENCE.exec(line);
      if (m) {
        const marker = m[1];
        const code = [];
        i += 1;
        while (i < lines.length && !(lines[i].trim().startsWith(marker[0].repeat(marker.length)) &&
               /^[`~]+$/.test(lines[i].trim()))) {
          code.push(lines[i].replace(/^\\#/, "#")); // the gateway escapes a leading # in code
          i += 1;
        }
        i += 1;
        const pre = node("pre");
        const c = node("code");
        const lang = m[2].trim().split(/\s+/)[0];
        if (lang) pre.setAttribute("data-lang", lang);
        c.textContent = decode(code.join("\n"));
        pre.appendChild(c);
        out.appendChild(pre);
        continue;
      }
      m = HEADING.exec(line);
      if (m) {
        out.appendChild(inline(m[2] || "", ctx, node("h" + m[1].length)));
        i += 1;
        continue;
      }
      if (RULE.test(line)) {
        out.appendChild(node("hr"));
        i += 1;
        continue;
      }
      if (QUOTE.test(line)) {
        const inner = [];
        while (i < lines.length && QUOTE.test(lines[i])) {
          inner.push(lines[i].replace(QUOTE, ""));
          i += 1;
        }
        const q = node("blockquote");
        q.appendChild(blocks(inner, ctx));
        out.appendChild(q);
        continue;
      }
      if (line.includes("|") && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1]) && lines[i + 1].includes("-")) {
        const rows = [line, lines[i + 1]];
        i += 2;
        while (i < lines.length && lines[i].includes("|") && lines[i].trim()) {
          rows.push(lines[i]);
          i += 1;
        }
        out.appendChild(table(rows, ctx));
        continue;
      }
      if (ITEM.test(line)) {
        const items = [];
        while (i < lines.length && lines[i].trim() && (ITEM.test(lines[i]) || !isBlockStart(lines[i], lines[i + 1]))) {
          items.push(lines[i]);
          i += 1;
        }
        out.appendChild(list(items, ctx));
        continue;
      }
      const para = [];
      while (i < lines.length && lines[i].trim() && (para.length === 0 || !isBlockStart(lines[i], lines[i + 1]))) {
        para.push(lines[i].trim());
        i += 1;
      }
      out.appendChild(inline(para.join(" "), ctx, node("p")));
    }
    return out;
  }

  function render(text, options) {
    const ctx = { mentions: (options && options.mentions) || null, inLink: false };
    return blocks(String(text).replace(/\r\n?/g, "\n").split("\n"), ctx);
  }

  // msgtype text: no markdown, newlines kept; URLs and real @mentions are still highlighted, as DingTalk does.
  function renderText(text, options) {
    const out = document.createDocumentFragment();
    const mentions = (options && options.mentions) || null;
    const lines = String(text).replace(/\r\n?/g, "\n").split("\n");
    lines.forEach((line, k) => {
      if (k) out.appendChild(node("br"));
      let plain = "";
      const flush = () => {
        if (plain) out.appendChild(document.createTextNode(plain));
        plain = "";
      };
      for (let i = 0; i < line.length;) {
        const rest = line.slice(i);
        const m = line[i] === "h" && !/\w/.test(line[i - 1] || " ") ? AUTOLINK.exec(rest) : null;
        const id = line[i] === "@" && mentions ? mentionAt(line, i + 1, mentions) : "";
        if (m) {
          flush();
          out.appendChild(autolink(m[0]));
          i += out.lastChild.textContent.length;
        } else if (id) {
          flush();
          const span = node("span", "mention");
          span.textContent = "@" + mentions[id];
          span.title = id;
          out.appendChild(span);
          i += 1 + id.length;
        } else {
          plain += line[i];
          i += 1;
        }
      }
      flush();
    });
    return out;
  }

  global.DingMarkdown = { render, renderText, decode };
})(window);
