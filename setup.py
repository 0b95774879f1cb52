from setuptools import setup

# Triton ships wheels for Linux x86_64 only; elsewhere vitcore runs its eager paths.
TRITON = 'triton; platform_system == "Linux" and platform_machine == "x86_64"'

setup(
    name="vitcore",
    version="0.1.0",
    description="Fast zero-cost proxies for Vision Transformer search: Triton kernels, "
    "a ViT search space, proxies, ranking and cost models.",
    python_requires=">=3.9",
    packages=["vitcore", "vitcore.ops", "vitcore.proxies", "vitcore.bench", "vitcore.kernels"],
    package_dir={"vitcore.kernels": "kernels"},
    install_requires=[
        "torch>=2.3",
        "numpy",
        "scipy",
        "scikit-learn",  # its bundled digits data set is the built-in real data
        "tqdm",  # progress bars for long runs
        "matplotlib",  # the scatter plots of `vitcore evaluate` and the plots of `vitcore bench`
        TRITON,
    ],
    extras_require={"test": ["pytest", "pytest-benchmark"]},
    entry_points={"console_scripts": ["vitcore = vitcore.cli:main"]},
)
