"""The grounding tower: RegisterViT (load, preprocess, q/k/v of every layer) and the facts read off its output."""

from .backbone import PreprocessConfig, RegisterViT, TowerConfig, TowerOutput, WeightsNotFoundError

__all__ = ["PreprocessConfig", "RegisterViT", "TowerConfig", "TowerOutput", "WeightsNotFoundError"]
