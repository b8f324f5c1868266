"""The grounding tower: RegisterViT (load, q/k/v of every layer), its pixel processor, and the facts read off its
output (q/k as attention sees them, rotary tables, register artifacts)."""

from .attention import attention_qk, strided_grid, strided_rope
from .backbone import RegisterViT, TowerConfig, TowerOutput, WeightsNotFoundError
from .processing import PreprocessConfig, TowerProcessor

__all__ = ["PreprocessConfig", "TowerProcessor", "RegisterViT", "TowerConfig", "TowerOutput", "WeightsNotFoundError",
           "attention_qk", "strided_grid", "strided_rope"]
