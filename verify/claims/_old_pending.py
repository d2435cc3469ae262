"""Claims that need the samplers or the trained network: recorded as pending, each with what will decide it.

Nothing here is marked holds or fails; the sampling issue and the network issue add evidence to these records.
"""

from __future__ import annotations

from . import ClaimRecord, RunConfig
from ._common import S0, S1

_PENDING = (
    ("S0-NULL-TOKEN", f"{S0}, 'Cross-Attention' section, last paragraph",
     "conditioning dropout with a null embedding (zero vector or learned null token) makes the unconditional branch "
     "usable for CFG",
     "the trained network's null-token branch against the exact unconditional score, by t (network issue)"),
    ("S0-XATTN", f"{S0}, 'Cross-Attention' section",
     "with image features as queries and text tokens as keys/values, each position attends to the tokens that "
     "describe it",
     "attention mass each position of tokens16d puts on the token controlling its block, in the trained network"),
    ("S0-PROP2-SAMPLES", f"{S0}, 명제 2 (Proposition 2), proof",
     "the trajectory following the augmented score converges to p(x|c)^(1+w) p(x)^(-w)",
     "the law each sampler (probability-flow ODE, reverse SDE, DDIM, DDPM) produces against the tilted target, by w, "
     "for gauss1d and bimodal1d (moment ODEs, quadrature and Fokker-Planck references): the sampling issue. The "
     "per-t score identity it rests on is S0-PROP2-SCORE"),
    ("S0-QUALITY-DIVERSITY", f"{S0}, '트레이드오프 요약', first bullet",
     "raising w improves FID (quality) and lowers recall (diversity)",
     "precision, recall and Frechet distance of guided samples against w, from the exact densities"),
    ("S0-THRESHOLDING", f"{S0}, '트레이드오프 요약', third bullet",
     "for w > 10 values leave the training range; Imagen's dynamic thresholding is recommended",
     "fraction of x0-predictions out of the data range along guided trajectories against w, and the bias dynamic "
     "thresholding introduces in the sampled law"),
    ("S1-DROPOUT", f"{S1}, '학습 단계'",
     "p_uncond of 0.1 to 0.2 is effective",
     "networks retrained with p_uncond in {0, 0.05, 0.1, 0.2, 0.5}: conditional and unconditional score error and "
     "guided-sample quality (network issue)"),
    ("S1-SCALE-TABLE", f"{S1}, 'Guidance Scale에 따른 변화' table",
     "scale 0: unconditional; 1: the training distribution as is; 3-5 balance; 7-15 strong adherence; 20+ "
     "oversaturation and artifacts",
     "sampled laws and out-of-range fractions at those scales (samplers); 'as is' at scale 1 also needs an exact "
     "model (network issue)"),
    ("S1-FID-IS", f"{S1}, '논문의 주요 실험 결과'",
     "CFG reaches a trade-off equal to or better than classifier guidance's without a classifier",
     "quality/diversity curves of CFG and classifier guidance on an imperfect network (network issue)"),
    ("L-DDIM-DDPM", "Bradley & Nakkiran 2024, 'Classifier-Free Guidance is a Predictor-Corrector'",
     "CFG with DDIM (ODE) and with DDPM (SDE) produce different laws, neither of them the tilted target",
     "exact laws of the guided ODE and SDE against the tilted target (the sampling issue)"),
    ("L-OVERSHOOT", "Chidambaram et al. 2024, 'What does guidance do? A fine-grained analysis in a simple setting'",
     "guidance pushes samples away from the other classes, towards the extremes of the class's support",
     "sampled mass and mean displacement against w on bimodal1d and ring2d (the sampling issue)"),
    ("L-INTERVAL", "Kynkaanniemi et al. 2024, 'Applying guidance in a limited interval improves sample and "
                   "distribution quality'",
     "guidance applied only at middle noise levels keeps quality and recovers diversity",
     "samples with verify.rules' interval rule (noise levels sigma/alpha in an interval) against full "
     "guidance: Frechet distance, precision, recall"),
    ("L-RESCALE", "Lin et al. 2023, 'Common diffusion noise schedules and sample steps are flawed', section 3.4",
     "rescaling the guided prediction's standard deviation to the conditional one's fixes overexposure at high scales",
     "the sampled law with and without verify.rules' rescale rule against w (the sampling issue)"),
)


def evaluate(config: RunConfig) -> list[ClaimRecord]:
    return [ClaimRecord(id=cid, source=src, statement=stmt, procedure="not evaluated yet", verdict="pending",
                        evidence={"decided_by": decider}, uncertainty="n/a",
                        headline="pending: " + decider.split(" (")[0].split(": ")[0])
            for cid, src, stmt, decider in _PENDING]
