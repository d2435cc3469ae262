r"""diffusers guiders (``diffusers.guiders``, 0.42) audited through their own API against the papers' rules.

A diffusers guider is driven the way a modular pipeline's denoise loop drives it (``StableDiffusionXLLoopDenoiser``
in ``diffusers/modular_pipelines/stable_diffusion_xl/denoise.py``), once per evaluation:

1. ``guider.set_state(step, num_inference_steps, timestep)``;
2. ``batches = guider.prepare_inputs({field: (conditional, unconditional)})``: one batch per model evaluation the
   guider needs (one, ``pred_cond``, where guidance is off; two where it is on), each tagged with its identifier;
3. for each batch: ``guider.prepare_models(denoiser)``, the model's prediction stored as ``batch.noise_pred``,
   ``guider.cleanup_models(denoiser)``;
4. ``guider(batches).pred``: the guided prediction.

:class:`DiffusersGuider` does exactly this with the audit's exact branch predictions as the model's outputs: the
identifier ``pred_cond`` receives the ``cond`` branch, ``pred_uncond`` the ``uncond`` branch, except for
``AutoGuidance``, whose ``pred_uncond`` is the prediction of the degraded (layer-skipped) network, the audit's
``weak`` branch. The denoiser handed to ``prepare_models`` is a small :class:`torch.nn.Module` holding the block
stacks the guider's layer-skip configuration names; the hooks it installs there are never run (the weak prediction is
analytic). :func:`batch_routing` reports what conditioning each batch actually carries, which the identifiers alone
do not say.

:func:`counterpart` names the registered rule (the paper's formula, :mod:`verify.rules`) with the parameters the
guider's documentation promises, and :func:`audit_guider` runs :func:`~verify.conformance.audit_rule` on the pair.

**Guidance strength.** The audit varies ``guidance_scale`` g in diffusers' default convention
(:math:`D_\varnothing + g(D_c - D_\varnothing)`; Ho & Salimans' :math:`w = g - 1`). The adapter rebuilds the guider
with ``guider.new(guidance_scale=...)`` for each value (cached). With ``use_original_formulation=True`` a guider
computes :math:`D_c + s(D_c - D_\varnothing)`, i.e. its ``guidance_scale`` s is Ho & Salimans' w, so the adapter
passes :math:`s = g - 1` (``translate_scale=True``, the default); ``translate_scale=False`` passes g unchanged, the
mistake of a caller who forgets the convention (the audit then diagnoses ``guidance_scale + 1``).

**Step window.** diffusers guides on the steps :math:`\lfloor \mathrm{start}\,n\rfloor \le i <
\lfloor\mathrm{stop}\,n\rfloor` of an n-step run (``_is_cfg_enabled`` and its twins: "fraction of denoising steps")
and returns :math:`D_c` elsewhere; :class:`StepWindow` is that predicate, the audit's ``guided_steps``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .implementations import Call, Implementation, is_diffusers_guider

__all__ = ["DiffusersGuider", "Counterpart", "StepWindow", "counterpart", "audit_guider", "build_guider",
           "batch_routing", "SUPPORTED", "REFUSED"]

Tensor = torch.Tensor
INSTALL_HINT = "diffusers is an optional extra: pip install cfgtruth[diffusers]"

#: the guiders with an analytic counterpart (a registered rule of the branch predictions)
SUPPORTED: tuple[str, ...] = ("ClassifierFreeGuidance", "AdaptiveProjectedGuidance", "ClassifierFreeZeroStarGuidance",
                              "MagnitudeAwareGuidance", "TangentialClassifierFreeGuidance", "AutoGuidance")
#: guiders without one, and why
REFUSED: dict[str, str] = {
    "PerturbedAttentionGuidance": "it guides with a prediction of the network whose self-attention maps are replaced "
                                  "by the identity, a change inside the network that no function of the branch "
                                  "predictions reproduces",
    "SkipLayerGuidance": "it guides with a prediction of the network with chosen transformer layers skipped, a "
                         "change inside the network that no function of the branch predictions reproduces",
    "SmoothedEnergyGuidance": "it guides with a prediction of the network whose attention queries are blurred, a "
                              "change inside the network that no function of the branch predictions reproduces",
    "LTX2Guidance": "its extra passes perturb the network's blocks and cross-modal attention (spatio-temporal and "
                    "modality-isolation guidance), changes inside the network with no analytic counterpart",
    "FrequencyDecoupledGuidance": "it mixes per-frequency-band guidance over a Laplacian pyramid of image latents; "
                                  "no registered rule computes it",
    "AdaptiveProjectedMixGuidance": "it mixes APG and CFG on a schedule of its own; no registered rule computes it",
}


def _diffusers_guiders():
    try:
        import diffusers.guiders as guiders
    except ImportError as err:  # pragma: no cover - the extra is installed where these tests run
        raise ImportError(f"diffusers: {INSTALL_HINT} ({err})") from err
    return guiders


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence diffusers' "guiders are experimental" warning, which every constructor (and ``new``) logs."""
    logger = logging.getLogger("diffusers.guiders.guider_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def build_guider(guider_or_name: Any, params: Mapping[str, Any] | None = None) -> Any:
    """A guider instance from a class name in ``diffusers.guiders``, a guider class, or an instance (``params``: the
    constructor's keyword arguments, applied with ``guider.new(**params)`` to an instance). ``AutoGuidance`` built
    by name without a layer configuration gets the smallest one that works: one block, ``transformer_blocks.0``,
    skipped entirely (``auto_guidance_config={"indices": [0], "fqn": "transformer_blocks", "dropout": 1.0}``)."""
    guiders = _diffusers_guiders()
    params = dict(params or {})
    if isinstance(guider_or_name, str):
        cls = getattr(guiders, guider_or_name, None)
        if not isinstance(cls, type):
            raise ValueError(f"guider_or_name: diffusers.guiders has no guider {guider_or_name!r}; the audited ones "
                             f"are {list(SUPPORTED)}")
        guider_or_name = cls
    if isinstance(guider_or_name, type):
        if not issubclass(guider_or_name, guiders.BaseGuidance):
            raise TypeError(f"guider_or_name: {guider_or_name.__name__} is not a diffusers guider class")
        if guider_or_name.__name__ == "AutoGuidance" and "auto_guidance_layers" not in params \
                and "auto_guidance_config" not in params:
            params["auto_guidance_config"] = {"indices": [0], "fqn": "transformer_blocks", "dropout": 1.0}
        with _quiet():
            return guider_or_name(**params)
    if is_diffusers_guider(guider_or_name):
        if not params:
            return guider_or_name
        with _quiet():
            return guider_or_name.new(**params)
    raise TypeError(f"guider_or_name: expected a diffusers guider, its class or its class name, got "
                    f"{type(guider_or_name).__name__}")


# ----------------------------------------------------------------------------------------------------------------
# The step window and the counterpart
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepWindow:
    """diffusers' guided steps: ``int(start * n) <= step < int(stop * n)`` (``enabled=False``: none)."""

    start: float
    stop: float
    enabled: bool = True

    def __call__(self, step: int, n_steps: int) -> bool:
        return self.enabled and int(self.start * n_steps) <= step < int(self.stop * n_steps)


@functools.cache
def _window(start: float, stop: float, enabled: bool) -> StepWindow:
    # one object per window: the audit caches its rounding bounds by the identity of ``guided_steps``
    return StepWindow(start, stop, enabled)


@dataclass(frozen=True)
class Counterpart:
    """The registered rule a guider promises: ``rule`` with ``params`` (no ``guidance_scale``: the audit varies it),
    guiding on the steps ``guided_steps`` accepts (``None``: all), and a ``note`` on how the pair was matched."""

    rule: str
    params: dict[str, Any] = field(default_factory=dict)
    guided_steps: Callable[[int, int], bool] | None = None
    note: str = ""


def _config(guider: Any, key: str, default: Any = None) -> Any:
    return getattr(guider, key, guider.config.get(key, default))


def counterpart(guider: Any) -> Counterpart:
    r"""The paper's rule, with the parameters the guider's documentation promises (see the module docstring).

    * ``ClassifierFreeGuidance`` -> ``cfg`` (Ho & Salimans 2022, eq. 6); with ``guidance_rescale`` :math:`\phi > 0`
      -> ``rescale`` (Lin et al. 2023, eqs. 15-16) with ``phi`` and ``space="eps"``: diffusers applies
      ``rescale_noise_cfg`` to the model's prediction, eps for the pipelines it serves (the paper uses v);
    * ``AdaptiveProjectedGuidance`` -> ``apg`` (Sadat et al. 2024, Algorithm 1) with ``eta``,
      ``norm_threshold`` = ``adaptive_projected_guidance_rescale`` (0: off, None), ``momentum`` =
      ``adaptive_projected_guidance_momentum`` (None: 0) and ``space="eps"`` (diffusers applies it to the model's
      prediction; the paper to :math:`\hat x_0`); the paper's norms run over every axis of a sample, which is what
      ``adaptive_projected_guidance_norm_dim=None`` promises;
    * ``ClassifierFreeZeroStarGuidance`` -> ``cfg_zero_star`` (Fan et al. 2025, sections 4.1-4.2) with
      ``zero_init_steps`` (0: zero-init off) and ``space="velocity"``: the paper's rule acts on the flow velocity,
      and diffusers zeroes whatever it is fed; fed eps it would zero eps, which is not the paper's rule;
    * ``MagnitudeAwareGuidance`` -> ``magnitude_aware`` (Zhu et al. 2025) with ``alpha``, ``space="velocity"``
      (the paper's flow models);
    * ``TangentialClassifierFreeGuidance`` -> ``tangential_cfg`` (Kwon et al. 2025), ``space="eps"``;
    * ``AutoGuidance`` -> ``autoguidance`` (Karras et al. 2024, sections 2-3), branches ``weak`` and ``cond``.

    ``start``/``stop`` (and ``enabled``) give ``guided_steps`` (:class:`StepWindow`); ``guidance_rescale > 0`` on any
    guider but CFG is refused (no registered rule composes it), as are the guiders of :data:`REFUSED` (their
    guidance reads the network's internals) and any other object, with a ``ValueError``/``TypeError`` saying why.
    """
    if not is_diffusers_guider(guider):
        raise TypeError(f"guider: expected a diffusers guider instance, got {type(guider).__name__}")
    name = type(guider).__name__
    if name in REFUSED:
        raise ValueError(f"guider: {name} has no analytic counterpart: {REFUSED[name]}")
    if name not in SUPPORTED:
        raise ValueError(f"guider: {name} has no registered counterpart rule; audited guiders: {list(SUPPORTED)}")
    rescale = float(_config(guider, "guidance_rescale", 0.0) or 0.0)
    if rescale > 0.0 and name != "ClassifierFreeGuidance":
        raise ValueError(f"guider: {name} with guidance_rescale={rescale} has no registered counterpart (guidance "
                         f"rescale after {name}); audit it with guidance_rescale=0")
    start, stop = float(guider._start), float(guider._stop)
    enabled = bool(guider._enabled)
    window = None if (enabled and start == 0.0 and stop == 1.0) else _window(start, stop, enabled)
    original = bool(_config(guider, "use_original_formulation", False))
    conv = (" use_original_formulation=True: the guider's guidance_scale is Ho & Salimans' w, the adapter passes "
            "g - 1." if original else "")
    if name == "ClassifierFreeGuidance":
        if rescale > 0.0:
            return Counterpart("rescale", {"phi": rescale, "space": "eps"}, window,
                               "guidance_rescale applied to the model's prediction (eps), as rescale_noise_cfg does; "
                               "the paper applies it to v." + conv)
        return Counterpart("cfg", {}, window, "classifier-free guidance." + conv)
    if name == "AdaptiveProjectedGuidance":
        threshold = float(_config(guider, "adaptive_projected_guidance_rescale", 15.0) or 0.0)
        momentum = _config(guider, "adaptive_projected_guidance_momentum", None)
        norm_dim = _config(guider, "adaptive_projected_guidance_norm_dim", None)
        note = "APG on the model's prediction (eps), the paper's norms over every axis of a sample."
        if norm_dim is not None:
            note += f" adaptive_projected_guidance_norm_dim={norm_dim!r}: the guider's norms run over those axes only."
        return Counterpart("apg", {"eta": float(_config(guider, "eta", 1.0)),
                                   "norm_threshold": threshold if threshold > 0.0 else None,
                                   "momentum": 0.0 if momentum is None else float(momentum), "space": "eps"},
                           window, note + conv)
    if name == "ClassifierFreeZeroStarGuidance":
        steps = int(_config(guider, "zero_init_steps", 1))
        params: dict[str, Any] = {"use_zero_init": steps >= 1, "space": "velocity"}
        if steps >= 1:
            params["zero_init_steps"] = steps
        return Counterpart("cfg_zero_star", params, window,
                           "audited on velocity predictions, the paper's space (diffusers zeroes whatever it is fed "
                           "during zero-init, which is the paper's rule only for a velocity)." + conv)
    if name == "MagnitudeAwareGuidance":
        return Counterpart("magnitude_aware", {"alpha": float(_config(guider, "alpha", 8.0)), "space": "velocity"},
                           window, "audited on velocity predictions, the paper's flow models' space." + conv)
    if name == "TangentialClassifierFreeGuidance":
        return Counterpart("tangential_cfg", {"space": "eps"}, window, "TCFG on eps predictions." + conv)
    return Counterpart("autoguidance", {}, window,
                       "the guider's pred_uncond is the degraded (layer-skipped) network's prediction, the rule's "
                       "weak branch." + conv)


# ----------------------------------------------------------------------------------------------------------------
# The adapter
# ----------------------------------------------------------------------------------------------------------------
def _tiny_block() -> torch.nn.Module:
    """diffusers' ``BasicTransformerBlock`` at width 4 (one head of 4): a block class its layer-skip hooks know."""
    from diffusers.models.attention import BasicTransformerBlock

    return BasicTransformerBlock(dim=4, num_attention_heads=1, attention_head_dim=4)


class _Blocks(torch.nn.Module):
    """A stand-in denoiser: the block stacks a layer-skip configuration names (``fqn``), each of tiny diffusers
    transformer blocks. Its forward is never run: the hooks installed on it say which evaluation is the degraded
    one."""

    def __init__(self, stacks: Mapping[str, int]):
        super().__init__()
        for fqn, count in stacks.items():
            owner: torch.nn.Module = self
            *path, last = fqn.split(".")
            for part in path:
                if not hasattr(owner, part):
                    owner.add_module(part, torch.nn.Module())
                owner = getattr(owner, part)
            owner.add_module(last, torch.nn.ModuleList([_tiny_block() for _ in range(count)]))

    def perturbed(self) -> bool:
        """Whether a diffusers hook is installed on any submodule now."""
        return any(getattr(getattr(m, "_diffusers_hook", None), "hooks", None) for m in self.modules())


def _stand_in(guider: Any) -> _Blocks:
    stacks: dict[str, int] = {}
    for config in getattr(guider, "auto_guidance_config", None) or []:
        indices = config.indices if isinstance(config.indices, (list, tuple)) else [config.indices]
        fqn = "transformer_blocks" if config.fqn == "auto" else config.fqn
        stacks[fqn] = max(stacks.get(fqn, 1), max((int(i) + 1 for i in indices), default=1))
    return _Blocks(stacks or {"transformer_blocks": 1})


#: the conditioning markers handed to ``prepare_inputs``: index 0 of each pair is the conditional input, 1 the
#: unconditional (negative) one, as the modular pipelines pass (prompt_embeds, negative_prompt_embeds)
_MARKERS = {"cond": 1.0, "uncond": 0.0}


class DiffusersGuider(Implementation):
    """A diffusers guider instance as an :class:`~verify.conformance.implementations.Implementation` (see the module
    docstring). ``translate_scale``: pass ``g - 1`` to a guider with ``use_original_formulation=True``."""

    may_alias = True
    alias_reason = ("diffusers guiders return pred_cond itself where guidance is off (outside start/stop, or at "
                    "guidance_scale 1); harmless in its pipelines, whose schedulers never write into the model "
                    "output")

    def __init__(self, guider: Any, *, translate_scale: bool = True, name: str | None = None):
        if not is_diffusers_guider(guider):
            raise TypeError(f"guider: expected a diffusers guider instance, got {type(guider).__name__}")
        self.guider, self.translate_scale = guider, bool(translate_scale)
        self.original = bool(_config(guider, "use_original_formulation", False))
        self.weak = type(guider).__name__ == "AutoGuidance"
        self.name = name or _describe(guider)
        self._by_scale: dict[float, Any] = {}
        self._module = _stand_in(guider)

    def guider_for(self, guidance_scale: float | None) -> Any:
        """The guider rebuilt at diffusers' ``guidance_scale`` (translated for the original formulation)."""
        if guidance_scale is None:
            return self.guider
        g = float(guidance_scale)
        if g not in self._by_scale:
            s = g - 1.0 if (self.original and self.translate_scale) else g
            with _quiet():
                self._by_scale[g] = self.guider.new(guidance_scale=s)
        return self._by_scale[g]

    def branch(self, identifier: str) -> str:
        """The audit's branch whose prediction the guider expects under ``identifier``."""
        if identifier == "pred_cond":
            return "cond"
        if identifier == "pred_uncond":
            return "weak" if self.weak else "uncond"
        raise ValueError(f"guider: batch identifier {identifier!r} names a prediction of a perturbed network, which "
                         f"the audit cannot give")

    def __call__(self, call: Call) -> Any:
        guider = self.guider_for(call.params.get("guidance_scale"))
        guider.set_state(step=call.step, num_inference_steps=call.n_steps,
                         timestep=torch.tensor(call.t, dtype=torch.float64))
        like = next(iter(call.preds.values()))
        marks = tuple(torch.full((like.shape[0], 1), _MARKERS[b], dtype=like.dtype) for b in ("cond", "uncond"))
        batches = guider.prepare_inputs({"condition": marks})
        for batch in batches:
            guider.prepare_models(self._module)
            batch.noise_pred = call.preds[self.branch(getattr(batch, guider._identifier_key))]
            guider.cleanup_models(self._module)
        return guider(batches).pred


def _describe(guider: Any) -> str:
    defaults = {}
    try:
        import inspect

        defaults = {k: p.default for k, p in inspect.signature(type(guider).__init__).parameters.items()}
    except (TypeError, ValueError):  # pragma: no cover - every guider has a plain __init__
        pass
    changed = [f"{k}={v!r}" for k, v in guider.config.items() if not k.startswith("_") and defaults.get(k, v) != v]
    return f"diffusers.guiders.{type(guider).__name__}({', '.join(changed)})"


def batch_routing(guider: Any, *, step: int = 0, n_steps: int = 1) -> list[tuple[str, str, bool]]:
    """What the guider asks the model for at one step: per batch ``(identifier, conditioning, degraded)``, the
    conditioning being ``"cond"`` or ``"uncond"`` (index 0 or 1 of each (conditional, negative) pair the pipeline
    passes) and ``degraded`` whether ``prepare_models`` left hooks on the network for that evaluation."""
    adapter = DiffusersGuider(guider)
    guider.set_state(step=step, num_inference_steps=n_steps, timestep=torch.tensor(0.5))
    marks = (torch.full((1, 1), _MARKERS["cond"]), torch.full((1, 1), _MARKERS["uncond"]))
    out = []
    for batch in guider.prepare_inputs({"condition": marks}):
        guider.prepare_models(adapter._module)
        degraded = adapter._module.perturbed()
        guider.cleanup_models(adapter._module)
        conditioning = "cond" if float(batch.condition.flatten()[0]) == _MARKERS["cond"] else "uncond"
        out.append((getattr(batch, guider._identifier_key), conditioning, degraded))
    return out


def audit_guider(guider_or_name: Any, *, params: Mapping[str, Any] | None = None, strengths: Any = "grid",
                 seed: int = 0, progress: bool | Callable[[str], None] = False, diagnose: bool = True):
    """Audit a diffusers guider against its :func:`counterpart` through its own API (:class:`DiffusersGuider`).

    ``guider_or_name``: a class name in ``diffusers.guiders``, a guider class or an instance; ``params`` its
    constructor's keyword arguments. ``strengths``: as :func:`~verify.conformance.audit_rule` (``"grid"``: the six
    guidance scales; ``None``: the guider's own ``guidance_scale``, read in diffusers' default convention). Returns
    the :class:`~verify.conformance.RuleAudit`. Raises ``ImportError`` (naming ``pip install cfgtruth[diffusers]``)
    when diffusers is missing."""
    from .rule_audit import audit_rule

    named = guider_or_name if isinstance(guider_or_name, str) else getattr(guider_or_name, "__name__", None)
    if named in REFUSED:  # before building: their constructors demand the layers they perturb
        raise ValueError(f"guider: {named} has no analytic counterpart: {REFUSED[named]}")
    guider = build_guider(guider_or_name, params)
    match = counterpart(guider)
    rule_params = dict(match.params)
    if strengths is None:
        s = float(guider.guidance_scale)
        rule_params["guidance_scale"] = s + 1.0 if _config(guider, "use_original_formulation", False) else s
    return audit_rule(DiffusersGuider(guider), match.rule, params=rule_params, strengths=strengths,
                      guided_steps=match.guided_steps, seed=seed, diagnose=diagnose, progress=progress)

