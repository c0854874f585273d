"""DingTalk markdown normaliser, plain-text fallback and title preview.

Golden pairs live in ``tests/data/markdown/<name>.in.md`` -> ``<name>.out.md``; review a changed
``.out.md`` like code. To add a rule, add a pair.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecrab.dingtalk import markdown
from edgecrab.dingtalk.markdown import title_preview, to_dingtalk_markdown, to_plain_text

GOLDEN = Path(__file__).parent.parent / "data" / "markdown"
CASES = sorted(p.name.removesuffix(".in.md") for p in GOLDEN.glob("*.in.md"))


def read(path: Path) -> str:
    with path.open(encoding="utf-8", newline="") as f:
        return f.read()


def test_golden_fixtures_exist() -> None:
    assert len(CASES) >= 20
    for name in CASES:
        assert (GOLDEN / f"{name}.out.md").exists(), name


@pytest.mark.parametrize("name", CASES)
def test_golden(name: str) -> None:
    source = read(GOLDEN / f"{name}.in.md")
    assert to_dingtalk_markdown(source) == read(GOLDEN / f"{name}.out.md")


# ---------------------------------------------------------------------------------------------------------
# Plain text and titles.


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("plain words", "plain words"),
        (
            "**bold** and *italic* and __strong__ and _em_ and ~~gone~~",
            "bold and italic and strong and em and gone",
        ),
        ("**bold *nested* bold** ***both***", "bold nested bold both"),
        ("keep snake_case_names and 2 * 3 * 4", "keep snake_case_names and 2 * 3 * 4"),
        ("see [the docs](https://d.io/x) now", "see the docs (https://d.io/x) now"),
        ("[https://d.io](https://d.io) and <https://a.b/c>", "https://d.io and https://a.b/c"),
        ('![diagram](https://i.io/a.png "title")', "diagram (https://i.io/a.png)"),
        ("# Title ##\n#### Deep", "Title\nDeep"),
        ("use `a < b` and ``x ` y``", "use a < b and x ` y"),
        ("```python\n    x = 1  # **not bold**\n```", "x = 1  # **not bold**"),
        ("| a | b |\n|---|---|\n| 1 | 2 |", "| a | b |\n| 1 | 2 |"),
        ("\\*literal\\* &lt;tag&gt; &amp; AT&T ?a=1&para=2", "*literal* <tag> & AT&T ?a=1&para=2"),
        ("> quoted\n- item\n1. first", "> quoted\n- item\n1. first"),
        ("Title\n=====\ntext", "Title\ntext"),
    ],
)
def test_to_plain_text(source: str, expected: str) -> None:
    assert to_plain_text(source) == expected


@pytest.mark.parametrize(
    ("source", "limit", "expected"),
    [
        ("Short answer", 20, "Short answer"),
        ("\n\n  ## **Deploy**   the    service  \nmore", 20, "Deploy the service"),
        ("This line is definitely longer than twenty", 20, "This line is defini…"),
        ("- first item\n- second", 20, "first item"),
        ("> quoted *text*", 20, "quoted text"),
        ("```\n\n```\n\n[docs](https://d.io)", 30, "docs (https://d.io)"),
        ("| a | b |\n|---|---|", 20, "a b"),
        ("", 20, "Reply"),
        ("   \n\n```\n```\n", 20, "Reply"),
        ("中文标题很长很长很长很长很长很长很长很长", 10, "中文标题很长很长很…"),
        ("👩\u200d👩\u200d👧 family", 3, "…"),
        ("abcdef", 1, "…"),
    ],
)
def test_title_preview(source: str, limit: int, expected: str) -> None:
    assert title_preview(source, limit) == expected


def test_title_preview_rejects_a_zero_limit() -> None:
    with pytest.raises(ValueError):
        title_preview("x", 0)


# ---------------------------------------------------------------------------------------------------------
# Properties. The alphabet cannot spell "&lt;", "&gt;" or "&amp;" (no l, t, g, m, p), so unescaping our
# own escapes is exact.

chars = st.sampled_from(
    list("abcxyz019 .,!?") + ["<", ">", "&", ";", "#", "*", "_", "`", "|", "\\", "-", "~"]
)
inline = st.text(alphabet=chars, min_size=1, max_size=30)
prefixes = st.sampled_from(["", "", "", "- ", "1. ", "#### ", "> ", ">> ", "    ", "| ", "###### "])
md_lines = st.tuples(prefixes, inline).map("".join)


@st.composite
def fenced(draw: st.DrawFn) -> str:
    run = draw(st.sampled_from(["```", "~~~", "````"]))
    indent = draw(st.sampled_from(["", "  ", "    "]))
    body = draw(
        st.lists(st.tuples(st.sampled_from(["", "  ", "    ", "# "]), inline).map("".join), max_size=5)
    )
    closing = draw(st.sampled_from(["\n" + indent + run, ""]))
    return (
        "\n".join([indent + run + draw(st.sampled_from(["", "py"])), *(indent + b for b in body)]) + closing
    )


documents = st.lists(
    st.one_of(md_lines, md_lines, st.just(""), st.just("| a | b |\n|---|---|"), fenced())
).map("\n".join)

_OUR_ESCAPES = re.compile(r"&(lt|gt|amp);")


def unescape(text: str) -> str:
    return _OUR_ESCAPES.sub(lambda m: {"lt": "<", "gt": ">", "amp": "&"}[m.group(1)], text)


def significant(text: str) -> list[str]:
    """Characters that carry content. Ignored: whitespace; heading hashes and their ``\\#`` escape (depth
    is capped); ``>`` (quote breaks add bare ``>`` lines); fence runs (an open fence gets closed)."""
    return [c for c in text if not c.isspace() and c not in "#\\>`~"]


@settings(max_examples=300, deadline=None)
@given(documents)
def test_no_content_is_lost(source: str) -> None:
    out = to_dingtalk_markdown(source)
    assert significant(unescape(out)) == significant(source)
    assert [c for c in unescape(out) if c.isalnum()] == [c for c in source if c.isalnum()]


@settings(max_examples=300, deadline=None)
@given(documents)
def test_no_raw_html_angle_brackets_survive(source: str) -> None:
    out = to_dingtalk_markdown(source)
    for line in out.split("\n"):
        body = re.sub(r"^(?:[ \t]{0,3}>[ \t]?)+", "", line)  # blockquote markers are markdown, not HTML
        assert "<" not in body and ">" not in body, line


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.text(alphabet=st.sampled_from(list("abcdefgh XYZ0123,.!?'()中文😀")), min_size=1)).map(
        "\n\n".join
    )
)
def test_plain_paragraphs_are_unchanged(source: str) -> None:
    # One-line paragraphs of prose: nothing to normalise.
    assert to_dingtalk_markdown(source) == source


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(prefixes, st.text(alphabet=chars.filter(lambda c: c not in "`~"), min_size=1)).map(
                "".join
            ),
            st.just(""),
            st.just("| a | b |\n|---|---|"),
        )
    ).map("\n".join)
)
def test_idempotent_without_code(source: str) -> None:
    # Inside code, escaping is deliberately not idempotent ("&lt;" written in code must stay visible).
    once = to_dingtalk_markdown(source)
    assert to_dingtalk_markdown(once) == once


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_handled(source: str) -> None:
    out = to_dingtalk_markdown(source)
    assert isinstance(out, str)
    assert isinstance(to_plain_text(source), str)
    if source.strip():
        assert out.strip()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.integers(1, 40))
def test_title_preview_bounds(source: str, limit: int) -> None:
    title = title_preview(source, limit)
    assert 1 <= len(title) <= max(limit, len("Reply"))
    assert "\n" not in title and title == title.strip()
    if title != "Reply" and len(title) > limit:
        pytest.fail("only the fallback may exceed the limit")


def test_a_one_megabyte_reply_is_normalised() -> None:
    unit = read(GOLDEN / "realistic_reply.in.md")
    source = unit * (1_000_000 // len(unit))
    out = to_dingtalk_markdown(source)
    assert significant(unescape(out)) == significant(source)
    assert to_plain_text(source).count("import sys") == source.count("import sys")


_PLAIN_ALPHABET = "ab 1.:,()!?'\"&[]\\\t\n\r\u3000中🦀é"
"""Letters, digits, spaces and punctuation, none of the markup characters, so most texts drawn from it are
plain (a line starting with a digit is markup: a list item may)."""


_LINE = st.sampled_from(["1. one", "2) two", " 3. x", "12", "a b", "", " ", "\t", "(x)", "&amp;", "[a](b)"])
_LINES = st.lists(_LINE | st.text(alphabet=_PLAIN_ALPHABET, max_size=12), max_size=6).map("\n".join)


@settings(max_examples=400, deadline=None)
@given(_LINES | st.text(alphabet=_PLAIN_ALPHABET, max_size=60) | st.text(max_size=40))
def test_plain_text_takes_a_short_way_with_the_same_result(text: str) -> None:
    assert markdown.to_dingtalk_markdown(text) == markdown._markdown(text)


_PLAIN_CHARS = "ab 1.\t\n\r()[];:!?,🦀é\u00a0\u2028"
_MARKUP_CHARS = _PLAIN_CHARS + "#>*+=_|`~<-\\&"


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet=st.sampled_from(list(_PLAIN_CHARS)), max_size=40)
       | st.text(alphabet=st.sampled_from(list(_MARKUP_CHARS)), max_size=40))
def test_title_preview_of_text_without_markup_is_the_line_classes_one(text: str) -> None:
    """Text without markup takes a way without the line classes: the title is the same."""

    def by_classes(text: str) -> str:
        for line in markdown._plain_lines(text):
            words = markdown._TITLE_NOISE.sub("", line).replace("|", " ").split()
            if words:
                return " ".join(words)
        return "Reply"

    expected = by_classes(text)
    got = title_preview(text, limit=1000)
    assert got == expected
