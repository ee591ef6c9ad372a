"""funcml's U-Net train step against MONAI's, side by side in one process.

    python benchmarks/bench_vs_monai.py --threads 1                     # CPU, every variant (cold compiles: minutes)
    python benchmarks/bench_vs_monai.py --quick                         # smoke size, seconds (eager) to a minute
    python benchmarks/bench_vs_monai.py --variants funcml-eager monai-basic-eager
    python benchmarks/bench_vs_monai.py --device cuda --precision bf16  # on a GPU machine (auto picks it)

MONAI is a benchmark-only dependency: `pip install 'funcml[bench]'` (monai==1.6.1).

Every variant computes one training step of a 2D U-Net on the same batch, `x: [B, 1, S, S]`
(B=16, S=64 by default) with targets `y: [B, S, S]` in `[0, K)`:

    logits = U-Net(x) in train mode (BatchNorm batch statistics, new running statistics)
    loss = CE(logits, y) + (1 - mean_k Dice_k),   Dice_k = (2 sum p_k g_k + 1) / (sum p_k + sum g_k + 1)
           (p = softmax(logits), g = one-hot(y), sums over the batch and the pixels)
    AdamW(lr, betas (0.9, 0.999), eps 1e-8, weight decay on ndim >= 2 tensors only)

Variants (`--variants`):

    funcml-eager          funcml.seg.unet.UNetConfig(depth=4, base_width=w), funcml.seg.losses.ce_dice_loss,
                          funcml.optim.adamw, funcml.train.make_train_step(compile=False)
    funcml-compiled       the same step with compile=True (funcml.compiler, backend $FUNCML_COMPILE_BACKEND)
    monai-basic-eager     monai.networks.nets.BasicUNet(features=(w, 2w, 4w, 8w, 16w, w), norm batch, ReLU, no conv
                          bias), monai.losses.DiceCELoss(to_onehot_y, softmax, batch=True, smooth_nr=smooth_dr=1),
                          torch.optim.AdamW (two parameter groups; `--torch-adamw`, default fused)
    monai-basic-compiled  the same with the forward + loss under torch.compile (same backend); on torch 2.13 this
                          fails (UpCat's replicate padding), and the error is recorded instead of a timing
    monai-unet-eager      monai.networks.nets.UNet(channels=(w .. 16w), strides 2, num_res_units=2, norm batch, ReLU)
    monai-unet-compiled   the same under torch.compile

Same architecture (funcml vs BasicUNet): 5 levels of two 3x3 conv -> BatchNorm -> ReLU blocks, 2x2 max
pooling, 2x2 stride-2 transposed-conv up-sampling, skip first in the concatenation, a 1x1 head. What
differs: BasicUNet's last up-sampling keeps 2w channels (`halves=False`), so its last block reads 3w
channels where funcml's reads 2w (+0.2% parameters at w=16; the JSON lists both counts and a layer
inventory); funcml computes channels-last, MONAI in torch's default layout. monai UNet is a different
network (strided-conv down-sampling from the first layer, residual units, 3x3 transposed convs): fewer
FLOPs per step, compared as the peer's other stock U-Net.

Every step on every side reads its loss on the host once (funcml's step does, to stop at a
non-finite loss). All variants and the two matmul peaks are built first, then timed round-robin
(`common.time_interleaved`: one call of each per round, the order rotating), so load from other
jobs on a shared machine falls on all alike. Reported: median ms/step, its spread (quartiles),
speed-ups as ratios of medians `t_monai / t_funcml` (above 1: funcml is faster) with the quartiles
of the per-round ratio, and achieved FLOP/s: the FLOPs of one eager step of each architecture
(`FlopCounterMode`: convolutions forward and backward; elementwise work not counted) over the median
time, as a fraction of the measured `torch.mm` peak (n x n) of the step's precision: fp32, and bf16
where the device multiplies it natively (a CPU without AVX512-BF16 / AMX emulates it about 100x slower
than fp32; it is then measured only for `--precision bf16`, at n <= 512). A compiled variant's first two
calls (compile included) are timed separately and never enter the step time.

Writes `--out`, by default a fresh `benchmarks/results/bench_vs_monai-<time>.json`.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_train_step import compile_cost  # noqa: E402
from benchmarks.common import (fresh_results_path, machine_info, markdown_table, start, time_interleaved,  # noqa: E402
                               write_json)
from funcml import compiler, optim, random, tree  # noqa: E402
from funcml.errors import ConfigError, cli_main  # noqa: E402
from funcml.nn import model as models  # noqa: E402
from funcml.seg.losses import ce_dice_loss  # noqa: E402
from funcml.seg.unet import UNetConfig  # noqa: E402
from funcml.train import init_train_state, make_train_step  # noqa: E402

VARIANTS = ("funcml-eager", "funcml-compiled", "monai-basic-eager", "monai-basic-compiled", "monai-unet-eager",
            "monai-unet-compiled")
_ARCH = {"funcml-eager": "funcml", "funcml-compiled": "funcml", "monai-basic-eager": "monai-basic",
         "monai-basic-compiled": "monai-basic", "monai-unet-eager": "monai-unet", "monai-unet-compiled": "monai-unet"}
_EAGER = {"funcml": "funcml-eager", "monai-basic": "monai-basic-eager", "monai-unet": "monai-unet-eager"}
_QUICK = dict(batch_size=2, image_size=32, base_width=4, warmup=1, repeat=3, matmul_size=128)
_FULL = dict(batch_size=16, image_size=64, base_width=16, warmup=3, repeat=15)
DEPTH = 4
"""Poolings: widths w, 2w, 4w, 8w and the bottleneck 16w (MONAI BasicUNet's fixed five levels)."""


@dataclasses.dataclass(frozen=True)
class MonaiBenchConfig:
    """funcml U-Net train step vs MONAI's (see the module docstring)."""

    variants: tuple[str, ...] = VARIANTS
    """Which steps to time: funcml-eager, funcml-compiled, monai-basic-eager, monai-basic-compiled, monai-unet-eager,
    monai-unet-compiled."""
    quick: bool = False
    """Smoke size: B=2, 32x32, widths 4..64, 1 warm-up, 3 rounds, 128x128 matmul (fields given explicitly win)."""
    batch_size: int | None = None
    """Images per step (default 16; 2 with --quick)."""
    image_size: int | None = None
    """Side S of the square 1-channel inputs, a multiple of 16 (default 64; 32 with --quick)."""
    base_width: int | None = None
    """w: the widths are w, 2w, 4w, 8w, 16w (default 16, i.e. 16..256; 4 with --quick)."""
    num_classes: int = 2
    """K, the classes of the targets and the logits' channels."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """fp32, or bf16 autocast on both sides (params stay fp32)."""
    lr: float = 1e-3
    """AdamW learning rate (constant)."""
    weight_decay: float = 1e-2
    """AdamW decoupled weight decay, on ndim >= 2 tensors only (both sides)."""
    torch_adamw: Literal["fused", "foreach", "for-loop"] = "fused"
    """torch.optim.AdamW implementation on the MONAI side (fused: the kernel funcml's eager AdamW also runs)."""
    unet_res_units: int = 2
    """num_res_units of monai.networks.nets.UNet (2: two 3x3 convs per down stage, as the U-Nets above)."""
    warmup: int | None = None
    """Untimed steps of each variant before the timing (default 3; 1 with --quick)."""
    repeat: int | None = None
    """Timed rounds, one call of each variant per round (default 15; 3 with --quick)."""
    matmul_size: int | None = None
    """n of the n x n torch.mm whose rate is the peak (default 2048 on CPU, 8192 on CUDA; 128 with --quick)."""
    device: str = "auto"
    """Torch device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N"."""
    threads: int = 1
    """torch intra-op threads (0: torch's default)."""
    seed: int = 0
    """Seed of the batch, funcml's init key and torch's global RNG (MONAI's init)."""
    out: Path | None = None
    """The JSON file to write (default: a fresh `benchmarks/results/bench_vs_monai-<time>.json`)."""


def _resolved(cfg: MonaiBenchConfig, device: torch.device) -> MonaiBenchConfig:
    """cfg with every None field filled: --quick sizes, else the full ones; the matmul size by device."""
    sizes = dict(_FULL, matmul_size=8192 if device.type == "cuda" else 2048) | (_QUICK if cfg.quick else {})
    cfg = dataclasses.replace(cfg, **{k: v for k, v in sizes.items() if getattr(cfg, k) is None})
    unknown = [v for v in cfg.variants if v not in VARIANTS]
    if unknown or not cfg.variants:
        raise ConfigError(f"--variants: unknown {unknown or 'empty list'}; choose among {', '.join(VARIANTS)}")
    for name in ("batch_size", "image_size", "base_width", "num_classes", "repeat", "matmul_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.warmup < 0:
        raise ConfigError(f"--warmup must be >= 0, got {cfg.warmup}")
    if cfg.num_classes < 2:
        raise ConfigError(f"--num-classes must be >= 2 (softmax Dice + CE), got {cfg.num_classes}")
    if cfg.image_size % 2**DEPTH:
        raise ConfigError(f"--image-size {cfg.image_size} must be a multiple of {2**DEPTH} (four 2x2 poolings), "
                          f"e.g. {max(2**DEPTH, cfg.image_size // 2**DEPTH * 2**DEPTH)}")
    return cfg


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


# --------------------------------------------------------------------------- the steps


@dataclasses.dataclass
class Variant:
    """One ready step: `fn()` runs a training step and returns the loss (a float)."""

    name: str
    """One of VARIANTS."""
    fn: Callable[[], float]
    """One training step (its state threaded from call to call); returns the loss."""
    params: int
    """Trained parameters of the network."""
    first_calls: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Compiled variants: `compile_cost`'s first two calls (compile_s, second_call_s, graphs_compiled)."""


def _batch(cfg: MonaiBenchConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """x: `[B, 1, S, S]` standard normal; y: `[B, S, S]` int64 class ids, uniform in `[0, K)`."""
    k_x, k_y = random.split(random.fold_in(random.key(cfg.seed, device=device), "data"))
    shape = (cfg.batch_size, cfg.image_size, cfg.image_size)
    x = random.normal(k_x, (cfg.batch_size, 1, cfg.image_size, cfg.image_size))
    return x, random.randint(k_y, shape, 0, cfg.num_classes)


def funcml_unet_config(cfg: MonaiBenchConfig) -> UNetConfig:
    """funcml's U-Net of the comparison: depth 4, BatchNorm, ReLU, transposed-conv up-sampling."""
    return UNetConfig(in_channels=1, num_classes=cfg.num_classes, depth=DEPTH, base_width=cfg.base_width, norm="batch",
                      activation="relu", upsample="transpose", pad_mode="reject")


def funcml_variant(cfg: MonaiBenchConfig, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device, *,
                   compile: bool) -> Variant:
    """funcml's train step (`make_train_step`), its state threaded from call to call."""
    net = funcml_unet_config(cfg)
    root = random.key(cfg.seed, device=device)
    params, model_state = models.init(random.fold_in(root, "init"), net)
    tx = optim.adamw(cfg.lr, 0.9, 0.999, 1e-8, weight_decay=cfg.weight_decay)  # decay mask: ndim >= 2

    def loss_fn(p, s, b, key):
        x, y = b
        logits, s = models.apply(p, s, x, net, key=key, train=True)
        return ce_dice_loss(logits, y, smooth=1.0), ({}, s)

    step = make_train_step(loss_fn, tx, precision=cfg.precision, compile=compile)
    ts = init_train_state(params, model_state, tx, random.fold_in(root, "train"))
    holder = {"ts": ts}

    def fn() -> float:
        holder["ts"], metrics = step(holder["ts"], batch)
        return float(metrics["loss"])

    return Variant("funcml-compiled" if compile else "funcml-eager", fn, tree.num_params(params))


def monai_net(cfg: MonaiBenchConfig, arch: str) -> torch.nn.Module:
    """MONAI's BasicUNet ("monai-basic") or UNet ("monai-unet") at the widths w .. 16w, BatchNorm, ReLU."""
    from monai.networks.nets import UNet, BasicUNet

    w = cfg.base_width
    if arch == "monai-basic":
        return BasicUNet(spatial_dims=2, in_channels=1, out_channels=cfg.num_classes,
                         features=(w, 2 * w, 4 * w, 8 * w, 16 * w, w), act="relu", norm="batch", bias=False,
                         upsample="deconv")
    return UNet(spatial_dims=2, in_channels=1, out_channels=cfg.num_classes,
                channels=tuple(w * 2**i for i in range(DEPTH + 1)), strides=(2,) * DEPTH,
                num_res_units=cfg.unet_res_units, act="relu", norm="batch")


def monai_loss(cfg: MonaiBenchConfig) -> torch.nn.Module:
    """DiceCELoss with funcml's `ce_dice_loss` settings: softmax, every class, sums over the batch, smooth 1."""
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True, include_background=True, batch=True, smooth_nr=1.0,
                      smooth_dr=1.0, lambda_ce=1.0, lambda_dice=1.0)


def monai_variant(cfg: MonaiBenchConfig, name: str, batch: tuple[torch.Tensor, torch.Tensor],
                  device: torch.device) -> Variant:
    """The conventional step: zero_grad, forward + DiceCELoss (compiled for *-compiled), backward, AdamW."""
    torch.manual_seed(cfg.seed)  # MONAI's init draws from torch's global RNG
    net = monai_net(cfg, _ARCH[name]).to(device).train()
    decay = [p for p in net.parameters() if p.ndim >= 2]
    no_decay = [p for p in net.parameters() if p.ndim < 2]
    impl = {"fused": dict(fused=True), "foreach": dict(foreach=True), "for-loop": dict(foreach=False)}[cfg.torch_adamw]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, **impl)
    loss = monai_loss(cfg)
    x, y = batch[0], batch[1][:, None]  # MONAI's targets: [B, 1, S, S]

    def forward(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss(net(x), y)

    if name.endswith("compiled"):
        forward = torch.compile(forward, backend=compiler.backend())
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg.precision == "bf16" else None)

    def fn() -> float:
        opt.zero_grad(set_to_none=True)
        if autocast is None:
            value = forward(x, y)
        else:
            with autocast:
                value = forward(x, y)
        value.backward()
        opt.step()
        return float(value.detach())

    return Variant(name, fn, sum(p.numel() for p in net.parameters()))


def build(cfg: MonaiBenchConfig, name: str, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> Variant:
    if name.startswith("funcml"):
        return funcml_variant(cfg, batch, device, compile=name == "funcml-compiled")
    return monai_variant(cfg, name, batch, device)


# --------------------------------------------------------------------------- what is compared


def describe_architecture(cfg: MonaiBenchConfig, arch: str) -> dict[str, Any]:
    """`{"params": int, "layers": {kind: count}}` of an architecture ("funcml", "monai-basic", "monai-unet"):
    the layer kinds conv3x3, conv1x1, deconv2x2, deconv3x3, batchnorm, from funcml's parameter names and
    shapes or MONAI's modules."""
    counts: dict[str, int] = {}

    def add(kind: str) -> None:
        counts[kind] = counts.get(kind, 0) + 1

    if arch == "funcml":
        params, _ = models.init(random.key(0), funcml_unet_config(cfg))
        for name, leaf in tree.flatten_with_names(params).items():
            if name.endswith(".scale"):
                add("batchnorm")
            elif leaf.ndim == 4:  # conv weights [cout, cin, kh, kw]; transposed [cin, cout, kh, kw]
                add(f"{'deconv' if '.up.' in name else 'conv'}{leaf.shape[-2]}x{leaf.shape[-1]}")
        return {"params": tree.num_params(params), "layers": dict(sorted(counts.items()))}
    net = monai_net(cfg, arch)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            add("batchnorm")
        elif isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            kind = "deconv" if isinstance(m, torch.nn.ConvTranspose2d) else "conv"
            add(f"{kind}{m.kernel_size[0]}x{m.kernel_size[1]}")
    return {"params": sum(p.numel() for p in net.parameters()), "layers": dict(sorted(counts.items()))}


def loss_agreement(cfg: MonaiBenchConfig, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    """funcml's ce_dice_loss vs monai's DiceCELoss on the same logits: |loss diff| and max |grad diff|."""
    x, y = batch
    logits = random.normal(random.fold_in(random.key(cfg.seed, device=x.device), "logits"),
                           (x.shape[0], cfg.num_classes, *x.shape[2:])).requires_grad_(True)
    ours = ce_dice_loss(logits, y, smooth=1.0)
    (g_ours,) = torch.autograd.grad(ours, logits)
    theirs = monai_loss(cfg)(logits, y[:, None])
    (g_theirs,) = torch.autograd.grad(theirs, logits)
    return {"funcml": float(ours.detach()), "monai": float(theirs.detach()),
            "abs_loss_diff": float((ours - theirs).detach().abs()),
            "max_abs_grad_diff": float((g_ours - g_theirs).abs().max())}


def step_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of `fn` (FlopCounterMode: matmuls and convolutions, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _matmul(device: torch.device, n: int, dtype: torch.dtype) -> Callable[[], Any]:
    k1, k2 = random.split(random.key(1, device=device))
    a = random.uniform(k1, (n, n), -1.0, 1.0).to(dtype)
    b = random.uniform(k2, (n, n), -1.0, 1.0).to(dtype)
    return lambda: torch.mm(a, b)


def _bf16_native(device: torch.device) -> bool:
    """Whether the device multiplies bf16 natively (CUDA: compute capability; CPU: oneDNN's check for
    AVX512-BF16 / AMX). Without it a CPU's bf16 matmul is emulated, ~100x slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _peak_sizes(cfg: MonaiBenchConfig, device: torch.device) -> dict[str, tuple[torch.dtype, int]]:
    """The matmul peaks to measure, `{precision: (dtype, n)}`: fp32 always; bf16 where native, or where the
    steps run in bf16 (then, if emulated, at n <= 512, so that a call takes about a second, not half a minute)."""
    peaks = {"fp32": (torch.float32, cfg.matmul_size)}
    native = _bf16_native(device)
    if native or cfg.precision == "bf16":
        peaks["bf16"] = (torch.bfloat16, cfg.matmul_size if native else min(cfg.matmul_size, 512))
    return peaks


def _quartiles(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def _ratio(times: dict[str, list[float]], slow: str, fast: str) -> dict[str, Any]:
    """Speed-up of `fast` over `slow`: the ratio of medians `t_slow / t_fast`, and the quartiles of the
    per-round ratios (both were timed in the same round, back to back)."""
    per_round = [a / b for a, b in zip(times[slow], times[fast])]
    q1, q3 = _quartiles(per_round)
    ratio = statistics.median(times[slow]) / statistics.median(times[fast])
    return {"of": fast, "over": slow, "ratio_of_medians": ratio,
            "per_round_q1": q1, "per_round_median": statistics.median(per_round), "per_round_q3": q3,
            "per_round_min": min(per_round), "per_round_max": max(per_round)}


def _error_line(e: BaseException) -> str:
    """`Type: first line of the message`, plus the op the message names ("Error in op: ..."), if any."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    op = next((ln for ln in lines[1:] if ln.startswith("Error in op")), None)
    return f"{type(e).__name__}: {lines[0] if lines else ''}" + (f" ({op})" if op else "")


def _targets(variants: dict[str, Variant], timings: dict[str, Any], ratios: dict[str, Any]) -> dict[str, Any]:
    """The issue's figures, speed-ups as ratios of medians: funcml compiled >= 1.5x MONAI's best step,
    funcml eager >= 1.1x; each against the best MONAI step of the same architecture (BasicUNet) and
    against the best of any architecture timed (monai UNet does about a quarter of the FLOPs)."""
    def fastest(names: list[str]) -> str | None:
        return min(names, key=lambda n: timings[n].median_s) if names else None

    monai = [n for n in variants if n.startswith("monai")]
    peers = {"compiled": (1.5, {"MONAI's best BasicUNet step": fastest([n for n in monai if "basic" in n]),
                                "MONAI's best step": fastest(monai)}),
             "eager": (1.1, {"MONAI BasicUNet eager": "monai-basic-eager" if "monai-basic-eager" in variants else None,
                             "MONAI's best eager step": fastest([n for n in monai if n.endswith("eager")])})}
    targets = {}
    for mode, (goal, against) in peers.items():
        for label, theirs in against.items():
            if theirs is not None and f"funcml-{mode}" in variants:
                r = ratios[f"funcml-{mode} vs {theirs}"]["ratio_of_medians"]
                targets[f"funcml-{mode} vs {label}"] = {"monai": theirs, "ratio": r, "target": goal, "met": r >= goal}
    return targets


# --------------------------------------------------------------------------- CLI


_COLUMNS = {"variant": "variant", "params": "params", "gflop": "GFLOP/step", "ms": "ms/step", "ms_q1": "q1 ms",
            "ms_q3": "q3 ms", "images_per_s": "images/s", "gflops_per_s": "GFLOP/s", "peak_fraction": "of mm peak",
            "speedup_vs_monai_basic_eager": "x BasicUNet eager", "speedup_vs_monai_best": "x MONAI best",
            "compile_s": "compile s", "second_call_s": "2nd call s"}


@cli_main
def main(args: list[str] | None = None) -> dict[str, Any]:
    cfg = tyro.cli(MonaiBenchConfig, args=args, description="\n\n".join(__doc__.split("\n\n")[:3]))
    try:
        import monai
    except ImportError:
        raise ConfigError("bench_vs_monai needs MONAI: pip install 'funcml[bench]' (monai==1.6.1)") from None
    device, info = start(_device(cfg.device), cfg.threads)
    cfg = _resolved(cfg, device)
    info.update(monai=monai.__version__, compile_backend=compiler.backend())
    print(f"B={cfg.batch_size}, 1x{cfg.image_size}x{cfg.image_size}, widths {cfg.base_width}..{cfg.base_width * 16}, "
          f"K={cfg.num_classes}, {cfg.precision}, monai {monai.__version__}, compile backend {compiler.backend()}",
          flush=True)
    batch = _batch(cfg, device)

    archs = sorted({_ARCH[v] for v in cfg.variants} | {"funcml", "monai-basic"})
    architectures = {a: describe_architecture(cfg, a) for a in archs}
    agreement = loss_agreement(cfg, batch)
    print(f"loss on the same logits: funcml {agreement['funcml']:.6f}, monai {agreement['monai']:.6f} "
          f"(|diff| {agreement['abs_loss_diff']:.1e}, max |grad diff| {agreement['max_abs_grad_diff']:.1e})",
          flush=True)
    for a in sorted({_ARCH[v] for v in cfg.variants}):  # FLOPs of one eager step of each timed architecture
        architectures[a]["gflop"] = step_flops(build(cfg, _EAGER[a], batch, device).fn) / 1e9
    for a, d in architectures.items():
        print(f"{a}: {d['params']:,} params, layers {d['layers']}"
              + (f", {d['gflop']:.3g} GFLOP/step" if "gflop" in d else ""), flush=True)

    # The failing compile first, before anything else is compiled; the compiled variants' first two calls
    # (compile included) are timed here, apart from the steps.
    order = sorted(cfg.variants, key=lambda v: (v != "monai-basic-compiled", VARIANTS.index(v)))
    variants: dict[str, Variant] = {}
    failures: dict[str, dict[str, Any]] = {}
    for name in order:
        t0 = time.perf_counter()
        v = build(cfg, name, batch, device)
        if name.endswith("compiled"):
            try:
                v.first_calls = compile_cost(v.fn, device)
            except Exception as e:  # noqa: BLE001 - a peer's compile failure is a result to report
                failures[name] = {"error": _error_line(e), "message": str(e)[:4000],
                                  "seconds_until_error": time.perf_counter() - t0}
                print(f"{name}: compile failed after {failures[name]['seconds_until_error']:.1f} s: "
                      f"{failures[name]['error']}", flush=True)
                continue
            print(f"{name}: first calls {v.first_calls['compile_s']:.1f} s + {v.first_calls['second_call_s']:.1f} s",
                  flush=True)
        variants[name] = v
    variants = {name: variants[name] for name in cfg.variants if name in variants}

    for v in variants.values():
        for _ in range(cfg.warmup):
            v.fn()
    peaks = _peak_sizes(cfg, device)
    fns = {f"mm-{k}": _matmul(device, n, dt) for k, (dt, n) in peaks.items()}
    fns |= {name: v.fn for name, v in variants.items()}
    timings = time_interleaved(fns, warmup=1, repeat=cfg.repeat, device=device)
    peak = {k: {"n": n, "median_s": timings[f"mm-{k}"].median_s, "native": k == "fp32" or _bf16_native(device),
                "gflops_per_s": 2 * n**3 / timings[f"mm-{k}"].median_s / 1e9} for k, (_, n) in peaks.items()}
    times = {name: list(timings[name].times_s) for name in variants}

    monai_timed = [n for n in variants if n.startswith("monai")]
    best = min(monai_timed, key=lambda n: timings[n].median_s) if monai_timed else None
    rows = []
    for name, v in variants.items():
        t = timings[name]
        q1, q3 = _quartiles(times[name])
        gflop = architectures[_ARCH[name]]["gflop"]
        rate = gflop / t.median_s
        peak_rate = peak[cfg.precision]["gflops_per_s"]
        rows.append({
            "variant": name, "architecture": _ARCH[name], "params": v.params, "gflop": gflop,
            "ms": 1e3 * t.median_s, "ms_q1": 1e3 * q1, "ms_q3": 1e3 * q3, "images_per_s": cfg.batch_size / t.median_s,
            "gflops_per_s": rate, "peak_fraction": rate / peak_rate,
            "speedup_vs_monai_basic_eager": (timings["monai-basic-eager"].median_s / t.median_s
                                             if "monai-basic-eager" in variants else None),
            "speedup_vs_monai_best": timings[best].median_s / t.median_s if best else None,
            "compile_s": v.first_calls.get("compile_s"), "second_call_s": v.first_calls.get("second_call_s"),
            "graphs_compiled": v.first_calls.get("graphs_compiled"), "timing": t.to_dict(),
        })
    ratios = {}
    for ours in ("funcml-eager", "funcml-compiled"):
        for theirs in ("monai-basic-eager", "monai-basic-compiled", "monai-unet-eager", "monai-unet-compiled"):
            if ours in variants and theirs in variants:
                ratios[f"{ours} vs {theirs}"] = _ratio(times, theirs, ours)
    targets = _targets(variants, timings, ratios)

    result = {"benchmark": "vs_monai", "machine": info, "config": dataclasses.asdict(cfg),
              "architectures": architectures, "loss_agreement": agreement, "matmul_peak": peak, "rows": rows,
              "compile_failures": failures, "monai_best": best, "ratios": ratios, "targets": targets,
              "load_average_end": machine_info(device)["load_average"]}
    path = write_json(result, cfg.out or fresh_results_path("bench_vs_monai"))
    print("\nmatmul peak: " + ", ".join(f"{k} {p['gflops_per_s']:.1f} GFLOP/s (n={p['n']}"
                                       + ("" if p["native"] else ", emulated") + ")" for k, p in peak.items())
          + ("" if "bf16" in peak else "; bf16: not native on this device, not measured"))
    print(markdown_table(rows, _COLUMNS))
    for name, f in failures.items():
        print(f"{name}: not timed, compile failed: {f['error']}")
    print("\n" + markdown_table([{"pair": k, **r} for k, r in ratios.items()],
                                {"pair": "speed-up (t_monai / t_funcml)", "ratio_of_medians": "ratio of medians",
                                 "per_round_q1": "per-round q1", "per_round_median": "per-round median",
                                 "per_round_q3": "per-round q3"}))
    for k, tg in targets.items():
        print(f"target {k} ({tg['monai']}): {tg['ratio']:.2f}x, target >= {tg['target']}x: "
              f"{'met' if tg['met'] else 'MISSED'}")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in result['load_average_end'])}")
    print(f"\nwritten {path}")
    return result


if __name__ == "__main__":
    main()
