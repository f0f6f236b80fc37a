from setuptools import find_packages, setup

setup(
    name="superloop_cell",
    version="0.1.0",
    description=(
        "Memory-augmented RNNs (superloops) as one Keras 3 RNN cell: an RNN "
        "stack and its external systems in one fused step."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["superloop_cell", "superloop_cell.*"]),
    python_requires=">=3.10",
    # Keras 3.7 brought the `mean_with_sample_weight` loss reduction the
    # tests use; the suite runs on Keras 3.15.
    install_requires=["keras>=3.7", "numpy"],
    # One backend per extra; `.[dev]` brings all three and what the tests
    # need. Install `torch==2.13.0` first on a CPU machine (see README).
    extras_require={
        "tensorflow": ["tensorflow>=2.18", "tensorboard"],
        "jax": ["jax>=0.4.34"],
        "torch": ["torch>=2.1"],
        "dev": ["tensorflow>=2.18", "tensorboard", "jax>=0.4.34",
                "torch>=2.1", "pytest", "pytest-xdist", "matplotlib"],
        "plots": ["matplotlib"],
        "profile": ["tensorboard-plugin-profile"],
    },
)
