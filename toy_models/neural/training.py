r"""Training: denoising score matching on fresh samples of a world, with conditioning dropout.

Each step draws a fresh batch (no data set: the world is the data), so the only error left is the network's:

1. :math:`(x_0, k) \sim p(x)` with component index k; the condition is k's label tokens, with probability
   ``p_partial`` (attribute worlds) a random non-empty subset of them, and with probability ``p_uncond`` the null
   token (Ho & Salimans 2022, Algorithm 1). A subset S is drawn independently of :math:`x_0` given k, so the
   conditional the network learns for S is exactly ``world.law(S)``.
2. :math:`t` from the noise-level distribution: ``"uniform-t"`` (DDPM's, suited to vp-linear/vp-cosine) or
   ``"uniform-logsnr"`` (uniform log-SNR between the schedule's values at ``t_min`` and 1);
   :math:`x_t = \alpha_t x_0 + \sigma_t \varepsilon`.
3. loss :math:`\|\hat\varepsilon_\theta(x_t, t, c) - \varepsilon\|^2 / d` (Ho et al. 2020, eq. 14), AdamW with
   linear warm-up and cosine decay, gradient clipping, and an exponential moving average of the weights (the EMA
   network is the one saved and checked).

Image worlds (a mixture whose ``shape`` is ``(C, H, W)``, e.g. ``shapes16``) train the patch network
(:class:`~toy_models.neural.network.NetworkConfig` ``image_shape``, ``patch``): their configuration must name the
patch size (the ``image``/``image-small``/``image-gpu`` presets do), other worlds must not.
``max_seconds`` stops a run once its training time (evaluations excluded) reaches the cap, whatever ``steps`` says:
the learning rate then has not finished its cosine decay, and the card records the steps actually run.

On a GPU the forward pass may run under bf16 autocast and matmuls in TF32 (``TrainConfig.reduced_precision``);
both are switched on inside :func:`train` only and restored on exit, never in the checks. Under ``torchrun`` the
run is data-parallel (DDP, NCCL on GPUs, gloo on CPUs): the global batch is split across ranks, each rank draws its
own data from ``seed`` and its rank, and rank 0 keeps the result.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from ..scenarios import get_world
from ..schedules import get_schedule
from ..world import World
from .denoiser import NeuralDenoiser, Vocabulary, network_inputs
from .evaluate import score_error_table
from .network import NULL_TOKEN_ID, CrossAttentionEpsNet, NetworkConfig

__all__ = ["TrainConfig", "TrainResult", "PRESETS", "train", "ConditionSampler", "resolve_device"]

NOISE_LEVELS = ("uniform-t", "uniform-logsnr")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (with the seed, it fixes the run on a given device)."""

    world: str
    schedule: str = "vp-linear"
    steps: int = 8000
    batch_size: int = 1024
    learning_rate: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 200
    ema_decay: float = 0.999
    p_uncond: float = 0.1
    p_partial: float = 0.3
    noise_levels: str = "uniform-t"
    t_min: float = 1e-3
    grad_clip: float = 1.0
    width: int = 64
    depth: int = 2
    heads: int = 4
    seed: int = 0
    reduced_precision: bool = True
    #: stop early once the EMA model's pooled relative score error (checked every ``eval_every`` steps) is below this
    target_error: float | None = None
    #: False: record the time the target is first reached but train on for all ``steps`` (a timing, not a stop)
    stop_at_target: bool = True
    eval_every: int = 500
    #: points per (time, condition) cell of those evaluations
    eval_n: int = 512
    #: p x p pixel patches as attention positions; image worlds only, where it is required
    patch: int | None = None
    #: stop once this many seconds of training (evaluations excluded) have passed
    max_seconds: float | None = None

    def __post_init__(self):
        if not isinstance(self.world, str):
            raise TypeError(f"world: expected a world name (str), got {type(self.world).__name__}")
        try:
            world = get_world(self.world)
        except ValueError as err:
            raise ValueError(f"world: {str(err).removeprefix('name: ')}") from None
        if not world.is_joint:
            raise ValueError(f"world: {self.world!r} is two separate Gaussians, not one labelled mixture; the network "
                             "trains on joint worlds (ring2d, attributes2d, tokens16d, ...)")
        if not isinstance(self.schedule, str):
            raise TypeError(f"schedule: expected a schedule name (str), got {type(self.schedule).__name__}")
        schedule = get_schedule(self.schedule)  # "schedule: unknown schedule ..." for a wrong name
        if float(schedule.alpha(1.0)) <= 0.0:
            raise ValueError(f"schedule: {self.schedule!r} has alpha(1) = 0, where the log-SNR the network is "
                             "conditioned on is -inf; train on vp-linear, vp-cosine or ve")
        for name in ("steps", "batch_size", "width", "depth", "heads", "eval_every", "eval_n"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: must be a positive int, got {value!r}")
        for name in ("seed", "warmup_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}: must be a non-negative int, got {value!r}")
        if self.seed >= 2**32:  # the data generator is seeded with seed * 1_000_003 + rank, which must fit 64 bits
            raise ValueError(f"seed: must be below 2^32, got {self.seed}")
        if self.width % self.heads:
            raise ValueError(f"heads: must divide width = {self.width}, got {self.heads}")
        for name in ("p_uncond", "p_partial", "ema_decay", "learning_rate", "weight_decay", "t_min", "grad_clip"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{name}: must be a finite number, got {value!r}")
        for name in ("p_uncond", "p_partial"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: must be a probability in [0, 1], got {getattr(self, name)!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay: must lie in [0, 1), got {self.ema_decay!r}")
        for name in ("learning_rate", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay: must be non-negative, got {self.weight_decay!r}")
        if self.noise_levels not in NOISE_LEVELS:
            raise ValueError(f"noise_levels: must be one of {NOISE_LEVELS}, got {self.noise_levels!r}")
        if not 0.0 < self.t_min < 1.0:
            raise ValueError(f"t_min: must lie in (0, 1), got {self.t_min!r}")
        if self.target_error is not None and not (isinstance(self.target_error, (int, float))
                                                  and not isinstance(self.target_error, bool)
                                                  and math.isfinite(self.target_error) and self.target_error > 0):
            raise ValueError(f"target_error: must be a positive finite number, got {self.target_error!r}")
        if self.max_seconds is not None and not (isinstance(self.max_seconds, (int, float))
                                                 and not isinstance(self.max_seconds, bool)
                                                 and math.isfinite(self.max_seconds) and self.max_seconds > 0):
            raise ValueError(f"max_seconds: must be a positive finite number, got {self.max_seconds!r}")
        shape = image_shape(world)
        if self.patch is not None and (not isinstance(self.patch, int) or isinstance(self.patch, bool)
                                       or self.patch < 1):
            raise ValueError(f"patch: must be a positive int, got {self.patch!r}")
        if shape is None and self.patch is not None:
            raise ValueError(f"patch: {self.world!r} is not an image world; patches are for image worlds only")
        if shape is not None:
            if self.patch is None:
                raise ValueError(f"patch: {self.world!r} is an image world {shape}; choose the patch size (the "
                                 "image presets set it)")
            if shape[1] % self.patch or shape[2] % self.patch:
                raise ValueError(f"patch: must divide H = {shape[1]} and W = {shape[2]}, got {self.patch}")
        for name in ("reduced_precision", "stop_at_target"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected a bool, got {type(getattr(self, name)).__name__}")

    def to_dict(self) -> dict:
        return asdict(self)


#: named configurations: ``default`` ships in checkpoints/; ``ablation`` is the cheaper one the p_uncond ablation
#: retrains five times; ``imperfect`` is deliberately short-trained (S0-QUALITY-DIVERSITY, S1-FID-IS); ``small``
#: trains on a CPU in seconds (tests). Image worlds (patch 4: 16 patches of 48 values on shapes16, 64 on shapes32):
#: ``image`` is the shipped CPU checkpoint (sized by measurement, see checkpoints/README.md), ``image-gpu`` the one
#: checkpoints/make_gpu.sh trains, ``image-small`` trains on one CPU thread in seconds (tests).
PRESETS: dict[str, dict] = {
    "default": {},
    "ablation": {"steps": 3000, "batch_size": 512, "width": 48},
    "imperfect": {"steps": 600, "batch_size": 512, "width": 48},
    "small": {"steps": 150, "batch_size": 256, "width": 32, "depth": 1, "heads": 2, "warmup_steps": 20,
              "ema_decay": 0.95, "eval_every": 50},
    # image: 78-103 ms/step on one CPU thread for shapes16 (measured), 16000 steps ~ 21-27 minutes; 6000 steps left
    # the conditional signal unlearned (checkpoints/README.md)
    "image": {"patch": 4, "steps": 16000, "batch_size": 128, "width": 96, "depth": 3, "heads": 4,
              "learning_rate": 1e-3, "warmup_steps": 200, "eval_every": 500, "eval_n": 64},
    "image-gpu": {"patch": 4, "steps": 6000, "batch_size": 1024, "width": 192, "depth": 4, "heads": 6,
                  "learning_rate": 1e-3, "warmup_steps": 300, "eval_every": 1000, "eval_n": 64},
    "image-small": {"patch": 4, "steps": 60, "batch_size": 64, "width": 32, "depth": 1, "heads": 2,
                    "warmup_steps": 10, "ema_decay": 0.9, "eval_every": 20, "eval_n": 16},
}


@dataclass
class TrainResult:
    """The EMA denoiser and what the run measured (the checkpoint card is made from it)."""

    denoiser: NeuralDenoiser
    config: TrainConfig
    losses: list[float]
    steps_done: int
    wall_time_s: float
    samples_per_s: float
    device: str
    world_size: int
    time_to_target_s: float | None = None
    evaluations: list[dict] = field(default_factory=list)
    #: bf16 autocast and TF32 were on (a GPU run with ``config.reduced_precision``)
    reduced_precision_used: bool = False
    #: the run stopped at ``config.max_seconds`` before ``config.steps``
    stopped_at_time_cap: bool = False


class ConditionSampler:
    """Fresh training batches: clean points, their condition token ids (with dropout), and noised inputs."""

    def __init__(self, world: World, vocabulary: Vocabulary, p_uncond: float, p_partial: float):
        self.world, self.vocabulary = world, vocabulary
        self.p_uncond, self.p_partial = p_uncond, p_partial
        gm = world.unconditional
        label_tokens = dict(vocabulary.label_tokens)
        per_component = [vocabulary.encode(label_tokens[int(lab)]) for lab in gm.labels]
        self.component_ids = torch.tensor(per_component, dtype=torch.long)  # [K, A]

    def conditions(self, components: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Token ids and mask ``[n, A]`` for the drawn components: full, partial or null."""
        n, n_attr = components.shape[0], self.component_ids.shape[1]
        ids = self.component_ids[components]  # [n, A]
        keep = torch.ones(n, n_attr, dtype=torch.bool)
        if n_attr > 1 and self.p_partial > 0:
            partial = torch.rand(n, generator=generator) < self.p_partial
            subset = torch.rand(n, n_attr, generator=generator) < 0.5
            forced = torch.randint(n_attr, (n,), generator=generator)  # keeps one attribute if the subset is empty
            subset[torch.arange(n), forced] |= ~subset.any(1)
            keep = torch.where(partial[:, None], subset, keep)
        drop = torch.rand(n, generator=generator) < self.p_uncond
        keep &= ~drop[:, None]
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept tokens first
        ids, mask = ids.gather(1, order), keep.gather(1, order)
        ids[drop, 0], mask[drop, 0] = NULL_TOKEN_ID, True  # the null condition: the null token alone
        return ids.masked_fill(~mask, NULL_TOKEN_ID), mask

    def batch(self, n: int, config: TrainConfig, generator: torch.Generator) -> tuple[Tensor, ...]:
        """``(x_t, t, eps, ids, mask)`` in float64 (x_t ``[n, d]``, t ``[n]``)."""
        x0, comp = self.world.unconditional.sample_with_components(n, generator)
        ids, mask = self.conditions(comp, generator)
        schedule = get_schedule(config.schedule)
        u = torch.rand(n, dtype=torch.float64, generator=generator)
        if config.noise_levels == "uniform-t":
            t = config.t_min + (1.0 - config.t_min) * u
        else:
            lo, hi = float(schedule.log_snr(1.0)), float(schedule.log_snr(config.t_min))
            t = schedule.t_from_log_snr(lo + (hi - lo) * u).clamp(config.t_min, 1.0)
        alpha, sigma = schedule.alpha_sigma(t)
        eps = torch.randn(x0.shape, dtype=torch.float64, generator=generator)
        return alpha[:, None] * x0 + sigma[:, None] * eps, t, eps, ids, mask


def data_std(world: World) -> float:
    """Root mean square of the data's coordinates about zero (sets the input scaling ``c_in``)."""
    gm = world.unconditional
    second_moment = torch.diagonal(gm.covariance()).sum() + gm.mean().pow(2).sum()
    return math.sqrt(float(second_moment) / gm.dim)


def image_shape(world: World) -> tuple[int, int, int] | None:
    """``(C, H, W)`` of an image world (its mixture's ``shape``, as :class:`~toy_models.field_mixture.FieldMixture`
    has it), ``None`` for any other world."""
    shape = getattr(world.unconditional, "shape", None)
    return tuple(int(s) for s in shape) if isinstance(shape, (tuple, list)) and len(shape) == 3 else None


def build_network(config: TrainConfig, world: World, vocabulary: Vocabulary) -> CrossAttentionEpsNet:
    """A freshly initialised network for ``config`` (initialisation seeded by ``config.seed``): the patch network
    on image worlds, the coordinate network otherwise."""
    shape = image_shape(world)
    geometry = {} if shape is None else {"image_shape": shape, "patch": config.patch}
    net_config = NetworkConfig(dim=world.dim, vocab_size=vocabulary.size, max_tokens=vocabulary.max_tokens,
                               width=config.width, depth=config.depth, heads=config.heads,
                               data_std=data_std(world), **geometry)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return CrossAttentionEpsNet(net_config)


def _distributed(device: torch.device) -> tuple[int, int]:
    """``(rank, world_size)``; initialises the process group under ``torchrun`` (WORLD_SIZE > 1): NCCL when training
    on GPUs, gloo on CPUs."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


@contextlib.contextmanager
def _tf32(enabled: bool):
    """TF32 matmuls inside the block only (restored after: the checks never see it). Touches nothing when disabled;
    uses the ``fp32_precision`` API where torch has it (>= 2.9), else the legacy ``allow_tf32`` flags."""
    if not enabled:
        yield
        return
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        saved = matmul.fp32_precision
        matmul.fp32_precision = "tf32"
        try:
            yield
        finally:
            matmul.fp32_precision = saved
        return
    saved = matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 5 % of the peak."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device to train on: ``device`` checked against this machine, or (``None``) the local rank's GPU when
    CUDA is available, else the CPU.

    Raises ``ValueError`` starting with ``device:`` for a string torch cannot parse, a device type other than cpu
    and cuda, CUDA requested where ``torch.cuda.is_available()`` is False, or a GPU index beyond the device count.
    """
    if device is None:
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device: expected a str or torch.device, got {type(device).__name__}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"device: {str(device)!r} is not a device torch understands; use cpu, cuda or cuda:N"
                         ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise ValueError(f"device: {device} was requested but torch.cuda.is_available() is False (torch "
                             f"{torch.__version__}, {build}); train on the cpu, or leave the device unset to use a "
                             "GPU only when there is one")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device: {device} was requested but this machine has {torch.cuda.device_count()} CUDA "
                             "device(s)")
    elif dev.type != "cpu":
        raise ValueError(f"device: {str(device)!r} is not supported; train on cpu or cuda")
    return dev


def train(config: TrainConfig, device: str | torch.device | None = None, show_progress: bool = True,
          callback: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train the network of ``config`` and return its EMA denoiser (on the CPU) with the run's measurements."""
    device = resolve_device(device)
    rank, world_size = _distributed(device)
    if config.batch_size % world_size:
        raise ValueError(f"batch_size: {config.batch_size} does not split over {world_size} processes")
    on_gpu = device.type == "cuda"
    world = get_world(config.world)
    vocabulary = Vocabulary.from_world(world)
    net = build_network(config, world, vocabulary).to(device)
    ema = copy.deepcopy(net).requires_grad_(False)
    model = torch.nn.parallel.DistributedDataParallel(net) if world_size > 1 else net
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    sampler = ConditionSampler(world, vocabulary, config.p_uncond, config.p_partial)
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + rank)
    per_rank = config.batch_size // world_size
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu and config.reduced_precision)
    denoiser = NeuralDenoiser(ema, vocabulary, config.schedule, config.world)
    losses: list[float] = []
    evaluations: list[dict] = []
    time_to_target = None
    eval_time = 0.0
    at_cap = False
    bar = tqdm(range(config.steps), desc=f"train {config.world}", disable=not show_progress or rank != 0)
    start = time.perf_counter()
    step = 0
    with _tf32(on_gpu and config.reduced_precision):
        for step in bar:
            x_t, t, eps, ids, mask = sampler.batch(per_rank, config, generator)
            scaled, log_snr = network_inputs(denoiser.schedule, net.config.data_std, x_t, t)
            inputs = (scaled.float().to(device), log_snr.float().to(device), ids.to(device), mask.to(device))
            for group in optimiser.param_groups:
                group["lr"] = _learning_rate(config, step)
            with autocast:
                prediction = model(*inputs)
            loss = (prediction.float() - eps.float().to(device)).pow(2).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
            optimiser.step()
            decay = min(config.ema_decay, (1 + step) / (10 + step))  # short memory early on (EMA warm-up)
            with torch.no_grad():
                for e, p in zip(ema.parameters(), net.parameters(), strict=True):
                    e.lerp_(p.detach(), 1 - decay)
            losses.append(float(loss.detach()))
            if callback is not None:
                callback(step, losses[-1])
            if step % 50 == 0:
                bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
            if config.target_error is not None and time_to_target is None and (step + 1) % config.eval_every == 0:
                tick = time.perf_counter()
                trained_for = tick - start - eval_time  # training time so far, evaluations excluded
                stop = torch.zeros(1, device=device)
                if rank == 0:  # rank 0 measures; every rank learns the decision, so all leave the loop together
                    error = score_error_table(_on_cpu(denoiser), world, n=config.eval_n,
                                              seed=12345)["pooled_relative_error"]
                    evaluations.append({"step": step + 1, "pooled_relative_error": error,
                                        "train_time_s": trained_for})
                    stop[0] = float(error <= config.target_error)
                if world_size > 1:
                    dist.broadcast(stop, src=0)
                eval_time += time.perf_counter() - tick
                if bool(stop[0]):
                    time_to_target = trained_for
                    if config.stop_at_target:
                        break
            if config.max_seconds is not None and step + 1 < config.steps:
                over = torch.tensor([float(time.perf_counter() - start - eval_time >= config.max_seconds)],
                                    device=device)
                if world_size > 1:  # rank 0's clock decides for all, so every rank leaves at the same step
                    dist.broadcast(over, src=0)
                if bool(over[0]):
                    at_cap = True
                    break
    wall = time.perf_counter() - start
    steps_done = step + 1
    train_time = max(wall - eval_time, 1e-9)
    return TrainResult(denoiser=_on_cpu(denoiser), config=config, losses=losses, steps_done=steps_done,
                       wall_time_s=wall, samples_per_s=steps_done * config.batch_size / train_time,
                       device=_device_name(device), world_size=world_size, time_to_target_s=time_to_target,
                       evaluations=evaluations, reduced_precision_used=on_gpu and config.reduced_precision,
                       stopped_at_time_cap=at_cap)


def _on_cpu(denoiser: NeuralDenoiser) -> NeuralDenoiser:
    """The denoiser with a float32 CPU copy of its network (checks run on the CPU in float32)."""
    if denoiser.device.type == "cpu":
        return denoiser
    return NeuralDenoiser(copy.deepcopy(denoiser.network).float().cpu(), denoiser.vocabulary, denoiser.schedule,
                          denoiser.world_name)


def _device_name(device: torch.device) -> str:
    """``torch.cuda.get_device_name`` on a GPU; on the CPU ``"cpu (MODEL, N threads)"`` with the model name from
    /proc/cpuinfo where Linux has it, else ``platform.processor()`` or the machine type."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
        model = names[0] if names else model
    return f"cpu ({model}, {torch.get_num_threads()} threads)"


def config_from_preset(world: str, preset: str = "default", **overrides) -> TrainConfig:
    """``TrainConfig`` of a named preset with overrides (``None`` values are ignored)."""
    if preset not in PRESETS:
        raise ValueError(f"preset: unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    config = TrainConfig(world=world, **PRESETS[preset])
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


@torch.no_grad()
def heldout_loss(denoiser: NeuralDenoiser, config: TrainConfig, n: int = 8192, seed: int = 2024) -> float:
    """The DSM loss of ``denoiser`` on one fixed batch of ``n`` fresh draws (same law as training)."""
    world = get_world(config.world)
    sampler = ConditionSampler(world, denoiser.vocabulary, config.p_uncond, config.p_partial)
    x_t, t, eps, ids, mask = sampler.batch(n, config, torch.Generator().manual_seed(seed))
    scaled, log_snr = network_inputs(denoiser.schedule, denoiser.network.config.data_std, x_t, t)
    net = denoiser.network
    prediction = net(scaled.float(), log_snr.float(), ids, mask).double()
    return float((prediction - eps).pow(2).mean())


def card_facts(result: TrainResult, score_error: dict) -> dict:
    """What a checkpoint card records about the run that made it."""
    tail = result.losses[-max(1, len(result.losses) // 20):]
    return {"config": result.config.to_dict(), "seed": result.config.seed, "steps": result.steps_done,
            "device": result.device, "world_size": result.world_size,
            "trained_on": "gpu" if "cpu" not in result.device else "cpu",
            "reduced_precision": {"used": result.reduced_precision_used,
                                  "what": "bf16 autocast + TF32 matmuls in training" if result.reduced_precision_used
                                  else "none: float32 throughout"},
            "stopped_at_time_cap": result.stopped_at_time_cap,
            "wall_time_s": round(result.wall_time_s, 2), "samples_per_s": round(result.samples_per_s, 1),
            "time_to_target_s": result.time_to_target_s, "evaluations": result.evaluations,
            "final_losses": {"train_loss_last_5pct": sum(tail) / len(tail),
                             "ema_heldout_loss": heldout_loss(result.denoiser, result.config)},
            "score_error": score_error}
