"""Lexical matching without a download: terms of a text, and BM25 over them.

Used by ``search_docs`` (the owner's corpus) and ``recall`` (a person's remembered facts). The
terms are lower-cased words with stop words dropped and a light suffix stripped (so "refunds",
"refunded" and "refund" meet); no tokenizer or model file is needed, and the same terms are
computed on SQLite and PostgreSQL, so a search ranks alike on both.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

K1 = 1.2
B = 0.75

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has
have having he her here hers herself him himself his how i if in into is it its itself just me
more most my myself no nor not now of off on once only or other our ours ourselves out over own
same she should so some such than that the their theirs them themselves then there these they
this those through to too under until up very was we were what when where which while who whom
why will with would you your yours yourself yourselves
""".split())


def stem(word: str) -> str:
    """A light English suffix strip; enough for plural and tense to meet, never a dictionary."""
    if len(word) <= 3 or word.isdigit():
        return word
    for suffix, keep in (("ies", "y"), ("sses", "ss"), ("ing", ""), ("edly", ""), ("ed", ""),
                         ("es", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            if suffix == "s" and word.endswith(("ss", "us", "is")):
                return word
            if suffix == "es" and not word.endswith(("shes", "ches", "xes", "zes", "oes")):
                continue
            return word[: len(word) - len(suffix)] + keep
    return word


def terms(text: str) -> list[str]:
    """The text's terms, in order (repeats kept)."""
    out = []
    for word in _WORD.findall(text.lower()):
        if word in STOP_WORDS or (len(word) < 2 and not word.isdigit()):
            continue
        out.append(stem(word))
    return out


def term_counts(text: str) -> Counter[str]:
    return Counter(terms(text))


@dataclass(frozen=True)
class CorpusStats:
    documents: int
    """How many documents (chunks, facts) the corpus holds."""
    average_terms: float
    """Their mean length in terms."""


def idf(documents: int, containing: int) -> float:
    """BM25's inverse document frequency (the +1 keeps it positive for common terms)."""
    return math.log(1 + (documents - containing + 0.5) / (containing + 0.5))


def bm25(query: Iterable[str], tf: Mapping[str, int], length: int, df: Mapping[str, int],
         stats: CorpusStats) -> float:
    """The BM25 score of one document with term frequencies ``tf`` and ``length`` terms."""
    score = 0.0
    avg = stats.average_terms or 1.0
    for term in set(query):
        f = tf.get(term, 0)
        if not f:
            continue
        norm = f * (K1 + 1) / (f + K1 * (1 - B + B * length / avg))
        score += idf(stats.documents, df.get(term, 0)) * norm
    return score


def rank(query: str, documents: Mapping[int, str], *, limit: int) -> list[tuple[int, float]]:
    """The best ``limit`` of a small in-memory collection (id → text) for ``query``, best
    first; documents sharing no term with the query are left out."""
    wanted = terms(query)
    if not wanted or not documents:
        return []
    counts = {key: term_counts(text) for key, text in documents.items()}
    df: Counter[str] = Counter()
    for c in counts.values():
        df.update(set(c) & set(wanted))
    stats = CorpusStats(len(counts), sum(sum(c.values()) for c in counts.values()) / len(counts))
    scored = [(key, bm25(wanted, c, sum(c.values()), df, stats)) for key, c in counts.items()]
    hits = [(key, score) for key, score in scored if score > 0]
    hits.sort(key=lambda h: (-h[1], -h[0]))
    return hits[:limit]
