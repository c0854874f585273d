"""The text of a file, for inlining into the agent's turn: text-like files as UTF-8, PDFs through pypdf.

Both read at most ``limit`` bytes of text and say whether there was more. Run in a worker thread.
"""

from __future__ import annotations

TEXT_LIKE = frozenset(
    {"application/json", "application/xml", "application/x-yaml", "application/javascript", "text/yaml"}
)
"""MIME types outside ``text/`` that are text."""
MAX_PDF_PAGES = 200


def read_text(path: str, limit: int) -> tuple[str, bool]:
    """The first ``limit`` bytes of a text file (a character cut at the end dropped); True when cut."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    cut = len(data) > limit
    return data[:limit].decode("utf-8", errors="ignore" if cut else "replace"), cut


def pdf_text(path: str, limit: int) -> tuple[str, bool]:
    """The text of a PDF's pages, up to ``limit`` bytes (UTF-8) and :data:`MAX_PDF_PAGES` pages."""
    from pypdf import PdfReader  # imported when a PDF arrives: pypdf takes a while to import

    reader = PdfReader(path)
    texts: list[str] = []
    size = 0
    for number, page in enumerate(reader.pages):
        if number >= MAX_PDF_PAGES or size > limit:
            return _cut("\n\n".join(texts), limit), True
        text = page.extract_text() or ""
        texts.append(text)
        size += len(text.encode("utf-8"))
    whole = "\n\n".join(texts)
    return _cut(whole, limit), len(whole.encode("utf-8")) > limit


def _cut(text: str, limit: int) -> str:
    return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")
