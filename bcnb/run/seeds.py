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

    # A kernel that ran another notebook before (bcnb reproduce runs a run's notebooks in one)
    # starts from Keras' first state again: layers are numbered from the start, as in a new kernel.
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
