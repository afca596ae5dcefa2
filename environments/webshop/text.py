"""Text normalisation shared by search, reward matching and click matching.

One place, so that a goal attribute, an option value the agent clicks and the words the
search engine indexes are all compared in the same normal form.
"""

from __future__ import annotations

import re

from bm25s.stopwords import STOPWORDS_EN

_NON_ALNUM = re.compile(r"[^a-z0-9]+")

SEARCH_STOPWORDS: frozenset[str] = frozenset(STOPWORDS_EN)
"""Lucene's English stop set (33 words), the analyzer WebShop's own search engine uses."""

TITLE_STOPWORDS: frozenset[str] = SEARCH_STOPWORDS | frozenset(
    {
        # Packaging and measure words say nothing about what kind of product a title names.
        "pack", "packs", "count", "set", "size", "sizes", "piece", "pieces", "pcs", "inch",
        "inches", "ounce", "ounces", "pound", "pounds", "new", "from", "your", "you", "our",
    }
)  # fmt: skip


def normalize(text: str) -> str:
    """Lower case, every run of non-alphanumerics turned into one space, trimmed.

    "6.76 Fl Oz (Pack of 1)" -> "6 76 fl oz pack of 1"; "X-Large" -> "x large".
    """
    return _NON_ALNUM.sub(" ", text.lower()).strip()


def search_tokens(text: str) -> list[str]:
    """Query and document terms: normalised words minus Lucene's stop words, first-seen order,
    no repeats (a repeated query word must not count twice)."""
    out: list[str] = []
    seen: set[str] = set()
    for word in normalize(text).split():
        if word not in SEARCH_STOPWORDS and word not in seen:
            seen.add(word)
            out.append(word)
    return out


def document_tokens(text: str) -> list[str]:
    """Document terms keep repeats: term frequency is part of BM25."""
    return [w for w in normalize(text).split() if w not in SEARCH_STOPWORDS]


def title_words(text: str) -> frozenset[str]:
    """The words of a product title that name what it is: alphabetic, at least 3 letters,
    not a stop or measure word. A stand-in for the nouns WebShop picks with a POS tagger."""
    return frozenset(
        w for w in normalize(text).split() if w.isalpha() and len(w) >= 3 and w not in TITLE_STOPWORDS
    )


def contains_phrase(haystack: str, needle: str) -> bool:
    """Whether normalised ``needle`` occurs in normalised ``haystack`` on word boundaries."""
    n = normalize(needle)
    return bool(n) and f" {n} " in f" {normalize(haystack)} "


def display_option(value: str) -> str:
    """How an option value is shown and clicked: WebShop lower-cases option values and shows
    "/" as " | " (so "Black/White" reads "black | white")."""
    return " ".join(value.strip().replace("/", " | ").lower().split())


def click_key(value: str) -> str:
    """Clicks match case-insensitively and forgive spacing."""
    return " ".join(value.lower().split())
