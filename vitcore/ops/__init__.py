"""vitcore's ops: each an autograd Function, its eager reference ``<op>_ref``, and the dispatch."""
from vitcore.ops.attention import attention_ref, flash_attention, load_tuned, save_tuned
from vitcore.ops.dispatch import use_triton
from vitcore.ops.param_stats import param_stats, param_stats_ref

__all__ = ["attention_ref", "flash_attention", "load_tuned", "param_stats", "param_stats_ref", "save_tuned",
           "use_triton"]
