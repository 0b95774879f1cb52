"""vitcore's ops: each an autograd Function, its eager reference ``<op>_ref``, and the dispatch."""
from vitcore.ops.attention import attention_ref, flash_attention
from vitcore.ops.dispatch import use_triton
from vitcore.ops.param_stats import param_stats, param_stats_ref

__all__ = ["attention_ref", "flash_attention", "param_stats", "param_stats_ref", "use_triton"]
