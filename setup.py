"""narlm: non-autoregressive language models (NAG-BERT + dynamic CRF) in JAX."""

import pathlib

import setuptools

HERE = pathlib.Path(__file__).resolve().parent

# Pinned to the versions that install and run together (jax 0.10 / flax 0.12 /
# TF 2.21); widen a pin only after the test suite passes on the new version.
INSTALL_REQUIRES = [
    "jax[cpu]==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "gin-config==0.5.0",
    "clu==0.0.12",
    "seqio==0.0.20",
    "tensorflow-cpu==2.21.0",
    "tensorflow-text==2.21.1",
    "tensorflow-datasets==4.9.10",
    "tensorboard==2.21.0",
    "sentencepiece==0.2.3",
    "tokenizers==0.23.3",
    "safetensors==0.8.0",
    "rouge-score==0.1.2",
    "sacrebleu==2.6.0",
    "numpy>=2.0,<3",
]

# torch CPU + transformers are test/benchmark-only: the HF numerics tests and
# `python -m narlm.bench` compare narlm's encoder against transformers.BertModel.
TORCH_REQUIRES = ["torch==2.13.0", "transformers==5.23.0"]
# `python -m narlm.plots` (PNGs of the bench and quality results).
PLOT_REQUIRES = ["matplotlib==3.11.2"]

EXTRAS_REQUIRE = {
    "test": [
        "pytest==9.2.0",
        *TORCH_REQUIRES,
        *PLOT_REQUIRES,
        # drives Debian's chromium (no browser download) in the demo-page test
        "playwright==1.65.2",
    ],
    "bench": [*TORCH_REQUIRES, *PLOT_REQUIRES],
}

setuptools.setup(
    name="narlm",
    version="0.1.0",
    description="Non-autoregressive text generation (NAG-BERT with a dynamic CRF) in JAX/Flax",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=setuptools.find_packages(include=["narlm", "narlm.*"]),
    package_data={"narlm": ["gin/*.gin", "gin/*/*.gin", "gin/*/*/*.gin", "static/*"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": [
        "narlm-train=narlm.train:console_main",
        "narlm-serve=narlm.serve:console_main",
    ]},
)
