"""Progress reporting: a bar in a terminal, plain lines with loss, validation and ETA anywhere else."""

from __future__ import annotations

import io

import torch

from funcml import optim, random
from funcml.train import fit, init_train_state, make_train_step
from funcml.train.progress import Progress, format_seconds


def test_format_seconds_reads_as_a_clock():
    assert format_seconds(0) == "0:00"
    assert format_seconds(75.2) == "1:15"
    assert format_seconds(3725) == "1:02:05"
    assert format_seconds(float("nan")) == "?"


def test_lines_when_not_a_terminal_show_step_loss_eval_best_and_eta():
    out = io.StringIO()  # not a tty
    p = Progress(100, desc="demo", stream=out, every_s=0.0)
    p.train(10, loss=0.5, items_per_s=32.0)
    p.eval(50, {"val/miou": 0.8, "val/acc": 0.9}, best=("val/miou", 0.8, 50))
    p.train(100, loss=0.25)
    p.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[demo] step 10/100 (10%) loss 0.5000 | 32 items/s | elapsed ")
    assert "| eta " in lines[0]
    assert lines[1].startswith("[demo] eval at step 50: val/miou 0.8000 (best 0.8000 at step 50) | val/acc 0.9000")
    assert lines[2].startswith("[demo] step 100/100 (100%) loss 0.2500")
    assert "\r" not in out.getvalue()


def test_lines_are_throttled_except_the_last_step():
    out = io.StringIO()
    p = Progress(100, desc="demo", stream=out, every_s=3600.0)
    for step in range(10, 101, 10):
        p.train(step, loss=1.0)
    assert [line.split(" loss")[0] for line in out.getvalue().splitlines()] == ["[demo] step 10/100 (10%)",
                                                                                "[demo] step 100/100 (100%)"]


def test_disabled_progress_prints_nothing():
    out = io.StringIO()
    p = Progress(10, stream=out, enabled=False, bar=False, every_s=0.0)
    p.train(10, loss=1.0)
    p.eval(10, {"val/x": 1.0})
    p.message("hello")
    assert out.getvalue() == ""


def test_fit_prints_progress_lines_with_the_best_validation_metric(capsys):
    w0 = {"w": torch.zeros(3)}
    target = torch.tensor([1.0, -2.0, 0.5])

    def loss_fn(params, model_state, batch, key):
        loss = ((params["w"] - target) ** 2).sum()
        return loss, ({"loss": loss}, model_state)

    ts = init_train_state(w0, {}, optim.sgd(0.1), random.key(0))
    step = make_train_step(loss_fn, optim.sgd(0.1), compile=False)
    values = iter([0.3, 0.7, 0.5, 0.6])

    from funcml.train import EarlyStop
    fit(ts, step, lambda i: {}, num_steps=8, eval_fn=lambda ts: {"val/acc": next(values)}, eval_every=2,
        log_every=2, progress=True, desc="toy", early_stop=EarlyStop("val/acc", patience=10))
    err = capsys.readouterr().err  # captured: not a terminal, so lines
    evals = [line for line in err.splitlines() if line.startswith("[toy] eval")]
    assert len(evals) == 4
    assert "val/acc 0.5000 (best 0.7000 at step 4)" in evals[2]
    assert "val/acc 0.6000 (best 0.7000 at step 4)" in evals[3]
    assert any(line.startswith("[toy] step 8/8 (100%) loss ") for line in err.splitlines())
