"""The `llm_judge` labeler: an OpenAI-compatible chat endpoint compares candidates pairwise.

Every pair (i < j) of a comparison's K candidates is asked in both orders, (i, j) and (j, i),
so K candidates cost K * (K - 1) calls. The two answers combine into one pair outcome
(`combine_orders`), and the outcomes into ONE PreferenceRecord per comparison, ranked by Copeland
score (pairwise wins - losses). A comparison with no judged pair yields no record.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlparse

from alignflow.config import LLMJudgeConfig
from alignflow.feedback.records import Comparison, PreferenceRecord

if TYPE_CHECKING:
    from openai import OpenAI

log = logging.getLogger(__name__)

Verdict = Literal["A", "B", "TIE"]
# A pair outcome in candidate terms: the index of the better candidate, "tie", or None (unjudged).
PairOutcome = int | Literal["tie"] | None

# Sent as the key to servers that need none (transformers serve, vLLM without --api-key).
LOCAL_PLACEHOLDER_KEY = "no-key-needed"
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}

# --- parsing --------------------------------------------------------------------------------------

_TIE = r"TIE|TIED|EQUAL|EQUALLY|DRAW"
_LABEL = r"(?:FINAL\s+)?(?:ANSWER|VERDICT|CHOICE|WINNER|PREFERENCE|JUDGE?MENT|DECISION)"
_NOUN = r"(?:RESPONSE|OPTION|CANDIDATE|ASSISTANT|OUTPUT|ANSWER)"
_BRACKETED = re.compile(r"\[\[\s*(A|B|C|" + _TIE + r")\s*\]\]", re.I)
_WHOLE = re.compile(
    rf"^\W*(?:{_LABEL}\s*(?:IS)?\s*[:=\-]?\s*)?(?:{_NOUN}\s*)?\(?\s*(A|B|{_TIE})\s*\)?\W*$", re.I
)
_STATED = [
    re.compile(rf"\b{_LABEL}\s*(?:IS)?\s*[:=\-]\s*(?:{_NOUN}\s*)?\(?(A|B|{_TIE})\b", re.I),
    re.compile(
        rf"\b(?:{_NOUN}\s+)?((?-i:[AB]))\s+(?:IS|WAS)\s+(?:BETTER|PREFERRED|SUPERIOR|MORE)\b", re.I
    ),
    re.compile(rf"\bPREFER(?:RED)?\s*(?:IS)?\s*:?\s*(?:{_NOUN}\s+)?((?-i:[AB]))\b", re.I),
    re.compile(rf"\b({_TIE})\b", re.I),
]
_MENTIONED = [
    re.compile(rf"\b{_NOUN}\s+([AB])\b", re.I),
    # A bare capital letter opening the answer ("B, because ..."), but not the article ("A good ...").
    re.compile(r"^\W*((?-i:[AB]))(?:\W*$|[,.:;)!]|\s+(?:is|wins|was)\b)", re.I),
]


def _normalize(token: str) -> Verdict:
    token = token.upper()
    return token if token in ("A", "B") else "TIE"  # type: ignore[return-value]


def _unique(matches: Iterable[str]) -> Verdict | None | Literal["ambiguous"]:
    verdicts = {_normalize(m) for m in matches}
    if not verdicts:
        return None
    return verdicts.pop() if len(verdicts) == 1 else "ambiguous"


def parse_verdict(text: str | None) -> Verdict | None:
    """The judge's answer as "A", "B" or "TIE"; None when unparsable or ambiguous.

    Tried from the most to the least explicit form, the first that says anything decides:
    `[[A]]` (MT-Bench style, `[[C]]` is a tie); the whole answer being a verdict ("**B**",
    "Response A.", "Answer: tie"); stated verdicts ("Verdict: A", "B is better", "equally good");
    mentions ("... Response B ..."). Two different verdicts in the deciding form → None.
    """
    if not text:
        return None
    bracketed = _BRACKETED.findall(text)
    if bracketed:
        verdict = _unique("TIE" if b.upper() == "C" else b for b in bracketed)
        return None if verdict == "ambiguous" else verdict
    lines = [" ".join(line.split()) for line in re.sub(r"[*_`#>]", " ", text).splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return None
    plain = " ".join(lines)
    # A verdict alone on the first or last line, with reasons on the others.
    whole = [m[1] for line in {plain, lines[0], lines[-1]} if (m := _WHOLE.match(line))]
    stated = [m for pattern in _STATED for m in pattern.findall(plain)]
    mentioned = [m for pattern in _MENTIONED for m in pattern.findall(plain)]
    for matches in (whole, stated, mentioned):
        verdict = _unique(matches)
        if verdict is not None:
            return None if verdict == "ambiguous" else verdict
    return None


# --- combining ------------------------------------------------------------------------------------


def combine_orders(
    forward: Verdict | None, backward: Verdict | None, i: int, j: int, allow_ties: bool = True
) -> tuple[PairOutcome, bool]:
    """One pair outcome from the two orders; returns (outcome, inconsistent).

    forward: the verdict with candidate i shown as A and j as B; backward: j as A, i as B.
    None is an unparsable or failed answer (a disallowed tie must already be None).
    The rule: both orders must give a verdict. If they agree (after swapping back) that is the
    outcome; if they disagree the judge followed position, not content: a tie when ties are
    allowed, else unjudged, and inconsistent either way. One verdict alone leaves the pair
    unjudged: with position bias common in LLM judges, a single order cannot be trusted.
    """
    if forward is None or backward is None:
        return None, False
    as_candidates = {"A": i, "B": j, "TIE": "tie"}
    first = as_candidates[forward]
    second = {"A": j, "B": i, "TIE": "tie"}[backward]
    if first == second:
        return first, False
    return ("tie" if allow_ties else None), True


def copeland_scores(outcomes: dict[tuple[int, int], PairOutcome], k: int) -> list[float | None]:
    """Wins - losses per candidate over judged pairs (ties count 0); None for a candidate in no
    judged pair. outcomes: (i, j) -> outcome for each asked pair."""
    scores: list[float | None] = [None] * k
    for (i, j), outcome in outcomes.items():
        if outcome is None:
            continue
        scores[i] = scores[i] or 0.0
        scores[j] = scores[j] or 0.0
        if outcome != "tie":
            loser = j if outcome == i else i
            scores[outcome] += 1.0  # type: ignore[operator]
            scores[loser] -= 1.0  # type: ignore[operator]
    return scores


# --- the judge ------------------------------------------------------------------------------------


@dataclass
class JudgeCounters:
    """Per answer: calls = failures + unparsable + first_position_wins + second_position_wins
    + ties. A tie when ties are not allowed counts in unparsable and in disallowed_ties."""

    calls: int = 0
    failures: int = 0  # raised after the client's retries
    unparsable: int = 0
    disallowed_ties: int = 0
    first_position_wins: int = 0
    second_position_wins: int = 0
    ties: int = 0
    pairs: int = 0
    pairs_judged: int = 0
    inconsistent: int = 0  # pairs whose two orders disagree
    records: int = 0
    comparisons_without_record: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class MinIntervalLimiter:
    """Client-side rate limit: calls at least 60 / requests_per_minute seconds apart."""

    requests_per_minute: float | None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _next_at: float = field(default=0.0, init=False)

    def wait(self) -> None:
        if self.requests_per_minute is None:
            return
        now = self.clock()
        if now < self._next_at:
            self.sleep(self._next_at - now)
            now = self._next_at
        self._next_at = now + 60.0 / self.requests_per_minute


def render_conversation(messages: list[dict]) -> str:
    """Chat messages as "Role: content" paragraphs, for the template's {prompt}."""
    lines = []
    for message in messages:
        content = message.get("content", "")
        if isinstance(content, list):  # OpenAI content parts
            content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
        lines.append(f"{str(message.get('role', 'user')).capitalize()}: {content}")
    return "\n\n".join(lines)


def render_prompt(template: str, prompt: str, response_a: str, response_b: str) -> str:
    """Fill the three fields in one pass: other braces in the template (a JSON example) and
    field names inside the responses stay as they are, which str.format would not allow."""
    values = {"prompt": prompt, "response_a": response_a, "response_b": response_b}
    return re.sub(r"\{(prompt|response_a|response_b)\}", lambda m: values[m[1]], template)


def resolve_api_key(cfg: LLMJudgeConfig, environ: dict[str, str]) -> str:
    """The key from the environment variable cfg.api_key_env names; a placeholder for a local
    server without one. A remote server without a key would fail every call, so it fails here."""
    if cfg.api_key_env and environ.get(cfg.api_key_env):
        return environ[cfg.api_key_env]
    if urlparse(cfg.base_url).hostname in _LOCAL_HOSTS:
        return LOCAL_PLACEHOLDER_KEY
    raise ValueError(
        f"llm_judge.base_url {cfg.base_url} is not local, but the environment variable "
        f"llm_judge.api_key_env={cfg.api_key_env!r} is not set: export it with the API key."
    )


def _error_summary(exc: Exception) -> str:
    # The class and status only: provider error messages can echo part of the API key.
    status = getattr(exc, "status_code", None)
    return type(exc).__name__ + (f" (HTTP {status})" if status else "")


class LLMJudge:
    """Labels Comparisons with an OpenAI-compatible chat endpoint (see the module docstring)."""

    def __init__(self, cfg: LLMJudgeConfig, environ: dict[str, str] | None = None) -> None:
        from openai import OpenAI

        self.cfg = cfg
        self.labeler = f"llm_judge:{cfg.model}"
        self.client: OpenAI = OpenAI(
            base_url=cfg.base_url,
            api_key=resolve_api_key(cfg, dict(os.environ) if environ is None else environ),
            max_retries=cfg.max_retries,  # backoff on connection errors, 408/409/429/5xx
            timeout=cfg.timeout_s,
        )
        self.limiter = MinIntervalLimiter(cfg.requests_per_minute)

    def ask(self, prompt: str, response_a: str, response_b: str) -> str:
        """One pairwise judge call; the answer's text. Raises openai.OpenAIError after the
        retries."""
        return self.complete(
            render_prompt(self.cfg.prompt_template, prompt, response_a, response_b)
        )

    def complete(self, content: str) -> str:
        """One call with `content` as the user message (rate-limited, retried); the answer's
        text. Raises openai.OpenAIError after the retries."""
        self.limiter.wait()
        completion = self.client.chat.completions.create(
            model=self.cfg.model,
            messages=[{"role": "user", "content": content}],
            max_tokens=self.cfg.max_tokens,
            temperature=self.cfg.temperature,
        )
        return (completion.choices[0].message.content or "") if completion.choices else ""

    def _verdict(
        self, comparison: Comparison, shown: tuple[int, int], counters: JudgeCounters
    ) -> tuple[Verdict | None, str]:
        """Ask with candidates `shown` as (A, B); the usable verdict and its note for the comment."""
        from openai import OpenAIError

        counters.calls += 1
        prompt = render_conversation(comparison.prompt)
        a, b = (comparison.candidates[index] for index in shown)
        try:
            verdict = parse_verdict(self.ask(prompt, a, b))
        except OpenAIError as exc:
            counters.failures += 1
            log.warning(
                "llm_judge: comparison %s, candidates %s as (A, B): call failed: %s",
                comparison.id,
                shown,
                _error_summary(exc),
            )
            return None, "!"
        if verdict == "TIE" and not self.cfg.allow_ties:
            counters.disallowed_ties += 1
            verdict = None
        if verdict is None:
            counters.unparsable += 1
            return None, "?"
        counters.ties += verdict == "TIE"
        counters.first_position_wins += verdict == "A"
        counters.second_position_wins += verdict == "B"
        return verdict, verdict

    def judge_pair(
        self, comparison: Comparison, i: int, j: int, counters: JudgeCounters
    ) -> tuple[PairOutcome, str]:
        """Both orders of candidates i and j; the pair outcome and a comment fragment."""
        forward, forward_note = self._verdict(comparison, (i, j), counters)
        backward, backward_note = self._verdict(comparison, (j, i), counters)
        outcome, inconsistent = combine_orders(forward, backward, i, j, self.cfg.allow_ties)
        counters.pairs += 1
        counters.pairs_judged += outcome is not None
        counters.inconsistent += inconsistent
        result = "-" if outcome is None else ("tie" if outcome == "tie" else f"{outcome} wins")
        flag = " inconsistent" if inconsistent else ""
        return outcome, f"{i}v{j}: {forward_note}/{backward_note} -> {result}{flag}"

    def judge(self, comparison: Comparison, counters: JudgeCounters) -> PreferenceRecord | None:
        """Every pair of one comparison; its record, or None when no pair was judged."""
        k = len(comparison.candidates)
        outcomes: dict[tuple[int, int], PairOutcome] = {}
        notes = []
        for i in range(k):
            for j in range(i + 1, k):
                outcomes[(i, j)], note = self.judge_pair(comparison, i, j, counters)
                notes.append(note)
        scores = copeland_scores(outcomes, k)
        if sum(score is not None for score in scores) < 2:
            counters.comparisons_without_record += 1
            return None
        counters.records += 1
        judged = sum(outcome is not None for outcome in outcomes.values())
        comment = f"pairs judged {judged}/{len(outcomes)} (orders A/B): " + "; ".join(notes)
        return PreferenceRecord.from_scores(comparison, scores, self.labeler, comment=comment)

    def label(
        self, comparisons: Iterable[Comparison], progress: bool = True
    ) -> tuple[list[PreferenceRecord], dict[str, int]]:
        """Records for the comparisons the judge could rank, and the counters (MLflow metrics).
        Call failures are counted and logged, never raised."""
        from tqdm.auto import tqdm

        counters = JudgeCounters()
        records = []
        for comparison in tqdm(
            comparisons, desc="llm_judge", unit="comparison", disable=not progress
        ):
            record = self.judge(comparison, counters)
            if record is not None:
                records.append(record)
        return records, counters.as_dict()
