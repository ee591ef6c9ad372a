"""Tested docs: the commands and snippets of README.md and docs/*.md run, and say what they do.

Which blocks run (the convention, also in docs/WALKTHROUGH.md, "Runnable blocks"). A fenced
block's info string says what the test does with it; GitHub highlights it by its first word:

    ```bash runnable     every line is a shell command that must succeed (exit 0)
    ```bash fails        one command that must exit with status 2 and print, as the last line
                         of its stderr, the text of the ```text block that follows
    ```python runnable   executed as it is; it must not raise
    ```python raises     executed; it must raise, and `Type: message` must equal the text of
                         the ```text block that follows

Any other block (```bash, ```python, ```text, ...) is an illustration and is not run.

Commands. One per line; a trailing backslash continues a line, `#` starts a comment, leading
`VAR=value` words set environment variables. Every command runs in a scratch folder that holds
the example inputs the docs use: `data/my_pairs/` and `data/cells/` (folder datasets of 32x32
shapes), `images/` and `masks/` (the same kind of pairs), `clip.wav` and `speech.wav` (a
synthesized digit string), `feats.npy` and `feats.safetensors` (its `[T, 80]` features).
Placeholders name a run this test trained: `RUN`, `<run>`, and a path component `<time>-<id>`
(`runs/seg-unet/<time>-<id>`: the latest run under `runs/seg-unet/` if there is one, else
the test's own) stand for a segmentation run for `seg_*.py` scripts and a speech ASR run for
`asr_*.py` ones; `RUN/checkpoints/step_00001000` becomes one of that run's checkpoints.

Training is shortened by appending, per script, the flags in `OVERRIDES` (the last value of a
repeated flag wins): `seg_train.py` gets `--steps 2 --eval-every 2 --batch-size 4
--val-size 8`, and so on. A runnable command of a script without an entry is an error: add
the entry, or leave the block unmarked.

Two stages. The default stage runs every `python experiments/<script>.py ...` command in this
process, through the script's own `main(argv)` (the same code path without the interpreter
start-up, which costs seconds per command on 2 cores). The `slow` stage runs every runnable
command as a real shell command in a subprocess, `torchrun` included, and every ablation group
of experiments/ablations.py in its `--smoke` mode.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_PROCESS_SCRIPT = re.compile(r"^experiments/[a-z_]+\.py$")

# Tiny overrides per script, appended after the documented flags.
OVERRIDES: dict[str, tuple[str, ...]] = {
    "experiments/seg_train.py": ("--steps", "2", "--eval-every", "2", "--batch-size", "4", "--val-size", "8"),
    "experiments/asr_train.py": ("--steps", "2", "--eval-every", "2", "--batch-size", "4", "--num-train", "8",
                                 "--num-val", "4", "--num-test", "4"),
    "experiments/seg_eval.py": (),
    "experiments/seg_infer.py": (),
    "experiments/asr_eval.py": ("--num-test", "4"),
    "experiments/asr_infer.py": (),
    "experiments/summarize.py": (),
    "experiments/ablations.py": ("--smoke", "--runs-dir", "ablations"),
    "experiments/main.py": ("--seg.steps", "2", "--seg.eval-every", "2", "--seg.batch-size", "4", "--seg.val-size",
                            "8", "--asr.steps", "2", "--asr.eval-every", "2", "--asr.batch-size", "4",
                            "--asr.num-train", "8", "--asr.num-val", "4", "--asr.num-test", "4", "--overlays", "2"),
}

# The modules whose public functions take or return tensors: docs/CONTRACTS.md has a contract
# for each of their public functions and classes. (Docstrings are checked in every module.)
CONTRACT_MODULES = [
    "funcml.seg.task", "funcml.seg.unet", "funcml.seg.hybrid", "funcml.seg.losses", "funcml.seg.metrics",
    "funcml.seg.transforms", "funcml.seg.shapes", "funcml.seg.folder", "funcml.seg.viz", "funcml.seg.masks",
    "funcml.seg.patches", "funcml.seg.deform", "funcml.seg.intensity", "funcml.seg.sliding",
    "funcml.asr.task", "funcml.asr.paraformer", "funcml.asr.encoder", "funcml.asr.cif", "funcml.asr.decoder",
    "funcml.asr.batching", "funcml.asr.frontend", "funcml.asr.tokenizer", "funcml.asr.toy", "funcml.asr.metrics",
    "funcml.asr.speech", "funcml.asr.audio", "funcml.asr.viz", "funcml.asr.manifest", "funcml.asr.augment",
    "funcml.asr.longform", "funcml.seg.segmenter", "funcml.asr.recognizer", "funcml.export", "funcml.trainer",
    "funcml.seg.data", "funcml.seg.predict", "funcml.asr.data",
    "funcml.random", "funcml.tree", "funcml.checks", "funcml.devices", "funcml.nn.layers", "funcml.nn.norm", "funcml.nn.attention",
    "funcml.nn.transformer", "funcml.nn.posenc", "funcml.nn.model", "funcml.nn.bridge", "funcml.nn.ensemble",
    "funcml.nn.init", "funcml.nn.reference", "funcml.optim", "funcml.train.step", "funcml.train.state",
]


# ------------------------------------------------------------------------------ parsing


class Block(NamedTuple):
    """A fenced code block: where it starts (1-based line of the opening fence), its info string, its text."""

    path: Path
    line: int
    info: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def kind(self) -> str:
        return " ".join(self.info.split()[:2])


class Command(NamedTuple):
    """One shell command of a runnable block."""

    where: str
    text: str
    env: dict[str, str]
    words: list[str]

    @property
    def script(self) -> str | None:
        """`experiments/x.py` when the command is `python experiments/x.py ...`, else None."""
        if len(self.words) >= 2 and self.words[0] in ("python", "python3") and _PROCESS_SCRIPT.match(self.words[1]):
            return self.words[1]
        return None

    @property
    def args(self) -> list[str]:
        return self.words[2:]


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced block (``` or ~~~, up to 3 spaces of indent) of a Markdown file."""
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^ {0,3}(`{3,}|~{3,})(.*)$", lines[i])
        if not m:
            i += 1
            continue
        fence, info, start = m.group(1), m.group(2).strip(), i
        body = []
        i += 1
        while i < len(lines) and not re.match(rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$", lines[i]):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"{path.relative_to(ROOT)}:{start + 1}: the code block is never closed")
        out.append(Block(path, start + 1, info, "\n".join(body)))
        i += 1
    return out


def _all_blocks() -> list[Block]:
    return [b for path in DOC_FILES for b in fenced_blocks(path)]


def parse_commands(block: Block) -> list[Command]:
    """The commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    logical, current, first = [], "", None
    for n, raw in enumerate(block.text.splitlines(), start=block.line + 1):
        line = raw.rstrip()
        if first is None:
            first = n
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip() and not current.strip().startswith("#"):
            logical.append((first, current.strip()))
        current, first = "", None
    commands = []
    for n, text in logical:
        words = shlex.split(text, comments=True)
        env = {}
        while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
            name, _, value = words.pop(0).partition("=")
            env[name] = value
        commands.append(Command(f"{block.path.relative_to(ROOT)}:{n}", text, env, words))
    return commands


def _blocks_of(kind: str) -> list[Block]:
    return [b for b in _all_blocks() if b.kind == kind]


def _runnable_commands() -> list[Command]:
    return [c for b in _blocks_of("bash runnable") for c in parse_commands(b)]


def _expected_text(block: Block) -> str:
    """The ```text block right after `block` (the expected error)."""
    blocks = fenced_blocks(block.path)
    nxt = [b for b in blocks if b.line > block.line]
    assert nxt and nxt[0].info.split()[:1] == ["text"], (
        f"{block.where}: a `{block.kind}` block must be followed by a ```text block with the expected error")
    return nxt[0].text.strip()


# ------------------------------------------------------------------------------ running


_SCRIPTS: dict[str, ModuleType] = {}


def load_script(script: str) -> ModuleType:
    """Import `experiments/x.py` (not a package) once, as a module."""
    if script not in _SCRIPTS:
        name = "_docs_" + Path(script).stem
        spec = importlib.util.spec_from_file_location(name, ROOT / script)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        _SCRIPTS[script] = module
    return _SCRIPTS[script]


class Result(NamedTuple):
    code: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def _inside(workspace: Path, env: dict[str, str]):
    """cwd = workspace, `env` set, torch threads restored afterwards."""
    old_cwd, old_env, threads = Path.cwd(), {k: os.environ.get(k) for k in env}, torch.get_num_threads()
    os.chdir(workspace)
    os.environ.update(env)
    try:
        yield
    finally:
        os.chdir(old_cwd)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        torch.set_num_threads(threads)


def run_in_process(script: str, argv: list[str], workspace: Path, env: dict[str, str] | None = None) -> Result:
    """`python <script> <argv>` through the script's `main(argv)`, in `workspace`."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with _inside(workspace, env or {}), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            load_script(script).main(list(argv))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return Result(code, out.getvalue(), err.getvalue())


def _is_run(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _app(script: str) -> str:
    name = Path(script).stem
    if name.startswith("seg_"):
        return "seg"
    if name.startswith("asr_"):
        return "asr"
    raise AssertionError(f"{script}: a run placeholder needs a seg_* or asr_* script")


def substitute(word: str, script: str, workspace: Path, runs: dict[str, Path]) -> str:
    """Replace a run placeholder in one argument by a real run (see the module docstring)."""
    parts = word.split("/")
    marks = [i for i, p in enumerate(parts) if p in ("RUN", "<run>") or "<time>-<id>" in p]
    if not marks:
        return word
    i = marks[0]
    prefix, rest = parts[:i], parts[i + 1:]
    run = None
    if prefix:
        found = sorted(p for p in (workspace / Path(*prefix)).glob("*") if _is_run(p))
        run = found[-1] if found else None
    run = run or runs[_app(script)]
    path = run.joinpath(*rest) if rest else run
    if not path.exists() and len(rest) >= 2 and rest[0] == "checkpoints" and rest[1].startswith("step_"):
        path = sorted((run / "checkpoints").glob("step_*"))[-1].joinpath(*rest[2:])
    return str(path)


def prepared_argv(cmd: Command, workspace: Path, runs: dict[str, Path]) -> list[str]:
    """The command's arguments with placeholders replaced and the script's overrides appended."""
    script = cmd.script or next((w for w in cmd.words if _PROCESS_SCRIPT.match(w)), None)
    assert script in OVERRIDES, (
        f"{cmd.where}: `{cmd.text}` is marked runnable but the docs test has no tiny overrides for {script}; "
        "add an entry to OVERRIDES in tests/test_docs.py or leave the block unmarked")
    args = cmd.args if cmd.script else cmd.words
    out = [substitute(w, script, workspace, runs) for w in args]
    left = [w for w in out if re.search(r"<[a-z_-]+>", w)]
    assert not left, f"{cmd.where}: unknown placeholder in {left}; see tests/test_docs.py for the ones it knows"
    return out + list(OVERRIDES[script])


def _make_workspace(root: Path) -> tuple[Path, dict[str, Path]]:
    """The scratch folder with the example inputs, and one trained run per application."""
    from funcml import random
    from funcml.asr import audio, frontend, speech
    from funcml.seg.folder import write_example_folder
    from funcml.seg.shapes import ShapesConfig

    ws = root / "ws"
    ws.mkdir()
    shapes = ShapesConfig(height=32, width=32, objects=(1, 2), size=(0.2, 0.35))
    write_example_folder(ws / "data" / "my_pairs", random.key(1), 6, shapes)
    write_example_folder(ws / "data" / "cells", random.key(2), 4, shapes)
    write_example_folder(ws, random.key(3), 3, shapes)  # images/ and masks/
    wave, sr = speech.synthesize("four two seven", voice="en+f3", rate=160)
    wave = audio.resample(wave, sr, 16000)
    for name in ("clip.wav", "speech.wav"):
        audio.write_wav(ws / name, wave, 16000)
    feats = frontend.features(wave, frontend.FrontendConfig())
    np.save(ws / "feats.npy", feats.numpy())
    from safetensors.torch import save_file

    save_file({"features": feats.contiguous()}, str(ws / "feats.safetensors"))

    runs = {}
    for app, script, args in (("seg", "experiments/seg_train.py", ["tiny", "--experiment", "docs-seg"]),
                              ("asr", "experiments/asr_train.py", ["speech", "--experiment", "docs-asr",
                                                                    "--model.encoder.num-layers", "1"])):
        res = run_in_process(script, [*args, *OVERRIDES[script]], ws)
        assert res.code == 0, f"training the docs' {app} run failed:\n{res.stdout}\n{res.stderr}"
        (run,) = [p for p in (ws / "runs" / f"docs-{app}").iterdir() if _is_run(p)]
        runs[app] = run
    return ws, runs


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    return _make_workspace(tmp_path_factory.mktemp("docs"))


def _params(items: list, where=lambda x: x.where) -> list:
    return [pytest.param(x, id=where(x)) for x in items]


# ------------------------------------------------------------------------------ the docs run


@pytest.mark.parametrize("cmd", _params([c for c in _runnable_commands() if c.script]))
def test_runnable_command_succeeds_shortened(cmd: Command, workspace):
    ws, runs = workspace
    res = run_in_process(cmd.script, prepared_argv(cmd, ws, runs), ws, cmd.env)
    assert res.code == 0, f"{cmd.where}: `{cmd.text}` exited with {res.code}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"


@pytest.mark.parametrize("block", _params(_blocks_of("bash fails")))
def test_failing_command_prints_the_documented_error(block: Block, workspace):
    ws, runs = workspace
    (cmd,) = parse_commands(block)
    assert cmd.script is not None, f"{block.where}: a `bash fails` block holds one `python experiments/x.py` command"
    argv = [substitute(w, cmd.script, ws, runs) for w in cmd.args]
    res = run_in_process(cmd.script, argv, ws, cmd.env)
    assert res.code == 2, f"{block.where}: expected exit status 2, got {res.code}\n{res.stderr[-2000:]}"
    assert res.stderr.strip().splitlines()[-1] == _expected_text(block)


def exec_snippet(block: Block) -> None:
    """Execute a Python block as the body of a fresh module (so that dataclasses and pickling
    find it in sys.modules), printing nothing."""
    name = f"_docs_snippet_{block.path.stem}_{block.line}"
    module = ModuleType(name)
    sys.modules[name] = module
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(block.text, block.where, "exec"), module.__dict__)
    finally:
        del sys.modules[name]


@pytest.mark.parametrize("block", _params(_blocks_of("python runnable")))
def test_python_snippet_runs(block: Block, workspace):
    ws, _ = workspace
    with _inside(ws, {}):
        exec_snippet(block)


@pytest.mark.parametrize("block", _params(_blocks_of("python raises")))
def test_python_snippet_raises_the_documented_error(block: Block, workspace):
    ws, _ = workspace
    with _inside(ws, {}), pytest.raises(Exception) as info:
        exec_snippet(block)
    assert f"{info.type.__name__}: {info.value}" == _expected_text(block)


# ------------------------------------------------------------------------------ the docs agree with the code


def test_every_runnable_command_has_tiny_overrides():
    bad = [f"{c.where}: {c.text}" for c in _runnable_commands()
           if (c.script or next((w for w in c.words if _PROCESS_SCRIPT.match(w)), None)) not in OVERRIDES]
    assert not bad, "runnable commands without an OVERRIDES entry in tests/test_docs.py:\n" + "\n".join(bad)


def test_ablations_doc_lists_every_command_the_script_runs():
    ablations = load_script("experiments/ablations.py")
    text = (ROOT / "docs" / "ABLATIONS.md").read_text()
    missing = [c for name in ablations.GROUPS for c in ablations.commands(name, Path("/tmp/funcml-ablations"))
               if c not in text]
    assert not missing, "docs/ABLATIONS.md lacks these commands of `experiments/ablations.py --list " \
                        "--runs-dir /tmp/funcml-ablations`:\n" + "\n".join(missing)


def _public_callables(module_name: str) -> list[tuple[str, Any]]:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", [])
    return [(n, getattr(module, n)) for n in names if inspect.isfunction(getattr(module, n))
            or inspect.isclass(getattr(module, n))]


def test_contracts_doc_names_every_public_function_and_class():
    text = (ROOT / "docs" / "CONTRACTS.md").read_text()
    missing = [f"{m}.{n}" for m in CONTRACT_MODULES for n, _ in _public_callables(m) if f"`{n}" not in text]
    assert not missing, "docs/CONTRACTS.md has no contract for:\n" + "\n".join(missing)


def _all_modules() -> list[str]:
    import pkgutil

    import funcml

    return ["funcml", *(m.name for m in pkgutil.walk_packages(funcml.__path__, "funcml."))]


def test_every_public_function_and_method_has_a_docstring():
    missing = set()
    for m in _all_modules():
        for _, obj in _public_callables(m):
            where = f"{obj.__module__}.{obj.__qualname__}"
            if not (obj.__doc__ or "").strip():
                missing.add(where)
            if inspect.isclass(obj):
                missing |= {f"{where}.{k}" for k, v in vars(obj).items()
                            if not k.startswith("_") and inspect.isfunction(v) and not (v.__doc__ or "").strip()}
    assert not missing, "public callables without a docstring:\n" + "\n".join(sorted(missing))


def test_help_of_funcml_random_explains_keys():
    import pydoc

    import funcml

    text = pydoc.render_doc(funcml.random, renderer=pydoc.plaintext)
    for name in ("key(", "split(", "fold_in(", "normal(", "Threefry"):
        assert name in text


# ------------------------------------------------------------------------------ the Markdown renders


def _table_cells(line: str) -> int:
    # A | inside inline code is not a column; a code span closes on a backtick run of its own length.
    body = re.sub(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", "x", line.strip())
    body = body.replace("\\|", "x")
    return body.strip("|").count("|") + 1


_SEPARATOR = re.compile(r"^\|(\s*:?-+:?\s*\|)+\s*$")


@pytest.mark.parametrize("path", _params(DOC_FILES, where=lambda p: str(p.relative_to(ROOT))))
def test_markdown_tables_have_one_cell_per_column(path: Path):
    lines, in_code, width, problems = path.read_text().splitlines(), False, None, []
    for i, line in enumerate(lines):
        if re.match(r"^ {0,3}(`{3,}|~{3,})", line):
            in_code, width = not in_code, None
            continue
        if in_code or not line.startswith("|"):
            width = None
            continue
        if width is None:
            if i + 1 < len(lines) and _SEPARATOR.match(lines[i + 1]):
                width = _table_cells(line)
            else:
                problems.append(f"{path.name}:{i + 1}: a table row without a header and a |---| line")
            continue
        if _table_cells(line) != width:
            problems.append(f"{path.name}:{i + 1}: {_table_cells(line)} cells, the header has {width}")
    assert not problems, "\n".join(problems)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("path", _params(DOC_FILES, where=lambda p: str(p.relative_to(ROOT))))
def test_links_point_to_files_and_headings_that_exist(path: Path):
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+://|^mailto:", link):
            continue
        target, _, anchor = link.partition("#")
        file = (path.parent / target) if target else path
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in _anchors(file)):
            broken.append(link)
    assert not broken, f"{path.name}: broken links {broken}"


# ------------------------------------------------------------------------------ slow: real processes


def _shell_line(cmd: Command, workspace: Path, runs: dict[str, Path]) -> str:
    """The command as a shell line: scripts by absolute path, placeholders and overrides applied."""
    argv = prepared_argv(cmd, workspace, runs)
    head = cmd.words[:2] if cmd.script else []
    words = [str(ROOT / w) if _PROCESS_SCRIPT.match(w) else w for w in head]
    if not cmd.script:
        argv = [str(ROOT / w) if _PROCESS_SCRIPT.match(w) else w for w in argv]
    return shlex.join([*words, *argv])


@pytest.mark.slow
@pytest.mark.parametrize("cmd", _params(_runnable_commands()))
def test_runnable_command_succeeds_as_a_process(cmd: Command, workspace):
    ws, runs = workspace
    env = {**os.environ, "OMP_NUM_THREADS": "1", **cmd.env,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    line = _shell_line(cmd, ws, runs)
    assert shutil.which(cmd.words[0], path=env["PATH"]), f"{cmd.where}: {cmd.words[0]} is not installed"
    res = subprocess.run(["bash", "-c", line], cwd=ws, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"{cmd.where}: `{line}` exited with {res.returncode}\n{res.stdout[-3000:]}\n" \
                                f"{res.stderr[-3000:]}"


@pytest.mark.slow
def test_every_ablation_group_runs_in_smoke_mode(tmp_path, monkeypatch):
    # The compile group checks that its command works; inductor's code generation (minutes on
    # a cold cache) is tested by the compile tests, so trace with aot_eager here.
    monkeypatch.setenv("FUNCML_COMPILE_BACKEND", "aot_eager")
    res = run_in_process("experiments/ablations.py", ["all", "--smoke", "--runs-dir", str(tmp_path)], tmp_path)
    assert res.code == 0, res.stderr[-3000:]
    ablations = load_script("experiments/ablations.py")
    for name in ablations.GROUPS:
        assert (tmp_path / f"summary-{name}" / "summary.md").is_file()
