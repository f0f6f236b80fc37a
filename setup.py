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
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.0",
        "numpy",
        "tensorboard",
    ],
    extras_require={
        "dev": ["pytest", "pytest-xdist", "matplotlib", "jax"],
        "plots": ["matplotlib"],
        "profile": ["tensorboard-plugin-profile"],
    },
)
