"""One place to seed every random number generator a run uses."""

from __future__ import annotations


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow/Keras (weight initialisation, dropout, shuffling).

    Call it first in every notebook, before any model is built *or loaded*: a loaded model's
    Dropout layer draws its own random state when it is created.
    """
    from bcnb.run.nativelog import import_tensorflow_quietly

    import_tensorflow_quietly()  # the first import of TensorFlow in a notebook, without its noise
    import keras

    keras.utils.set_random_seed(seed)
