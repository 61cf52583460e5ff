"""The settings and recipe of the long-range experiments (no TensorFlow import: the CLI reads
them to build its --help)."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Setting:
    """One way to train the Elman network.

    Attributes:
        activation: f.
        identity_init: W starts as the identity (the IRNN recipe of Le et al. 2015) instead of
            a random orthogonal matrix.
        clipnorm: gradient clipping by global norm, or None.
        truncate: truncated BPTT with k steps (`TruncatedBackprop`), or None for full BPTT.
        description: what the table says.
    """

    activation: str
    identity_init: bool = False
    clipnorm: float = None
    truncate: int = None
    description: str = ""


SETTINGS = {
    "tanh": Setting("tanh", clipnorm=1.0, description="tanh, orthogonal W, clipnorm 1"),
    "tanh-noclip": Setting("tanh", description="tanh, orthogonal W, no clipping"),
    "relu": Setting("relu", clipnorm=1.0, description="relu, orthogonal W, clipnorm 1"),
    "relu-noclip": Setting("relu", description="relu, orthogonal W, no clipping"),
    "irnn": Setting("relu", identity_init=True, clipnorm=1.0,
                    description="relu, W = identity (IRNN), clipnorm 1"),
    "irnn-noclip": Setting("relu", identity_init=True,
                           description="relu, W = identity (IRNN), no clipping"),
    "tbptt": Setting("tanh", clipnorm=1.0, truncate=10,
                     description="tanh, clipnorm 1, truncated BPTT k=10"),
}

EXPERIMENTS = ("adding", "copy")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """How each run of an experiment trains.

    Attributes:
        lengths: the sequence lengths (adding) or delays (copy) to try.
        settings: names from `SETTINGS`.
        units: size of the state.
        steps: optimizer steps per run.
        batch_size: sequences per step.
        learning_rate: Adam's learning rate.
        train_sequences: size of the fixed training set (generated once per length).
        test_sequences: size of the test set (another seed).
        seed: seeds the data and the weights.
        jit_compile: compile the training step with XLA (about 2x faster on CPU).
    """

    lengths: tuple = (10, 50, 100, 200, 400)
    settings: tuple = tuple(SETTINGS)
    units: int = 64
    steps: int = 2000
    batch_size: int = 64
    learning_rate: float = 1e-3
    train_sequences: int = 10000
    test_sequences: int = 1000
    seed: int = 0
    jit_compile: bool = True
