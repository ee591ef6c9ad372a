"""Manifests of (audio, transcript) pairs: JSONL files and Kaldi-style data directories.

    utts = read_manifest("data/train.jsonl")          # or a Kaldi data dir: read_manifest("data/train")
    utts = apply_vocabulary(utts, tokenizer, oov="error")
    feats = load_features(utts, frontend_cfg, cache_dir=Path(".cache/funcml-features"))
    write_jsonl("data/train.jsonl", utts)              # e.g. experiments/fsdd_manifest.py

JSONL (the FunASR / NeMo way), one utterance a line:

    {"audio": "wavs/0001.wav", "text": "three one four", "duration": 1.42, "speaker": "theo"}

`audio` and `text` are required; `duration` (seconds) and `speaker` are optional; an `id`
is optional too (default: the audio path). A relative `audio` path is relative to the folder
of the manifest. Blank lines are skipped.

Kaldi data directory (the Kaldi / WeNet / ESPnet way): a folder with `wav.scp` (`<utt-id>
<path>` a line) and `text` (`<utt-id> <transcript>` a line), optionally `utt2spk`
(`<utt-id> <speaker>`); relative paths are relative to the data directory. Piped commands
in wav.scp (`... |`) are not supported: extract the audio to files first.

Every problem is a `DataError` that names the manifest, the line and what to do: bad JSON, a
missing field, a missing audio file, an empty transcript, a duplicate or unmatched utterance
id; unreadable or zero-length audio is named with its manifest line by `load_features`.

Transcripts are stripped and their runs of whitespace collapsed to one space. Characters or
words outside a tokenizer's vocabulary are handled by `apply_vocabulary` (`oov`): "error"
(name the line and the token), "drop" (leave the utterance out), "strip" (remove the
unknown characters / words from the text), or "unk" (keep them, encoded as `<unk>`).

Features are cached on disk keyed by content: `sha256(audio file bytes, the front end's
config, the reader's version)`, one `.npy` per utterance under `cache_dir`, so a changed
file or front end never reads a stale cache and a renamed file reuses it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Iterable, Literal, NamedTuple, Sequence

import numpy as np
import torch

from ..errors import DataError
from . import audio as audio_lib
from .frontend import FrontendConfig, features as frontend_features, num_frames

__all__ = ["Utterance", "read_manifest", "read_jsonl", "read_kaldi_dir", "write_jsonl", "apply_vocabulary",
           "load_features", "feature_key", "OOV_POLICIES"]

OOV_POLICIES = ("error", "drop", "strip", "unk")
_FEATURE_VERSION = 1  # bump when the reader or the feature path changes what a file turns into


class Utterance(NamedTuple):
    """One manifest entry: `audio` (an absolute path), `text` (normalized), optional `duration`
    (seconds, as the manifest says) and `speaker`, the utterance `id`, and `where`
    ("manifest:line") for messages."""

    audio: Path
    text: str
    duration: float | None
    speaker: str | None
    id: str
    where: str


def _normalize(text: str) -> str:
    return " ".join(text.split())


def read_manifest(path: str | os.PathLike, *, check_files: bool = True) -> list[Utterance]:
    """A JSONL manifest (a file) or a Kaldi data directory (a folder with wav.scp and text)."""
    path = Path(path)
    if path.is_dir():
        return read_kaldi_dir(path, check_files=check_files)
    if not path.is_file():
        raise DataError(f"manifest {path}: no such file or directory; give a JSONL file (one "
                        '{"audio": ..., "text": ...} a line) or a Kaldi data dir (wav.scp + text)')
    return read_jsonl(path, check_files=check_files)


def read_jsonl(path: str | os.PathLike, *, check_files: bool = True) -> list[Utterance]:
    """Read a JSONL manifest (see the module docstring); `check_files` checks every audio file exists."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"manifest {path}: cannot read it as UTF-8 text ({e})") from None
    out, seen = [], {}
    for no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{no}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); each line must be one object "
                            'like {"audio": "a.wav", "text": "one two"}') from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got a {type(row).__name__}")
        missing = [k for k in ("audio", "text") if k not in row]
        if missing:
            raise DataError(f"{where}: missing field(s) {missing}; each line needs \"audio\" and \"text\" "
                            f"(got {sorted(row)})")
        audio, text = row["audio"], row["text"]
        if not isinstance(audio, str) or not audio:
            raise DataError(f"{where}: \"audio\" must be a non-empty path string, got {audio!r}")
        if not isinstance(text, str):
            raise DataError(f"{where}: \"text\" must be a string, got {type(text).__name__}")
        duration, speaker = row.get("duration"), row.get("speaker")
        if duration is not None and (isinstance(duration, bool) or not isinstance(duration, (int, float))
                                     or not duration > 0):
            raise DataError(f"{where}: \"duration\" must be a number of seconds > 0, got {duration!r}")
        if speaker is not None and not isinstance(speaker, str):
            raise DataError(f"{where}: \"speaker\" must be a string, got {speaker!r}")
        uid = str(row.get("id", audio))
        if uid in seen:
            raise DataError(f"{where}: utterance {uid!r} is listed twice (first at line {seen[uid]}); give each "
                            "line its own \"id\" or audio file")
        seen[uid] = no
        out.append(_utterance(path.parent, audio, text, duration, speaker, uid, where, check_files))
    if not out:
        raise DataError(f"manifest {path}: no utterances (the file is empty)")
    return out


def _utterance(root: Path, audio: str, text: str, duration, speaker, uid: str, where: str,
               check_files: bool) -> Utterance:
    file = Path(audio) if Path(audio).is_absolute() else root / audio
    if check_files and not file.is_file():
        raise DataError(f"{where}: audio file {audio!r} not found (looked for {file}); paths are relative to "
                        "the manifest's folder")
    text = _normalize(text)
    if not text:
        raise DataError(f"{where}: empty transcript for {audio!r}; remove the line or give its text")
    return Utterance(file.resolve() if file.exists() else file, text,
                     None if duration is None else float(duration), speaker, uid, where)


def _read_table(path: Path, *, need_value: bool) -> dict[str, tuple[str, int]]:
    """`<utt-id> <rest of the line>` lines -> {id: (rest, line number)}."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read it as UTF-8 text ({e})") from None
    table: dict[str, tuple[str, int]] = {}
    for no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if need_value and len(parts) < 2:
            raise DataError(f"{path}:{no}: expected '<utt-id> <value>', got {line.strip()!r}")
        if parts[0] in table:
            raise DataError(f"{path}:{no}: utterance id {parts[0]!r} is listed twice (first at line "
                            f"{table[parts[0]][1]})")
        table[parts[0]] = (parts[1] if len(parts) > 1 else "", no)
    return table


def read_kaldi_dir(path: str | os.PathLike, *, check_files: bool = True) -> list[Utterance]:
    """Read a Kaldi data directory: `wav.scp` and `text` (and `utt2spk` if present), in the order of `text`."""
    path = Path(path)
    for name in ("wav.scp", "text"):
        if not (path / name).is_file():
            raise DataError(f"Kaldi data dir {path}: no {name}; a data dir holds wav.scp ('<utt-id> <path>' a line) "
                            "and text ('<utt-id> <transcript>' a line)")
    wavs = _read_table(path / "wav.scp", need_value=True)
    texts = _read_table(path / "text", need_value=False)
    spk = _read_table(path / "utt2spk", need_value=True) if (path / "utt2spk").is_file() else {}
    out = []
    for uid, (text, no) in texts.items():
        where = f"{path / 'text'}:{no}"
        if uid not in wavs:
            raise DataError(f"{where}: utterance {uid!r} has no line in wav.scp")
        wav, wno = wavs[uid]
        if wav.rstrip().endswith("|"):
            raise DataError(f"{path / 'wav.scp'}:{wno}: piped commands are not supported ({wav!r}); extract the "
                            "audio to files and list their paths")
        out.append(_utterance(path, wav.strip(), text, None, spk.get(uid, (None,))[0], uid, where, check_files))
    extra = sorted(set(wavs) - set(texts))
    if extra:
        raise DataError(f"Kaldi data dir {path}: {len(extra)} utterance(s) in wav.scp have no transcript in text "
                        f"(first: {extra[0]!r} at wav.scp line {wavs[extra[0]][1]})")
    if not out:
        raise DataError(f"Kaldi data dir {path}: no utterances (text is empty)")
    return out


def write_jsonl(path: str | os.PathLike, utts: Iterable[Utterance | dict]) -> Path:
    """Write a JSONL manifest; audio paths under the manifest's folder are written relative to it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = path.parent.resolve()
    lines = []
    for u in utts:
        row = u._asdict() if isinstance(u, Utterance) else dict(u)
        file = Path(row["audio"])
        try:
            rel = file.resolve().relative_to(root)
        except ValueError:
            rel = file.resolve()
        out = {"audio": str(rel), "text": row["text"]}
        for k in ("duration", "speaker"):
            if row.get(k) is not None:
                out[k] = row[k]
        lines.append(json.dumps(out, ensure_ascii=False))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def apply_vocabulary(utts: Sequence[Utterance], tokenizer, *,
                     oov: Literal["error", "drop", "strip", "unk"] = "error") -> list[Utterance]:
    """Check every transcript against `tokenizer` (a CharTokenizer or WordTokenizer) under the
    `oov` policy (see the module docstring); returns the utterances to use. "drop" and "strip"
    say on stderr how many utterances they changed."""
    if oov not in OOV_POLICIES:
        raise DataError(f"oov must be one of {OOV_POLICIES}, got {oov!r}")
    known = set(tokenizer.tokens[len(tokenizer.specials):])
    word = tokenizer.unit == "word"
    out, changed = [], 0
    for u in utts:
        units = u.text.split() if word else list(u.text)
        bad = [t for t in units if t not in known]
        if not bad:
            out.append(u)
            continue
        if oov == "error":
            kind = "word" if word else "character"
            raise DataError(f"{u.where}: {kind} {bad[0]!r} in {u.text!r} is not in the tokenizer's vocabulary "
                            f"({len(known)} {kind}s); pass --oov drop (leave such utterances out), --oov strip "
                            f"(remove the unknown {kind}s) or --oov unk (map them to <unk>), or build the vocabulary "
                            "from texts that contain it")
        changed += 1
        if oov == "unk":
            out.append(u)
        elif oov == "strip":
            text = _normalize((" " if word else "").join(t for t in units if t in known))
            if text:
                out.append(u._replace(text=text))
    if changed and oov != "unk":
        print(f"[asr] --oov {oov}: {changed} of {len(utts)} utterance(s) had tokens outside the vocabulary "
              f"({'left out' if oov == 'drop' else 'cleaned'}); {len(out)} kept", file=sys.stderr)
    if not out:
        raise DataError(f"no utterances left after --oov {oov}: every transcript had tokens outside the vocabulary")
    return out


def feature_key(data: bytes, frontend: FrontendConfig, speed: float = 1.0) -> str:
    """The cache key of one audio file's features: sha256 of its bytes, the front end's config,
    the speed factor and the feature version (hex)."""
    h = hashlib.sha256()
    meta = [_FEATURE_VERSION, dataclasses.asdict(frontend)] + ([] if speed == 1.0 else [float(speed)])
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    h.update(data)
    return h.hexdigest()


def _compute(data: bytes, u: Utterance, frontend: FrontendConfig, speed: float) -> tuple[torch.Tensor, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", audio_lib.TruncatedAudioWarning)
        try:
            if data[:4] == b"RIFF":
                wav, sr = audio_lib.decode_wav(data, name=str(u.audio))
            else:
                wav, sr = audio_lib.read_audio(u.audio)
        except audio_lib.TruncatedAudioWarning as w:
            raise DataError(f"{u.where}: {w}; re-export the file or remove the line") from None
        except DataError as e:
            raise DataError(f"{u.where}: unreadable audio: {e}") from None
    if speed != 1.0:  # play the samples at speed x sr: tempo and pitch both scale by `speed` (Ko et al., 2015)
        wav = audio_lib.resample(wav, round(sr * speed), sr)
    seconds = wav.numel() / sr
    if sr != frontend.sample_rate:
        wav = audio_lib.resample(wav, sr, frontend.sample_rate)
    if num_frames(wav.numel(), frontend) < 1:
        raise DataError(f"{u.where}: {u.audio.name} lasts {seconds * 1000:.1f} ms, too short for one feature frame "
                        f"({frontend.win_ms:g} ms window); remove the line")
    return frontend_features(wav, frontend), seconds


def load_features(utts: Sequence[Utterance], frontend: FrontendConfig, *, cache_dir: Path | None,
                  speed: float = 1.0) -> list[tuple[torch.Tensor, float]]:
    """`(features [T, F] float32, seconds of audio)` of every utterance, through the content-keyed
    cache under `cache_dir / "features"` (None: computed every time).

    `speed` != 1 gives speed-perturbed features (Ko et al., "Audio augmentation for speech
    recognition", 2015): the waveform is resampled from `round(speed * sr)` Hz to `sr`, so it
    plays `speed` times faster (0.9: 11% longer, lower pitch).

    Raises: DataError naming the manifest line for a file that is unreadable, not audio, truncated,
        or too short for one frame.
    """
    root = None if cache_dir is None else Path(cache_dir) / "features"
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # per-utterance tensors are small; one thread is faster on a busy machine
    try:
        out = []
        for u in utts:
            try:
                data = u.audio.read_bytes()
            except FileNotFoundError:
                raise DataError(f"{u.where}: audio file {u.audio} not found") from None
            except OSError as e:
                raise DataError(f"{u.where}: cannot read audio file {u.audio} ({e.strerror or e})") from None
            if not data:
                raise DataError(f"{u.where}: audio file {u.audio} is empty (0 bytes); remove the line or "
                                "replace the file")
            file = None
            if root is not None:
                key = feature_key(data, frontend, speed)
                file = root / key[:2] / f"{key}.npz"
                if file.is_file():
                    try:
                        with np.load(file) as z:
                            out.append((torch.from_numpy(z["features"]), float(z["seconds"])))
                        continue
                    except (OSError, ValueError, KeyError):
                        pass  # a damaged cache entry is recomputed and rewritten
            feats, seconds = _compute(data, u, frontend, speed)
            if file is not None:
                file.parent.mkdir(parents=True, exist_ok=True)
                tmp = file.with_name(f".{file.stem}.tmp-{os.getpid()}.npz")
                try:
                    np.savez(tmp, features=feats.numpy(), seconds=np.float64(seconds))
                    os.replace(tmp, file)
                finally:
                    tmp.unlink(missing_ok=True)
            out.append((feats, seconds))
        return out
    finally:
        torch.set_num_threads(before)
