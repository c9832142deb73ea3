"""OCR score of one image from the texts PaddleOCR read, as RTDMD computes it (pure functions).

RTDMD's `rtdmd/rewards/ocr_scorer.py::OcrScorer.__call__` (Harahan/RTDMD at 6c3cb03, the same
scorer as Flow-GRPO's OCR reward):
1. target = `prompt.split('"')[1]`: the text after the prompt's first STRAIGHT double quote, up to
   the next one (or to the end of the prompt when there is no second one). Curly quotes (U+201C,
   U+201D) are ordinary characters: a prompt quoted only with them has no target.
2. recognised = the texts of the detections whose confidence is > 0, joined with NO separator, in
   the order PaddleOCR returns them (`sorted_boxes`: top to bottom, left to right within 10 px);
   PaddleOCR has already dropped detections under its drop score (0.5). No detection: "".
3. both with every ASCII space removed (other whitespace stays) and lower-cased (`str.lower`).
4. distance = 0 if the target is a substring of the recognised text, else the Levenshtein distance
   (unit costs, on code points: `Levenshtein.distance`), capped at len(target).
5. score = 1 - distance / len(target), in [0, 1]; an OCR failure on the image scores 0.

Where RTDMD crashes instead of scoring (an IndexError for a prompt without a straight quote, a
ZeroDivisionError for an empty or all-space target), the suite raises a UserError naming the prompt.
Targets with characters outside the English recogniser's dictionary (95 printable ASCII characters
plus the space: "E=mc²", "13½", a curly apostrophe) are kept as RTDMD keeps them: they can never
score 1.
"""

from __future__ import annotations

from typing import Sequence

from rtdmd_bench.errors import UserError

QUOTE = '"'


def target_text(prompt: str) -> str:
    """The text RTDMD asks the image to show: `prompt.split('"')[1]` (see the module docstring),
    refused when RTDMD would crash on it."""
    parts = prompt.split(QUOTE)
    if len(parts) < 2:
        raise UserError(f"OCR prompts must quote their target text in straight double quotes (RTDMD reads the "
                        f"text after the first '\"'); this prompt has none: {prompt[:200]!r}")
    target = parts[1]
    if not normalise(target):
        raise UserError(f"the quoted target of this OCR prompt is empty once spaces are removed (RTDMD divides by "
                        f"its length): {prompt[:200]!r}")
    return target


def normalise(text: str) -> str:
    """What RTDMD compares: ASCII spaces removed, lower-cased."""
    return text.replace(" ", "").lower()


def recognised_text(lines: Sequence[tuple[str, float]]) -> str:
    """The texts of the (text, confidence) detections of one image, in PaddleOCR's order, joined
    with no separator; only confidences > 0 count (as RTDMD filters; PaddleOCR's drop score 0.5
    has already removed the weaker ones)."""
    return "".join(text for text, conf in lines if conf > 0)


def levenshtein(a: str, b: str) -> int:
    """Edit distance with unit insert / delete / substitute costs on code points (what
    `Levenshtein.distance` computes); O(len(a) * len(b)) with one row of memory."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))  # distances from a[:0] to every prefix of b
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def ocr_score(recognised: str, target: str) -> float:
    """1 - min(d, len) / len on the normalised texts, d = 0 when the target is a substring of the
    recognised text, else their Levenshtein distance (steps 3-5 of the module docstring)."""
    seen, wanted = normalise(recognised), normalise(target)
    if not wanted:
        raise UserError(f"OCR target {target!r} is empty once spaces are removed")
    distance = 0 if wanted in seen else min(levenshtein(seen, wanted), len(wanted))
    return 1.0 - distance / len(wanted)
