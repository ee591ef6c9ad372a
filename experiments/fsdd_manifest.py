"""python experiments/fsdd_manifest.py ../shared/data/fsdd-dev --out runs/fsdd/all.jsonl   # a manifest of a folder

    python experiments/fsdd_manifest.py FSDD_DIR --out runs/fsdd/train.jsonl --speakers jackson nicolas
    python experiments/fsdd_manifest.py FSDD_DIR --out runs/fsdd/test.jsonl --speakers theo
    python experiments/fsdd_manifest.py FSDD_DIR --out runs/fsdd/val.jsonl --speakers jackson nicolas --indices 45 49

An example converter, not the only way in: it writes a JSONL manifest
(`{"audio", "text", "speaker"}` a line, audio paths absolute, since the data stays where it is)
for a folder of Free-Spoken-Digit-style recordings named `{digit}_{speaker}_{index}.wav`, the
transcript being the digit's English word (`7_theo_32.wav` -> "seven"). `--speakers` keeps
some speakers (leave-one-speaker-out: train on two, test on the third), `--indices LO HI`
keeps recording indices LO..HI inclusive (e.g. a validation slice), `--exclude-indices LO HI`
leaves them out. Prints the counts per speaker. Mistakes print one line `error: ...`, exit 2.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tyro  # noqa: E402

from funcml.asr import manifest  # noqa: E402
from funcml.errors import ConfigError, DataError, cli_main  # noqa: E402

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_NAME = re.compile(r"^(\d)_([A-Za-z0-9-]+)_(\d+)\.wav$")


@dataclasses.dataclass(frozen=True)
class FsddConfig:
    """Write a JSONL manifest for a folder of {digit}_{speaker}_{index}.wav recordings."""

    folder: tyro.conf.Positional[Path]
    """The folder of recordings (e.g. ../shared/data/fsdd-dev)."""
    out: Path
    """The JSONL manifest to write."""
    speakers: tuple[str, ...] = ()
    """Keep only these speakers (default: all)."""
    indices: tuple[int, int] | None = None
    """Keep only recording indices in [LO, HI] (inclusive)."""
    exclude_indices: tuple[int, int] | None = None
    """Leave out recording indices in [LO, HI] (inclusive)."""


def fsdd_rows(cfg: FsddConfig) -> list[dict]:
    """The manifest rows of the recordings `cfg` selects, sorted by speaker, digit and index."""
    if not cfg.folder.is_dir():
        raise DataError(f"{cfg.folder}: no such folder of recordings")
    rows, speakers = [], set()
    for path in cfg.folder.iterdir():
        m = _NAME.match(path.name)
        if not m:
            continue
        digit, speaker, index = int(m[1]), m[2], int(m[3])
        speakers.add(speaker)
        if cfg.speakers and speaker not in cfg.speakers:
            continue
        if cfg.indices is not None and not cfg.indices[0] <= index <= cfg.indices[1]:
            continue
        if cfg.exclude_indices is not None and cfg.exclude_indices[0] <= index <= cfg.exclude_indices[1]:
            continue
        rows.append({"audio": str(path.resolve()), "text": DIGIT_WORDS[digit], "speaker": speaker,
                     "_key": (speaker, digit, index)})
    if not speakers:
        raise DataError(f"{cfg.folder}: no files named like {{digit}}_{{speaker}}_{{index}}.wav")
    unknown = sorted(set(cfg.speakers) - speakers)
    if unknown:
        raise ConfigError(f"--speakers {unknown} are not in {cfg.folder} (it has {sorted(speakers)})")
    if not rows:
        raise DataError(f"{cfg.folder}: the selection (--speakers / --indices / --exclude-indices) keeps no recording")
    return [{k: v for k, v in r.items() if k != "_key"} for r in sorted(rows, key=lambda r: r["_key"])]


@cli_main
def main(argv: list[str] | None = None) -> dict:
    cfg = tyro.cli(FsddConfig, args=argv, description="\n\n".join(__doc__.split("\n\n")[:2]))
    rows = fsdd_rows(cfg)
    path = manifest.write_jsonl(cfg.out, rows)
    counts = Counter(r["speaker"] for r in rows)
    print(f"wrote {path}: {len(rows)} utterances ({', '.join(f'{s} {n}' for s, n in sorted(counts.items()))})")
    return {"manifest": str(path), "utterances": len(rows), "speakers": dict(counts)}


if __name__ == "__main__":
    main()
