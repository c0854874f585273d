"""Chunking replies: properties over generated markdown, plus the examples the issue names."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgecrab.replies.chunking import Chunk, join_chunks, json_bytes, split_text

# ---------------------------------------------------------------------------------------------------------
# An independent, deliberately naive fence reader: 0 outside, 1 on a fence line, 2 inside code.


_FENCE_LINE = re.compile(r"[ \t]*(`{3,}|~{3,})(.*)")


def fence_mask(text: str) -> tuple[list[int], bool]:
    """Per-character category, and whether a fence is still open at the end."""
    mask: list[int] = []
    open_run = ""
    for line in text.split("\n"):
        m = _FENCE_LINE.fullmatch(line)
        if not open_run:
            if m and not (m.group(1)[0] == "`" and "`" in m.group(2)):
                open_run, kind = m.group(1), 1
            else:
                kind = 0
        elif (
            m and m.group(1)[0] == open_run[0] and len(m.group(1)) >= len(open_run) and not m.group(2).strip()
        ):
            open_run, kind = "", 1
        else:
            kind = 2
        mask.extend([kind] * (len(line) + 1))
    return mask[: len(text)], bool(open_run)


def check_chunks(text: str, chunks: list[Chunk], max_chars: int, max_bytes: int, overhead: int) -> None:
    """Everything split_text promises, for any input."""
    assert join_chunks(chunks) == text
    if not text:
        assert chunks == []
        return
    n = len(chunks)
    original_mask, _ = fence_mask(text)
    offset = 0
    for i, chunk in enumerate(chunks, 1):
        assert (chunk.index, chunk.total) == (i, n)
        assert chunk.body, "no chunk may be empty"
        assert len(chunk.text) <= max_chars
        assert json_bytes(chunk.text) + overhead <= max_bytes
        assert chunk.text == chunk.marker + chunk.prefix + chunk.body + chunk.suffix
        # Rendering is preserved: code stays code, prose stays prose, in every chunk.
        mask, still_open = fence_mask(chunk.text)
        head = len(chunk.marker) + len(chunk.prefix)
        # Newlines are compared as neutral: a chunk may start with the newline that ended a fence line.
        here = [k for k, c in zip(mask[head : head + len(chunk.body)], chunk.body, strict=True) if c != "\n"]
        there = [
            k
            for k, c in zip(original_mask[offset : offset + len(chunk.body)], chunk.body, strict=True)
            if c != "\n"
        ]
        assert here == there
        if i < n:
            assert not still_open, f"chunk {i} leaves a fence open"
        offset += len(chunk.body)


# ---------------------------------------------------------------------------------------------------------
# Markdown-ish text generators.

words = st.text(alphabet="abcdefghij", min_size=1, max_size=12)
long_words = st.text(alphabet="xyz", min_size=30, max_size=300)
cjk = st.text(alphabet="中文字符测试。，！？", min_size=1, max_size=40)
graphemes = st.sampled_from(
    ["😀", "👍🏽", "👩\u200d👩\u200d👧", "🇨🇳🇯🇵", "e\u0301", "1\ufe0f\u20e3", "\ud83d\ude00"]
)
escapes = st.sampled_from(['"', "\\", "\t", "\x01", "\r\n", "`x`", "</b>"])
atoms = st.one_of(words, words, words, long_words, cjk, graphemes, escapes, st.sampled_from([".", "!", "?"]))
lines = st.lists(atoms, min_size=1, max_size=12).map(" ".join)
paragraphs = st.lists(lines, min_size=1, max_size=5).map("\n".join)


@st.composite
def fences(draw: st.DrawFn) -> str:
    run = draw(st.sampled_from(["```", "````", "~~~"]))
    lang = draw(st.sampled_from(["", "python", "js", "c++", " sh"]))
    indent = draw(st.sampled_from(["", "", "  "]))
    body = draw(st.lists(st.one_of(lines, st.just("# comment"), st.just("```")), max_size=8))
    close = draw(st.sampled_from([True, True, True, False]))
    block = "\n".join([indent + run + lang, *body])
    return block + ("\n" + indent + run if close else "")


@st.composite
def tables(draw: st.DrawFn) -> str:
    cols = draw(st.integers(1, 3))
    rows = draw(st.lists(st.lists(words, min_size=cols, max_size=cols), min_size=0, max_size=8))
    header = "| " + " | ".join(f"h{i}" for i in range(cols)) + " |"
    lines_ = [header, "|" + "---|" * cols] + ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines_)


blocks = st.one_of(paragraphs, paragraphs, fences(), tables(), st.just("- item one\n- item two"))
documents = st.lists(
    st.tuples(blocks, st.sampled_from(["\n\n", "\n", "\n\n\n", "\n \n"])), min_size=0, max_size=10
).map(lambda parts: "".join(b + sep for b, sep in parts))

limits = st.tuples(st.integers(50, 400), st.integers(90, 1200), st.integers(0, 30))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=documents, limit=limits, markers=st.booleans())
@example(text="a" * 200 + "```python\n" + "x = 1\n" * 40 + "```\n", limit=(50, 400, 0), markers=True)
def test_split_properties(text: str, limit: tuple[int, int, int], markers: bool) -> None:
    max_chars, max_bytes, overhead = limit
    chunks = split_text(
        text, max_chars=max_chars, max_bytes=max_bytes, markers=markers, overhead_bytes=overhead
    )
    check_chunks(text, chunks, max_chars, max_bytes, overhead)
    if markers and len(chunks) > 1:
        for chunk in chunks:
            assert re.fullmatch(rf"\({chunk.index}/{len(chunks)}\)( |\n\n)", chunk.marker)
    else:
        assert all(chunk.marker == "" for chunk in chunks)


@settings(max_examples=200, deadline=None)
@given(text=st.text(min_size=1, max_size=600), limit=limits, markers=st.booleans())
def test_split_any_unicode_is_lossless(text: str, limit: tuple[int, int, int], markers: bool) -> None:
    """Arbitrary code points (controls, surrogates, combining marks): lossless and within limits."""
    max_chars, max_bytes, overhead = limit
    chunks = split_text(
        text, max_chars=max_chars, max_bytes=max_bytes, markers=markers, overhead_bytes=overhead
    )
    assert join_chunks(chunks) == text
    for chunk in chunks:
        assert chunk.body and len(chunk.text) <= max_chars
        assert json_bytes(chunk.text) + overhead <= max_bytes


def test_json_bytes_matches_json_dumps() -> None:
    sample = 'a"b\\c\nd\te\x01中😀'
    assert json_bytes(sample) == len(json.dumps(sample, ensure_ascii=False).encode())


# ---------------------------------------------------------------------------------------------------------
# Examples.


def test_empty_text_gives_no_chunks() -> None:
    assert split_text("") == []
    assert join_chunks([]) == ""


def test_short_text_is_one_unchanged_chunk_even_with_markers() -> None:
    assert split_text("hello **world**", markers=True) == [Chunk("hello **world**", 1, 1)]


def test_exactly_max_chars_is_one_chunk_and_one_more_is_two() -> None:
    assert len(split_text("a" * 6000)) == 1
    chunks = split_text("a" * 6001)
    assert [len(c.text) for c in chunks] == [6000, 1]


def test_cjk_hits_the_byte_cap_before_the_char_cap() -> None:
    text = "中文" * 5000  # 10 000 characters, 30 000 UTF-8 bytes
    chunks = split_text(text, max_chars=10000, max_bytes=20000, overhead_bytes=300)
    check_chunks(text, chunks, 10000, 20000, 300)
    assert len(chunks) == 2
    assert json_bytes(chunks[0].text) > 20000 - 300 - 3  # the first chunk is full, by bytes
    assert len(chunks[0].text) < 10000


def test_json_escapes_count_against_the_byte_cap() -> None:
    text = '"\\' * 3000  # 6000 characters, each escaped to 2 bytes
    chunks = split_text(text, max_chars=6000, max_bytes=6000)
    check_chunks(text, chunks, 6000, 6000, 0)
    assert len(chunks) == 3


def test_emoji_and_combining_sequences_are_never_split() -> None:
    clusters = ["👩\u200d👩\u200d👧", "👍🏽", "🇨🇳", "e\u0301\u0302", "1\ufe0f\u20e3"]
    text = "".join(clusters * 20)
    chunks = split_text(text, max_chars=11, max_bytes=1000)
    check_chunks(text, chunks, 11, 1000, 0)
    for chunk in chunks:
        rest = chunk.body
        while rest:
            match = next((c for c in clusters if rest.startswith(c)), None)
            assert match is not None, f"chunk starts inside a cluster: {chunk.body!r}"
            rest = rest[len(match) :]


def test_flags_pair_up_from_the_left() -> None:
    text = "🇨🇳🇯🇵🇺🇸" * 10
    for chunk in split_text(text, max_chars=5, max_bytes=1000):
        assert len(chunk.body) % 2 == 0


def test_long_code_block_is_closed_and_reopened_with_its_language() -> None:
    code = "\n".join(f"print({i})" for i in range(300))
    text = f"Here is the script:\n\n```python\n{code}\n```\n\nDone."
    chunks = split_text(text, max_chars=500, markers=True)
    check_chunks(text, chunks, 500, 20000, 0)
    assert len(chunks) > 3
    assert chunks[0].suffix == "```" and chunks[0].prefix == ""
    for chunk in chunks[1:-1]:
        assert chunk.prefix == "```python\n" and chunk.suffix == "```"
        assert chunk.marker == f"({chunk.index}/{len(chunks)})\n\n"
        assert chunk.text.startswith(chunk.marker + "```python\nprint(")
    assert chunks[-1].prefix == "```python\n" and chunks[-1].text.endswith("```\n\nDone.")


def test_longer_fence_run_and_tilde_fence_are_reopened_verbatim() -> None:
    text = "~~~~ js\n" + "let a = '```';\n" * 80 + "~~~~\n"
    chunks = split_text(text, max_chars=200)
    check_chunks(text, chunks, 200, 20000, 0)
    assert {c.prefix for c in chunks[1:]} == {"~~~~ js\n"}
    assert all(c.suffix == "~~~~" for c in chunks[:-1])


def test_split_before_a_closing_fence_keeps_the_real_closer() -> None:
    body = "x" * 60
    text = f"```\n{body}\n```\n" + "y " * 100
    chunks = split_text(text, max_chars=len("```\n") + len(body) + 1 + 3)
    assert chunks[0].text == f"```\n{body}\n```" and chunks[0].suffix == ""


def test_paragraph_boundary_preferred_when_past_half() -> None:
    first = "First paragraph line one.\nline two of it."
    text = first + "\n\n" + "Second paragraph. " * 5
    chunks = split_text(text, max_chars=80)
    assert chunks[0].text == first + "\n\n"


def test_far_line_break_beats_an_early_paragraph_break() -> None:
    text = "Intro.\n\n" + "a" * 60 + "\n" + "b" * 60
    chunks = split_text(text, max_chars=100)
    assert chunks[0].text == "Intro.\n\n" + "a" * 60 + "\n"


def test_sentence_then_word_boundaries() -> None:
    text = "This is one sentence. " + "another phrase with words " * 3
    assert split_text(text, max_chars=40)[0].text == "This is one sentence. "
    text = "wordy " * 20
    assert split_text(text, max_chars=40)[0].text == "wordy " * 6
    text = "中文句子一。中文句子二。中文句子三。"
    assert split_text(text, max_chars=14)[0].text == "中文句子一。中文句子二。"


def test_a_long_token_moves_whole_to_the_next_chunk_when_it_fits() -> None:
    url = "https://example.com/" + "p" * 38
    chunks = split_text("see " + url + " ok", max_chars=60)
    assert [c.text for c in chunks] == ["see ", url + " ", "ok"]


def test_table_header_is_repeated_after_a_split() -> None:
    header = "| name | value |\n|------|-------|\n"
    rows = "".join(f"| row{i} | {i} |\n" for i in range(40))
    text = "Table:\n\n" + header + rows
    chunks = split_text(text, max_chars=200)
    check_chunks(text, chunks, 200, 20000, 0)
    assert len(chunks) > 2
    assert all(c.prefix == header for c in chunks[1:])
    assert all(c.text.startswith(header + "| row") for c in chunks[1:])


def test_fence_lookalike_is_not_put_at_a_chunk_start() -> None:
    text = "word " * 10 + "```not-a-fence``` " + "tail " * 10
    for chunk in split_text(text, max_chars=60):
        assert not chunk.text.lstrip(" ").startswith("```")


def test_markers_are_numbered_and_budgeted() -> None:
    text = "word " * 3000
    chunks = split_text(text, max_chars=100, markers=True)
    check_chunks(text, chunks, 100, 20000, 0)
    assert len(chunks) > 100  # three-digit totals: the marker width changed while splitting
    assert chunks[0].text.startswith(f"(1/{len(chunks)}) word")
    assert chunks[-1].marker == f"({len(chunks)}/{len(chunks)}) "


def test_overhead_bytes_are_reserved() -> None:
    text = "a" * 1000
    chunks = split_text(text, max_chars=6000, max_bytes=602, overhead_bytes=100)
    assert [len(c.text) for c in chunks] == [500, 500]


def test_one_megabyte_reply() -> None:
    unit = (
        "Paragraph with words. And more!\n\n```py\nx = '中文😀'\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
    )
    text = (unit * (1_000_000 // len(unit) + 1))[:1_000_000]
    chunks = split_text(text, markers=True)
    assert join_chunks(chunks) == text
    assert 160 <= len(chunks) <= 200
    assert all(len(c.text) <= 6000 and json_bytes(c.text) <= 20000 for c in chunks)


def test_limits_too_small_raise() -> None:
    with pytest.raises(ValueError):
        split_text("abc", max_chars=0)
    with pytest.raises(ValueError):
        split_text("abc" * 10, max_bytes=2)
    with pytest.raises(ValueError):
        split_text("word " * 100, max_chars=8, markers=True)


def test_join_rejects_a_chunk_whose_text_was_edited() -> None:
    chunk = split_text("```py\n" + "x\n" * 100 + "```", max_chars=50)[0]
    tampered = Chunk(
        chunk.text.rstrip("`"), chunk.index, chunk.total, chunk.marker, chunk.prefix, chunk.suffix
    )
    with pytest.raises(ValueError):
        join_chunks([tampered])
