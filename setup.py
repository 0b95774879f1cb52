from setuptools import find_packages, setup

# Triton ships wheels for Linux x86_64 only; elsewhere vitcore runs its eager paths.
TRITON = 'triton; platform_system == "Linux" and platform_machine == "x86_64"'
TIMM = "timm>=1.0"  # 1.0: the Attention layout vitcore.timm_attention routes (tested: 1.0.31)

setup(
    name="vitcore",
    version="0.1.0",
    description="Fast zero-cost proxies for Vision Transformer search: Triton kernels, "
    "a ViT search space, proxies, ranking and cost models.",
    python_requires=">=3.9",
    packages=find_packages(include=["vitcore", "vitcore.*"]) + ["vitcore.kernels"],  # every subpackage
    package_dir={"vitcore.kernels": "kernels"},
    package_data={"vitcore": ["truth/*.csv", "truth/*.md"]},  # the built-in ground truth of `vitcore evaluate`
    install_requires=[
        "torch>=2.3",
        "numpy",
        "scipy",
        "scikit-learn",  # its bundled digits data set is the built-in real data
        "tqdm",  # progress bars for long runs
        "matplotlib",  # the scatter plots of `vitcore evaluate` and the plots of `vitcore bench`
        TRITON,
    ],
    # timm: its models as a family (vitcore score --family timm, vitcore.timm_attention). timm imports
    # torchvision, which needs the torch build it was made for: see .ci/run for the pair CI installs.
    extras_require={"timm": [TIMM], "test": ["pytest", "pytest-benchmark", TIMM]},
    entry_points={"console_scripts": ["vitcore = vitcore.cli:main"]},
)
