"""RTDMD's OCR score (rtdmd/rewards/ocr_scorer.py::OcrScorer.__call__) as pure functions: which
text is the target, which texts are compared, and the formula, with every expected value worked
out by hand (or by the recursive definition of the edit distance)."""

from __future__ import annotations

import functools
import random

import pytest

from rtdmd_bench.errors import UserError
from rtdmd_bench.rewards.ocr_text import levenshtein, normalise, ocr_score, recognised_text, target_text
from suites import prompt_sets


@pytest.mark.parametrize("prompt,target", [
    ('A sign that reads "Open Late" on a door', "Open Late"),
    ('A poster with "SALE" and "50% off" in red', "SALE"),  # several spans: the first one
    ('A mug reading "Best Dad" with the word “hero” below', "Best Dad"),
    ('A card saying “Happy” and "Birthday"', "Birthday"),  # curly quotes are not delimiters
    ('A banner "Grand “Re”opening" at noon', "Grand “Re”opening"),  # curly quotes inside are kept
    ('A note "unclosed quote to the end', "unclosed quote to the end"),  # odd count: split('"')[1]
    ("A shop called \"Joe's Diner\" at night", "Joe's Diner"),  # single quotes are ordinary characters
    ('"Leading" quote first', "Leading"),
])
def test_target_is_the_first_straight_quoted_span(prompt, target):
    assert target_text(prompt) == target


@pytest.mark.parametrize("prompt", [
    "A street sign with no quoted text",
    "A sign reading “Curly only”",  # RTDMD: IndexError
    'An empty quote "" on a wall',  # RTDMD: ZeroDivisionError
    'Only spaces "   " here',
])
def test_prompts_rtdmd_cannot_score_are_refused(prompt):
    with pytest.raises(UserError, match="OCR prompt"):
        target_text(prompt)


def test_recognised_text_joins_positive_confidences_in_order_without_separator():
    lines = [("Forever", 0.93), ("dropped", 0.0), ("Yours", 0.61), ("neg", -0.2), (" !", 0.5)]
    assert recognised_text(lines) == "ForeverYours !"
    assert recognised_text([]) == ""


def test_normalise_removes_only_ascii_spaces_and_lowercases():
    assert normalise(" Step  Goal\tAchieved ") == "stepgoal\tachieved"
    assert normalise("ÉCOLE No\u00a05") == "écoleno\u00a05"  # the no-break space is not removed


@pytest.mark.parametrize("a,b,d", [
    ("kitten", "sitting", 3),  # k->s, e->i, +g
    ("flaw", "lawn", 2),  # -f, +n
    ("", "abc", 3),
    ("abc", "", 3),
    ("same", "same", 0),
    ("e=mc2", "e=mc²", 1),  # one substitution
    ("131/2", "13½", 3),  # ½ -> 1, +/, +2
    ("gumbo", "gambol", 2),
])
def test_levenshtein_by_hand(a, b, d):
    assert levenshtein(a, b) == d == levenshtein(b, a)


def test_levenshtein_equals_the_recursive_definition_on_random_strings():
    @functools.lru_cache(maxsize=None)
    def naive(a: str, b: str) -> int:
        if not a or not b:
            return len(a) + len(b)
        return min(naive(a[1:], b) + 1, naive(a, b[1:]) + 1, naive(a[1:], b[1:]) + (a[0] != b[0]))

    rng = random.Random(0)
    for _ in range(200):
        a = "".join(rng.choice("ab½ ") for _ in range(rng.randint(0, 7)))
        b = "".join(rng.choice("ab½ ") for _ in range(rng.randint(0, 7)))
        assert levenshtein(a, b) == naive(a, b), (a, b)


@pytest.mark.parametrize("read,target,score", [
    ("Spring Collection 2024", "Spring Collection 2024", 1.0),
    ("xx SPRINGCOLLECTION 2024 yy", "Spring Collection 2024", 1.0),  # substring after normalising: d = 0
    ("FOREVER YOUR5", "Forever Yours", 1 - 1 / 12),  # "foreveryours": 12 chars, one substitution
    ("Forever", "Forever Yours", 1 - 5 / 12),  # 5 deletions
    ("", "Forever Yours", 0.0),  # nothing read: d = 12 = len
    ("a completely different and much longer text", "Open", 0.0),  # d capped at len: never negative
    ("E=mc2", "E=mc²", 1 - 1 / 5),  # ² is not in the English dictionary: can never score 1
    ("131/2", "13½", 0.0),  # d = 3 = len
    ("Caf\u00e9", "CAFÉ", 1.0),  # str.lower maps É to é
    ("a\tb", "a b", 1 - 1 / 2),  # target "ab"; the tab is not a space: d("a\tb", "ab") = 1
])
def test_score_is_one_minus_capped_distance_over_target_length(read, target, score):
    assert ocr_score(read, target) == pytest.approx(score, abs=1e-12)


def test_rtdmds_prompt_file_gives_a_target_for_every_line(shared_data):
    path = shared_data / "ocr" / "test.txt"
    assert prompt_sets.sha256_of(path) == prompt_sets.OFFICIAL["ocr"].sha256
    prompts = prompt_sets.load_prompts(path)
    assert len(prompts) == prompt_sets.OFFICIAL["ocr"].lines == 1018
    targets = [target_text(p) for p in prompts]
    assert targets[0] == "Spring Collection 2024"  # line 1: '... displaying "Spring Collection 2024". ...'
    lengths = [len(normalise(t)) for t in targets]
    assert min(lengths) >= 2 and max(lengths) <= 27  # the spec's count of characters without spaces
    dictionary = {chr(c) for c in range(32, 127)}  # PaddleOCR's en_dict.txt (95 printable ASCII) + space
    outside = [t for t in targets if set(t) - dictionary]
    assert len(outside) == 10 and "E=mc²" in outside and "Honk If You’re Holographic" in outside
