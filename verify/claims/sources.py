"""How the records cite the two source texts: by number, title and date."""

from __future__ import annotations

__all__ = ["S0", "S1"]

S0 = "source 000, 'Classifier Guidance에서 Negative Prompt까지, 조건부 생성의 수학' (2026-05-03)"
S1 = "source 001, 'Classifier-Free Guidance 논문 리뷰: 조건부 생성 모델의 핵심 기법 완전 정리' (2026-02-06)"
