"""Write `samples/prompts.jsonl`: a deterministic mix of plain and chat rows.

The rows exercise what a real batch file holds: lengths from a few words to a few
hundred (so length ordering matters), plain `prompt` rows next to chat `messages`
rows, per-row `max_tokens` / `temperature`, a `topic` field for `--keep-fields`, and
some non-ASCII text for the byte-level tokenizer. The text is generated from fixed
word lists with a fixed seed, so the committed file can always be rebuilt
byte-for-byte:

    python samples/make_prompts.py            # rewrites samples/prompts.jsonl
    python samples/make_prompts.py -n 2000 -o /tmp/p.jsonl --seed 7
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "make_rows"]

DEFAULT_PATH = Path(__file__).resolve().parent / "prompts.jsonl"
DEFAULT_COUNT = 300
DEFAULT_SEED = 20240611

TOPICS = (
    "astronomy", "baking", "chess", "climate", "databases", "gardening", "history",
    "music", "networking", "oceans", "poetry", "robotics", "statistics", "travel",
)  # fmt: skip

SUBJECTS = {
    "astronomy": ("the moon", "a red dwarf", "the Andromeda galaxy", "Saturn's rings"),
    "baking": ("sourdough bread", "a lemon tart", "croissants", "rye crackers"),
    "chess": ("the Sicilian defence", "an endgame with rooks", "a queen sacrifice"),
    "climate": ("sea ice", "monsoon rain", "urban heat islands", "glaciers"),
    "databases": ("a B-tree index", "write-ahead logging", "query planning"),
    "gardening": ("tomato seedlings", "a compost heap", "drought-tolerant herbs"),
    "history": ("the printing press", "the Silk Road", "early railways"),
    "music": ("a minor scale", "the fugue", "jazz improvisation", "a drum groove"),
    "networking": ("TCP congestion control", "a DNS lookup", "packet loss"),
    "oceans": ("coral reefs", "deep-sea vents", "tides", "the Gulf Stream"),
    "poetry": ("a sonnet", "free verse", "the haiku form", "a ballad"),
    "robotics": ("a line-following robot", "inverse kinematics", "a gripper"),
    "statistics": ("the median", "a confidence interval", "Bayes' rule"),
    "travel": ("a night train", "a mountain village", "the café in Kyōto"),
}

NOUNS = (
    "system", "garden", "river", "signal", "engine", "theory", "village", "market",
    "recipe", "window", "library", "harbour", "pattern", "measure", "journey",
    "machine", "season", "letter", "bridge", "forest", "number", "voice", "map",
)  # fmt: skip
ADJECTIVES = (
    "quiet", "careful", "ancient", "bright", "simple", "curious", "steady", "narrow",
    "warm", "hidden", "broad", "gentle", "rapid", "modest", "strange", "clear",
)  # fmt: skip
VERBS = (
    "changes", "follows", "measures", "explains", "supports", "connects", "reveals",
    "shapes", "carries", "balances", "divides", "records", "predicts", "repairs",
)  # fmt: skip
ADVERBS = ("slowly", "often", "rarely", "always", "quickly", "carefully", "together")
EXTRAS = ("naïve", "café", "über", "façade", "déjà vu", "日本", "ñandú", "smörgåsbord")

SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a concise assistant. Answer in at most three sentences.",
    "You are a patient teacher who explains things step by step.",
    "You are an expert editor. Keep the author's voice.",
)

SHORT_TASKS = (
    "Write a haiku about {subject}.",
    "Give one fun fact about {subject}.",
    "Name three words related to {subject}.",
    "Explain {subject} to a child.",
    "What is {subject}?",
    "Describe {subject} in one sentence.",
)

LONG_TASKS = (
    "Summarize the following notes about {subject}:\n\n{text}",
    "Rewrite this paragraph about {subject} in plain English:\n\n{text}",
    "List the main claims in this text about {subject}:\n\n{text}",
    "Translate the following text about {subject} into French:\n\n{text}",
    "Find the weakest argument in this essay on {subject}:\n\n{text}",
)


def _sentence(rng: random.Random) -> str:
    words = [
        "The",
        rng.choice(ADJECTIVES),
        rng.choice(NOUNS),
        rng.choice(ADVERBS),
        rng.choice(VERBS),
        "the",
        rng.choice(ADJECTIVES),
        rng.choice(NOUNS),
    ]
    if rng.random() < 0.3:
        words += ["of", "the", rng.choice(NOUNS)]
    if rng.random() < 0.08:
        words.append(rng.choice(EXTRAS))
    return " ".join(words) + rng.choice((".", ".", ".", "!", "?"))


def _paragraph(rng: random.Random, words: int) -> str:
    sentences: list[str] = []
    count = 0
    while count < words:
        sentence = _sentence(rng)
        sentences.append(sentence)
        count += len(sentence.split())
    return " ".join(sentences)


def _target_words(rng: random.Random) -> int:
    # Skewed like real batches: most prompts are short, a long tail reaches ~300 words.
    bucket = rng.random()
    if bucket < 0.35:
        return rng.randint(3, 12)
    if bucket < 0.75:
        return rng.randint(20, 80)
    if bucket < 0.93:
        return rng.randint(80, 180)
    return rng.randint(180, 300)


def _prompt_text(rng: random.Random, topic: str) -> str:
    subject = rng.choice(SUBJECTS[topic])
    words = _target_words(rng)
    if words <= 12:
        return rng.choice(SHORT_TASKS).format(subject=subject)
    return rng.choice(LONG_TASKS).format(subject=subject, text=_paragraph(rng, words))


def make_rows(count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED) -> list[dict[str, Any]]:
    """Build `count` rows; the same arguments always give the same rows.

    >>> make_rows(2) == make_rows(2)
    True
    >>> make_rows(1)[0]["id"]
    'row-0000'
    """
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for index in range(count):
        topic = rng.choice(TOPICS)
        row: dict[str, Any] = {"id": f"row-{index:04d}"}
        text = _prompt_text(rng, topic)
        if rng.random() < 0.6:
            row["prompt"] = text
        else:
            messages = [{"role": "user", "content": text}]
            if rng.random() < 0.7:
                messages.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
            row["messages"] = messages
        if rng.random() < 0.15:
            row["max_tokens"] = rng.choice((8, 16, 32, 64))
        if rng.random() < 0.1:
            row["temperature"] = rng.choice((0.0, 0.7, 1.0))
        if rng.random() < 0.2:
            row["topic"] = topic
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=DEFAULT_COUNT)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("-o", "--output", default=str(DEFAULT_PATH), help="'-' for stdout")
    args = parser.parse_args(argv)

    lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in make_rows(args.count, args.seed)]
    if args.output == "-":
        sys.stdout.writelines(lines)
    else:
        Path(args.output).write_text("".join(lines), encoding="utf-8")
        print(f"wrote {len(lines)} rows to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
