"""The MSA sweep's grid and the ``vitcore bench`` options (plain Python: the CLI reads them to build its parser).

``MODES`` are the sweep's modes (forward, forward + backward), not the proxies' grad_norm modes
(``vitcore.proxies.GRAD_NORM_MODES``).
"""
import math

SWEEP_N = (16, 32, 50, 64, 128, 197, 256, 512, 577, 1024, 1025, 2048, 4096)  # powers of two + ViT sizes
SWEEP_D = (192, 384, 768, 1024)  # ViT-Ti, -S, -B, -L widths
QUICK_N = (16, 50, 64, 128, 197, 256)  # --quick: a CPU-sized sweep (under a minute on two cores)
QUICK_D = (192, 384)
HEAD_DIM = 64  # d; H = D / 64 as in ViT-Ti..L
PROVIDERS = ("eager", "sdpa", "vitcore")
MODES = ("fwd", "fwd+bwd")


def budget_ms(text: str) -> float:
    """``--budget-ms``: a finite number of milliseconds (inf would never end, nan times nothing)."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--budget-ms {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"--budget-ms {text!r} must be a finite number of milliseconds")
    return value


def add_arguments(p) -> None:
    """The ``vitcore bench`` options, added to an argparse (sub)parser."""
    p.add_argument("--out", help="report folder, which must hold no run yet (default "
                   "bench/results/<device>-<date>-msa-scaling, then -2, -3, ... if that one does)")
    p.add_argument("--quick", action="store_true", help=f"CPU-sized sweep: N' {QUICK_N}, D {QUICK_D}")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--dtype", help="comma-separated fp32,bf16,fp16 (default bf16,fp32 on CUDA, fp32 on CPU)")
    p.add_argument("--providers", default=",".join(PROVIDERS), help=f"comma-separated: {', '.join(PROVIDERS)}")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated: {', '.join(MODES)}")
    p.add_argument("--n", help="comma-separated N' values (overrides the sweep's)")
    p.add_argument("--d", help=f"comma-separated D values, multiples of {HEAD_DIM} (overrides the sweep's)")
    p.add_argument("--tokens", type=int, help="B·N' per call (default 16384 on CUDA, 1024 on CPU)")
    p.add_argument("--budget-ms", help="milliseconds per measurement, finite (default 10 on CUDA, 50 on CPU)")
    p.add_argument("--windows", type=int, help="timing windows per measurement, median taken (default 5 CUDA, 3 CPU)")
    p.add_argument("--repeat", type=int, default=1,
                   help="passes over the whole sweep, median taken per measurement (for a shared, noisy host)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--graphs", action="store_true",
                   help="CUDA only: time replays of each call captured in a CUDA graph (GPU time, no launch cost)")
    p.add_argument("--no-plots", action="store_true", help="write report.md and results.json only")
    p.add_argument("--report-only", action="store_true",
                   help="re-analyse --out's results.json (a finished or interrupted run) and rewrite the report")
