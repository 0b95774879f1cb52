"""vitcore: fast zero-cost proxies for Vision Transformer architecture search."""
from vitcore.cost import msa_macs, vit_cost
from vitcore.data import Batch, load_batch
from vitcore.families import get_family
from vitcore.model import ViT, ViTConfig, msa
from vitcore.pit import PiT, PiTConfig
from vitcore.proxies import PROXIES, ProxyFailed, score
from vitcore.runs import read_archs, read_results, run_scoring, score_archs
from vitcore.space import SPACES, Arch, PiTArch, PiTSpace, SearchSpace, arch_from_dict, get_space, sample
from vitcore.timm_attention import use_vitcore_attention

__all__ = ["ViT", "ViTConfig", "msa", "PiT", "PiTConfig", "PROXIES", "ProxyFailed", "score", "SPACES", "Arch", "PiTArch",
           "PiTSpace", "SearchSpace", "arch_from_dict", "get_space", "sample",
           "msa_macs", "vit_cost", "Batch", "load_batch", "score_archs", "run_scoring", "read_archs", "read_results",
           "get_family", "use_vitcore_attention"]
