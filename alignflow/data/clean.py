"""Cleaning canonical rows: exact and near-duplicate removal, length and eval-overlap filters, stable splits.

One pass, `Cleaner`, one row at a time (so any stream fits): exact dedup → near dedup → length →
eval overlap, each removal counted per reason in its `CleanReport`, with `rows_in == rows_out +
sum(removed)`. Nothing is dropped silently. `clean` runs it over a list.

Splits are assigned by a hash of each row's content (`split_of`), so adding rows for a retraining run
never moves an old row between train and eval.

Text is split into "words" for shingles and n-grams: runs of letters/digits, except that each CJK
character (Chinese, Japanese kana, Korean hangul) is a word of its own, so text without spaces works.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import numpy as np

Row = dict[str, Any]
REASONS = ("duplicate_exact", "duplicate_near", "too_long", "too_short", "eval_overlap")
# Fields rendered by row_text, in this order (SFT, preference, prompt and unpaired rows).
TEXT_FIELDS = ("messages", "prompt", "chosen", "rejected", "completion")
_WORDS = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]|\w+")
_MINHASH_SEED = 1  # fixed so the same text always gets the same signature


# ---- row identity and splits ------------------------------------------------------------------


def row_digest(row: Mapping[str, Any]) -> str:
    """sha256 hex of the row as canonical JSON (keys sorted at every level), so key order never matters."""
    dumped = json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(dumped.encode("utf-8")).hexdigest()


def _render_messages(value: Any) -> str:
    if isinstance(value, str):
        return value
    lines = []
    for message in value:
        content = message.get("content") or ""
        calls = message.get("tool_calls")
        if calls:
            content += json.dumps(calls, sort_keys=True, ensure_ascii=False)
        lines.append(f"{message.get('role', '')}: {content}")
    return "\n".join(lines)


def row_text(row: Mapping[str, Any]) -> str:
    """A stable text rendering of a canonical row: each text field as `[field]` then `role: content` lines."""
    parts = [f"[{name}]\n{_render_messages(row[name])}" for name in TEXT_FIELDS if name in row]
    return "\n".join(parts)


def _contents(row: Mapping[str, Any], fields: Iterable[str] = TEXT_FIELDS) -> list[str]:
    """The message contents of a row (no role labels), for n-grams that never span two messages."""
    texts = []
    for name in fields:
        value = row.get(name)
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, list):
            texts.extend(m.get("content") or "" for m in value if isinstance(m, Mapping))
    return texts


def split_of(
    row: Mapping[str, Any], eval_fraction: float, salt: str = ""
) -> Literal["train", "eval"]:
    """ "eval" when a hash of (salt, row content) maps below eval_fraction in [0, 1), else "train".

    Depends on nothing but the row itself, so it is stable when rows are added, removed or reordered.
    A different salt gives an independent split.
    """
    if not 0.0 <= eval_fraction <= 1.0:
        raise ValueError(f"eval_fraction is {eval_fraction}; expected a number in [0, 1]")
    keyed = hashlib.sha256(f"{salt}\x00{row_digest(row)}".encode()).digest()
    uniform = int.from_bytes(keyed[:8], "big") / 2**64
    return "eval" if uniform < eval_fraction else "train"


# ---- exact and near duplicates ----------------------------------------------------------------


def words(text: str) -> list[str]:
    """Lower-cased words; each CJK character counts as one word."""
    return _WORDS.findall(text.lower())


def shingles(text: str, size: int) -> set[str]:
    """Word `size`-grams of text; a text shorter than `size` words is one shingle."""
    tokens = words(text)
    if len(tokens) <= size:
        return {" ".join(tokens)} if tokens else set()
    return {" ".join(tokens[i : i + size]) for i in range(len(tokens) - size + 1)}


def _collision_probability(s: float, bands: int, rows: int) -> float:
    return 1.0 - (1.0 - s**rows) ** bands


@lru_cache(maxsize=32)
def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) minimizing false positives + false negatives around threshold.

    Same criterion as datasketch's MinHashLSH (equal weights), integrated with the midpoint rule.
    """
    steps = 200
    best, best_error = (1, num_perm), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp = sum(
                _collision_probability(threshold * (i + 0.5) / steps, bands, rows)
                for i in range(steps)
            ) * (threshold / steps)
            width = 1.0 - threshold
            fn = sum(
                1.0 - _collision_probability(threshold + width * (i + 0.5) / steps, bands, rows)
                for i in range(steps)
            ) * (width / steps)
            if fp + fn < best_error:
                best, best_error = (bands, rows), fp + fn
    return best


class NearDupIndex:
    """MinHash LSH over word shingles that answers "is this a near-duplicate of a row already added?".

    Memory is bounded by storing, per kept row, only what the lookup needs: its signature as packed
    uint32 (4·num_perm bytes, appended to one bytearray) and one 60-bit int key per LSH band in a single
    dict (key → row slot); near-duplicates are never stored. With num_perm=64 (5 bands of 11) that is
    ~750 bytes per kept row: +36 MiB RSS for 50k short rows, against +97 MiB for datasketch's
    MinHashLSH at the same 64 permutations. A band match is confirmed by the estimated Jaccard of the
    two signatures, so a band collision alone never removes a row.
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 64, shingle: int = 5) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold is {threshold}; expected a Jaccard similarity in (0, 1]")
        if num_perm < 2 or shingle < 1:
            raise ValueError(
                f"num_perm={num_perm}, shingle={shingle}; expected num_perm ≥ 2, shingle ≥ 1"
            )
        from datasketch import MinHash  # here, not at import: `alignflow --help` stays fast

        self.threshold, self.num_perm, self.shingle = threshold, num_perm, shingle
        self.bands, self.band_rows = lsh_bands(threshold, num_perm)
        self._minhash = MinHash
        self._permutations = MinHash(num_perm, seed=_MINHASH_SEED, scheme="affine32").permutations
        self._signatures = bytearray()
        self._buckets: dict[int, int] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def signature(self, text: str) -> np.ndarray | None:
        """The uint32 MinHash signature of text's shingles, or None for text with no words."""
        grams = shingles(text, self.shingle)
        if not grams:
            return None
        minhash = self._minhash(
            self.num_perm, seed=_MINHASH_SEED, permutations=self._permutations, scheme="affine32"
        )
        minhash.update_batch([gram.encode("utf-8") for gram in grams])
        return minhash.hashvalues.astype(np.uint32)

    def _band_keys(self, signature: np.ndarray) -> Iterator[int]:
        for band in range(self.bands):
            chunk = signature[band * self.band_rows : (band + 1) * self.band_rows].tobytes()
            digest = hashlib.blake2b(band.to_bytes(2, "big") + chunk, digest_size=8).digest()
            yield int.from_bytes(digest, "big") >> 4  # 60 bits: the smallest int object above 2^30

    def _stored(self, slot: int) -> np.ndarray:
        width = 4 * self.num_perm
        return np.frombuffer(bytes(self._signatures[slot * width : (slot + 1) * width]), np.uint32)

    def add(self, text: str) -> bool:
        """Index text unless it near-duplicates an indexed one. True if added (keep), False if a duplicate.

        Text with no words is kept and not indexed (exact dedup already handles identical rows).
        """
        signature = self.signature(text)
        if signature is None:
            return True
        keys = list(self._band_keys(signature))
        for key in keys:
            slot = self._buckets.get(key)
            if slot is not None and np.mean(self._stored(slot) == signature) >= self.threshold:
                return False
        slot = self._count
        for key in keys:
            self._buckets.setdefault(key, slot)
        self._signatures += signature.tobytes()
        self._count += 1
        return True


# ---- eval overlap -----------------------------------------------------------------------------


def _ngrams(texts: Iterable[str], n: int) -> Iterator[int]:
    for text in texts:
        tokens = words(text)
        for i in range(len(tokens) - n + 1):
            yield hash("\x1f".join(tokens[i : i + n]))  # ints, not tuples: the eval set stays small


def _eval_prompt_texts(row: Mapping[str, Any] | str) -> list[str]:
    """What an eval row asks: its prompt, or for an SFT row every turn that is not the assistant's."""
    if isinstance(row, str):
        return [row]
    if "prompt" in row:
        return _contents(row, ("prompt",))
    return [m.get("content") or "" for m in row.get("messages", []) if m.get("role") != "assistant"]


# ---- the whole pass ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CleanSettings:
    """Knobs for `Cleaner`. near_threshold=None skips near dedup; max_chars=None sets no maximum."""

    exact_dedup: bool = True
    near_threshold: float | None = 0.8
    num_perm: int = 64  # 64 keeps the index ~750 B per kept row (see NearDupIndex)
    shingle: int = 5
    max_chars: int | None = None
    min_chars: int = 1
    overlap_n: int = 8

    def __post_init__(self) -> None:
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ValueError(
                f"max_chars={self.max_chars} is below min_chars={self.min_chars}; raise max_chars"
            )


@dataclass
class CleanReport:
    """Counts that add up: rows_in == rows_out + sum(removed.values())."""

    rows_in: int = 0
    rows_out: int = 0
    removed: Counter[str] = field(default_factory=lambda: Counter(dict.fromkeys(REASONS, 0)))

    def lines(self) -> list[str]:
        out = [f"rows in: {self.rows_in}", f"rows out: {self.rows_out}"]
        out += [f"removed ({reason}): {self.removed[reason]}" for reason in REASONS]
        return out


class Cleaner:
    """The cleaning pass one row at a time, so it runs over a stream of any length.

    Each row goes through exact dedup → near dedup → length → eval overlap and is kept or removed
    for the first reason that applies. The state that grows is one 16-byte digest per distinct row
    and the near-duplicate index (~750 B per kept row at num_perm=64); rows themselves are not held.
    One Cleaner shared by several datasets dedups across them.
    """

    def __init__(
        self,
        cfg: CleanSettings,
        eval_rows: Iterable[Row | str] = (),
        length_fn: Callable[[str], int] | None = None,
    ) -> None:
        self.cfg, self.length_fn = cfg, length_fn or len
        self.report = CleanReport()
        self._seen: set[bytes] = set()
        self._near = (
            NearDupIndex(cfg.near_threshold, cfg.num_perm, cfg.shingle)
            if cfg.near_threshold is not None
            else None
        )
        if cfg.overlap_n < 1:
            raise ValueError(f"overlap_n is {cfg.overlap_n}; expected a positive n-gram length")
        self._eval_grams = {
            gram for row in eval_rows for gram in _ngrams(_eval_prompt_texts(row), cfg.overlap_n)
        }

    def removal_reason(self, row: Row) -> str | None:
        """None to keep the row, else the reason (one of REASONS) it is removed; counts either way."""
        reason = self._reason(row)
        self.report.rows_in += 1
        if reason is None:
            self.report.rows_out += 1
        else:
            self.report.removed[reason] += 1
        return reason

    def _reason(self, row: Row) -> str | None:
        if self.cfg.exact_dedup:
            key = bytes.fromhex(row_digest(row))[:16]  # 128 bits: collisions negligible
            if key in self._seen:
                return "duplicate_exact"
            self._seen.add(key)
        text = row_text(row)
        if self._near is not None and not self._near.add(text):
            return "duplicate_near"
        length = self.length_fn(text)
        if length < self.cfg.min_chars:
            return "too_short"
        if self.cfg.max_chars is not None and length > self.cfg.max_chars:
            return "too_long"
        if self._eval_grams and any(
            gram in self._eval_grams for gram in _ngrams(_contents(row), self.cfg.overlap_n)
        ):
            return "eval_overlap"
        return None

    def filter(self, rows: Iterable[Row]) -> Iterator[Row]:
        """The rows kept, lazily."""
        return (row for row in rows if self.removal_reason(row) is None)


def clean(
    rows: Iterable[Row],
    cfg: CleanSettings,
    eval_rows: Iterable[Row | str] = (),
    length_fn: Callable[[str], int] | None = None,
) -> tuple[list[Row], CleanReport]:
    """Exact dedup → near dedup → length filter → eval-overlap filter, each removal counted.

    Args:
        rows: canonical rows (training candidates).
        cfg: CleanSettings.
        eval_rows: evaluation rows or prompt strings; training rows overlapping them are removed.
        length_fn: text → length (default characters), e.g. a tokenizer's token count.
    Returns:
        (kept rows, CleanReport)
    """
    cleaner = Cleaner(cfg, eval_rows, length_fn)
    kept = list(cleaner.filter(rows))
    return kept, cleaner.report
