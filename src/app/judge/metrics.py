"""Pure text metrics for judged generations: degeneration rules, diversity, verdict parsing.

No I/O and no heavy imports. Words are runs of letters and digits, lower-cased; n-grams are
over words. The heuristic judge's rules, each with its threshold in ``JudgeThresholds``:

- repetition: the repeated n-gram ratio (share of word n-grams that occurred earlier in the
  response) is above ``max_repeated_ngram_ratio``, or a unit of 1-8 words occurs back to back
  more than ``max_loop_repeats`` times ("no no no no");
- code-switching: more than ``max_foreign_script_ratio`` of the response's letters are in
  another script than the prompt's (Latin → Cyrillic, Han, ...), or a sentence of at least
  ``min_langid_chars`` characters is identified as another language than ``judge.language``
  with probability ≥ ``min_langid_prob``;
- nonsense: the response has no letter or digit; more than ``max_garbage_ratio`` of its
  characters are control, private-use, unassigned or replacement characters or non-ASCII
  symbols; more than ``max_unknown_word_ratio`` of its words are neither whole words of the PT
  tokenizer's vocabulary nor words of the prompt (broken words such as "plack", "fblue"); or
  its perplexity under the PT model, given the prompt, is above ``max_perplexity`` (off by
  default: on the toy pair the PT model finds the IT model's terse answers far less likely
  than garbled ones, so the rule only makes sense for real pairs, e.g. 300).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import AbstractSet, Callable, Iterable, Mapping, Sequence

TYPES = ("repetition", "code_switch", "nonsense")
_WORD = re.compile(r"\w+")
_LETTERS = re.compile(r"[^\W\d_]+")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|\n+")
_SCRIPT_GROUPS = {"HIRAGANA": "CJK", "KATAKANA": "CJK"}  # Japanese mixes kana and Han


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def repeated_ngram_ratio(text: str, n: int = 3) -> float:
    """Share of the word n-grams that repeat an earlier one: 0 for none, towards 1 for a loop."""
    grams = ngrams(words(text), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def loop_repeats(text: str, max_unit: int = 8) -> int:
    """The most times a unit of 1..``max_unit`` words occurs back to back ("a b a b a b" → 3)."""
    toks = words(text)
    best = 1 if toks else 0
    for unit in range(1, max_unit + 1):
        run = 0  # consecutive positions equal to the word one unit earlier
        for i in range(unit, len(toks)):
            run = run + 1 if toks[i] == toks[i - unit] else 0
            best = max(best, 1 + run // unit)
    return best


def script(ch: str) -> str | None:
    """The Unicode script of a letter ('LATIN', 'CYRILLIC', 'CJK', ...), None for a non-letter."""
    if not ch.isalpha():
        return None
    first = unicodedata.name(ch, "UNKNOWN").split(" ")[0]
    return _SCRIPT_GROUPS.get(first, first)


def dominant_script(text: str) -> str | None:
    counts = Counter(s for s in map(script, text) if s)
    return counts.most_common(1)[0][0] if counts else None


def foreign_script_ratio(text: str, expected: str | None) -> float:
    """Share of the letters of ``text`` whose script is not ``expected`` (0 without letters)."""
    scripts = [s for s in map(script, text) if s]
    if not scripts or expected is None:
        return 0.0
    return sum(s != expected for s in scripts) / len(scripts)


def garbage_ratio(text: str) -> float:
    """Share of non-space characters that are control, format, private-use, unassigned or
    replacement characters, or non-ASCII symbols (box drawing, dingbats, ...)."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 0.0
    bad = 0
    for c in chars:
        cat = unicodedata.category(c)
        bad += cat in ("Cc", "Cf", "Co", "Cn", "Cs") or c == "\ufffd" or (
            cat.startswith("S") and ord(c) > 127)
    return bad / len(chars)


def unknown_word_ratio(text: str, known: AbstractSet[str], also: AbstractSet[str] = frozenset()
                       ) -> float:
    """Share of the letter-only words of ``text`` (lower-cased) in neither ``known`` nor
    ``also`` (0 when it has none)."""
    found = _LETTERS.findall(text.lower())
    return sum(w not in known and w not in also for w in found) / len(found) if found else 0.0


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def foreign_language(text: str, expected: str, language_of: Callable[[str], tuple[str, float]],
                     min_chars: int, min_prob: float) -> str | None:
    """The first language other than ``expected`` that ``language_of`` finds, with probability
    ≥ ``min_prob``, in a sentence of at least ``min_chars`` characters; None if there is none."""
    for sentence in sentences(text):
        if len(sentence) >= min_chars:
            lang, prob = language_of(sentence)
            if lang != expected and prob >= min_prob:
                return lang
    return None


def heuristic_verdict(prompt: str, response: str, t: Mapping, language: str,
                      language_of: Callable[[str], tuple[str, float]] | None = None,
                      perplexity: float | None = None,
                      lexicon: AbstractSet[str] | None = None) -> dict:
    """{'repetition', 'code_switch', 'nonsense': bool, 'scores': {...}} for one response under
    thresholds ``t`` (a ``JudgeThresholds``). Optional: ``language_of`` (text → (ISO code,
    probability)), the PT model's ``perplexity`` and the PT tokenizer's words ``lexicon``."""
    expected = dominant_script(prompt) or dominant_script(response)
    lang = None
    if language_of is not None:
        lang = foreign_language(response, language, language_of, t["min_langid_chars"],
                                t["min_langid_prob"])
    scores = {
        "repeated_ngram_ratio": repeated_ngram_ratio(response, t["repetition_n"]),
        "loop_repeats": loop_repeats(response),
        "foreign_script_ratio": foreign_script_ratio(response, expected),
        "foreign_language": lang,
        "garbage_ratio": garbage_ratio(response),
        "unknown_word_ratio": None,
        "perplexity": perplexity,
    }
    if lexicon:
        scores["unknown_word_ratio"] = unknown_word_ratio(response, lexicon, set(words(prompt)))
    max_ppl, max_unknown = t["max_perplexity"], t["max_unknown_word_ratio"]
    return {
        "repetition": scores["repeated_ngram_ratio"] > t["max_repeated_ngram_ratio"]
        or scores["loop_repeats"] > t["max_loop_repeats"],
        "code_switch": scores["foreign_script_ratio"] > t["max_foreign_script_ratio"]
        or lang is not None,
        "nonsense": not any(c.isalnum() for c in response)
        or scores["garbage_ratio"] > t["max_garbage_ratio"]
        or (max_unknown is not None and lexicon is not None
            and scores["unknown_word_ratio"] > max_unknown)
        or (max_ppl is not None and perplexity is not None and perplexity > max_ppl),
        "scores": scores,
    }


def parse_verdict(reply: str, labels: Mapping[str, str]) -> dict | None:
    """The verdict in a judge's reply, or None when it names no label.

    The labels are looked for after the last "VERDICT:" if that part names one, else anywhere
    (whole words, any case). Degeneration labels win over the ``ok`` label.
    """
    def named(text: str) -> set[str]:
        return {key for key, word in labels.items()
                if re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE)}

    marks = list(re.finditer(r"verdict\s*:", reply, re.IGNORECASE))
    found = named(reply[marks[-1].end():]) if marks else set()
    found = found or named(reply)
    if not found:
        return None
    return {t: t in found for t in TYPES}


def degeneration_rates(verdicts: Iterable[Mapping | None]) -> dict[str, float]:
    """Rates over the verdicts that exist: each type's and 'degeneration_rate' (any type)."""
    judged = [v for v in verdicts if v is not None]
    if not judged:
        return {}
    out = {f"{t}_rate": sum(bool(v[t]) for v in judged) / len(judged) for t in TYPES}
    out["degeneration_rate"] = sum(any(v[t] for t in TYPES) for v in judged) / len(judged)
    return out


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Distinct n-grams over all n-grams of ``texts`` pooled (None when there are none)."""
    grams = [g for t in texts for g in ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else None


def similarity(a: str, b: str) -> float:
    """Jaccard similarity of the word 1- and 2-gram sets (two empty texts are identical)."""
    def grams(text: str) -> set:
        toks = words(text)
        return set(ngrams(toks, 1)) | set(ngrams(toks, 2))

    ga, gb = grams(a), grams(b)
    return len(ga & gb) / len(ga | gb) if ga or gb else 1.0


def partition(texts: Sequence[str], threshold: float) -> list[int]:
    """A class per text: a text joins the first earlier class whose first member has
    ``similarity`` ≥ ``threshold`` to it, else it opens a new class (NoveltyBench-style)."""
    heads: list[str] = []
    classes = []
    for text in texts:
        for i, head in enumerate(heads):
            if similarity(text, head) >= threshold:
                classes.append(i)
                break
        else:
            classes.append(len(heads))
            heads.append(text)
    return classes


def diversity(groups: Sequence[Sequence[str]], threshold: float) -> dict[str, float]:
    """Means over prompts of the k samples' distinct-1, distinct-2 and number of distinct
    responses (``partition`` classes, 1..k)."""
    out: dict[str, float] = {}
    for n in (1, 2):
        values = [v for v in (distinct_n(g, n) for g in groups) if v is not None]
        if values:
            out[f"distinct_{n}"] = sum(values) / len(values)
    if groups:
        counts = [len(set(partition(g, threshold))) for g in groups]
        out["distinct_responses"] = sum(counts) / len(counts)
    return out


def lowest(scores: Sequence[float], k: int) -> list[int]:
    """Indices of the ``k`` lowest scores (earlier first on ties), in index order."""
    return sorted(sorted(range(len(scores)), key=lambda i: (scores[i], i))[:k])
