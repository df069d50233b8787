"""Native PyTorch model code: Qwen3 dense, Qwen3-MoE, GLM-4.5-Air, each with tiny flavours."""

from core.models.common import CausalLM, ModelArgs

__all__ = ["CausalLM", "ModelArgs"]
