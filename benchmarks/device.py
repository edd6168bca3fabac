"""The model work of the demo and of the protocol, timed on whatever Keras backend is there.

    .venv/bin/python benchmarks/device.py --images 256            # here: TensorFlow on the CPU
    KERAS_BACKEND=jax python3 benchmarks/device.py --out DIR      # a GPU machine: Keras on JAX

It builds bcnb's own transfer model (``bcnb.model.transfer.build_model``: ResNet50V2 with random
weights, frozen, GlobalAveragePooling2D -> Dropout(0.2) -> Dense(1, sigmoid)) and times the three
pieces of model work a run is made of:

- **extraction**: the pooled features of ``--images`` random 224x224 images through
  ``predict`` in batches of 64 (``bcnb.train.features.EXTRACTION_BATCH``), in float32 and
  mixed_bfloat16; the first call (tracing, compiling) is timed apart;
- **head**: 100 epochs of the paper's head on random 2,048-feature vectors, compiled as notebook
  03 compiles it (Adam, binary cross-entropy, accuracy, 64 steps a call), batches of 16, at the
  sizes of the built-in data, of BreakHis and of one BreakHis magnification;
- **head in one loop** (JAX only): the same 100 epochs as one compiled `lax.scan`, with no
  callbacks: the floor that per-step overhead sits on;
- **through the base**: training steps of the whole model (the base frozen, called with
  ``training=False``), what a run without the feature cache pays every epoch.

Only Keras and bcnb's model module are used, so it runs where TensorFlow is not installed (the
lent GPU machines have JAX, not TensorFlow): it times the model, not bcnb's tf.data pipeline.
It prints a table and, with ``--out``, writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from head_training import features_and_split  # noqa: E402  (the same features, one recipe)

from bcnb.model.transfer import build_model, feature_extractor, new_head  # noqa: E402

# (train rows, validation rows) of a 60/20/20 patient split: 480 built-in images, BreakHis'
# 7,909, and one of its four magnifications (about a quarter).
HEAD_SIZES = {"demo": (288, 96), "breakhis": (4745, 1582), "one magnification": (1186, 396)}
EPOCHS = 100
BATCH = 16  # the paper's batch size (configs/paper_breakhis.yaml)
EXTRACTION_BATCH = 64
STEPS_PER_CALL = 64  # bcnb.train.fit.HEAD_STEPS_PER_CALL


def machine() -> str:
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
        return f"Keras {keras.__version__} on JAX {jax.__version__}: {devices}"
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = len(tf.config.list_physical_devices("GPU"))
        cores = os.cpu_count()
        return f"Keras {keras.__version__} on TensorFlow {tf.__version__}, {cores} CPU cores, {gpus} GPU(s)"
    return f"Keras {keras.__version__} on {backend}"


def rate(first: float, images: int, seconds: float) -> dict:
    return {"first_call_s": first, "images": images, "seconds": seconds, "images_per_s": images / seconds}


def random_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 224, 224, 3), dtype=np.uint8).astype(np.float32)


def time_extraction(images: np.ndarray, precision: str) -> dict:
    """Seconds of the first predict call (compiling) and images/s of the next full pass."""
    keras.utils.set_random_seed(0)
    extractor = feature_extractor(build_model(224, None, precision=precision))
    start = time.perf_counter()
    extractor.predict(images[:EXTRACTION_BATCH], batch_size=EXTRACTION_BATCH, verbose=0)
    first = time.perf_counter() - start
    start = time.perf_counter()
    features = extractor.predict(images, batch_size=EXTRACTION_BATCH, verbose=0)
    seconds = time.perf_counter() - start
    assert features.shape == (len(images), 2048) and np.isfinite(features).all()
    return rate(first, len(images), seconds)


def time_head(n_train: int, n_val: int, learning_rate: float = 0.001) -> dict:
    """100 epochs of the head, as notebook 03 compiles and fits it (every epoch run)."""
    x, y, _ = features_and_split(n_train, n_val)
    keras.utils.set_random_seed(0)
    head = new_head(2048)
    head.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=STEPS_PER_CALL,
    )
    start = time.perf_counter()
    history = head.fit(
        x[:n_train],
        y[:n_train],
        batch_size=BATCH,
        epochs=EPOCHS,
        validation_data=(x[n_train:], y[n_train:]),
        validation_batch_size=256,
        verbose=0,
    )
    seconds = time.perf_counter() - start
    return {"rows": [n_train, n_val], "seconds": seconds, "val_accuracy": history.history["val_accuracy"][-1]}


def time_head_one_loop(n_train: int, n_val: int, learning_rate: float = 0.001) -> dict | None:
    """The floor under ``time_head`` on JAX: the same 100 epochs (shuffled batches of 16, dropout
    0.2, Adam, binary cross-entropy, the validation loss every epoch) as one compiled loop, with
    no callbacks and no per-call round trips. None on other backends."""
    if keras.backend.backend() != "jax":
        return None
    import jax
    import jax.numpy as jnp

    x, y = (jnp.asarray(array) for array in features_and_split(n_train, n_val)[:2])
    steps = n_train // BATCH  # whole batches only: a floor, not bcnb's exact epochs

    def loss_of(params, xb, yb, key):
        keep = jax.random.bernoulli(key, 0.8, xb.shape)
        logits = (jnp.where(keep, xb / 0.8, 0.0) @ params[0])[:, 0] + params[1][0]
        return jnp.mean(jnp.logaddexp(0.0, logits) - yb * logits)

    def step(state, inputs):
        params, m, v, t = state
        rows, key = inputs
        grads = jax.grad(loss_of)(params, x[rows], y[rows], key)
        t = t + 1
        m = [0.9 * a + 0.1 * g for a, g in zip(m, grads)]
        v = [0.999 * a + 0.001 * g * g for a, g in zip(v, grads)]
        lr = learning_rate * jnp.sqrt(1 - 0.999**t) / (1 - 0.9**t)
        params = [p - lr * a / (jnp.sqrt(b) + 1e-7) for p, a, b in zip(params, m, v)]
        return (params, m, v, t), None

    def epoch(state, key):
        order, dropout = jax.random.split(key)
        rows = jax.random.permutation(order, n_train)[: steps * BATCH].reshape(steps, BATCH)
        state, _ = jax.lax.scan(step, state, (rows, jax.random.split(dropout, steps)))
        logits = (x[n_train:] @ state[0][0])[:, 0] + state[0][1][0]
        return state, jnp.mean(jnp.logaddexp(0.0, logits) - y[n_train:] * logits)

    @jax.jit
    def train(key):
        params = [jnp.zeros((2048, 1)), jnp.zeros((1,))]
        zeros = [jnp.zeros_like(p) for p in params]
        return jax.lax.scan(epoch, (params, zeros, zeros, 0), jax.random.split(key, EPOCHS))[1]

    start = time.perf_counter()
    train(jax.random.key(0)).block_until_ready()
    first = time.perf_counter() - start
    start = time.perf_counter()
    val_loss = train(jax.random.key(1)).block_until_ready()
    seconds = time.perf_counter() - start
    last = float(val_loss[-1])
    return {"rows": [n_train, n_val], "first_call_s": first, "seconds": seconds, "last_val_loss": last}


def time_through_base(images: np.ndarray, precision: str) -> dict:
    """Images/s of training steps of the whole model (frozen base), after one warm-up epoch."""
    keras.utils.set_random_seed(0)
    model = build_model(224, None, precision=precision)
    model.compile(optimizer=keras.optimizers.Adam(0.001), loss="binary_crossentropy", metrics=["accuracy"])
    labels = (np.arange(len(images)) % 2).astype(np.float32)
    warm = images[: 2 * BATCH]
    start = time.perf_counter()
    model.fit(warm, labels[: len(warm)], batch_size=BATCH, epochs=1, verbose=0)
    first = time.perf_counter() - start
    start = time.perf_counter()
    model.fit(images, labels, batch_size=BATCH, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    return rate(first, len(images), seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=7872, help="images for the extraction timing")
    parser.add_argument("--train-images", type=int, default=1024, help="images, training through the base")
    parser.add_argument("--out", type=Path, help="folder for device.json")
    args = parser.parse_args()
    figures: dict = {"machine": machine(), "python": platform.python_version()}
    print(figures["machine"], flush=True)
    images = random_images(max(args.images, args.train_images))
    for precision in ("float32", "mixed_bfloat16"):
        figures[f"extraction {precision}"] = time_extraction(images[: args.images], precision)
        print(precision, "extraction", figures[f"extraction {precision}"], flush=True)
    # The same pixels sent as bytes, a quarter of float32's: the model casts them itself.
    figures["extraction mixed_bfloat16, uint8 in"] = time_extraction(
        images[: args.images].astype(np.uint8), "mixed_bfloat16"
    )
    print("uint8 extraction", figures["extraction mixed_bfloat16, uint8 in"], flush=True)
    for name, (n_train, n_val) in HEAD_SIZES.items():
        figures[f"head {name}"] = time_head(n_train, n_val)
        print("head", name, figures[f"head {name}"], flush=True)
        figures[f"head in one loop {name}"] = time_head_one_loop(n_train, n_val)
        print("head in one loop", name, figures[f"head in one loop {name}"], flush=True)
    for precision in ("float32", "mixed_bfloat16"):
        figures[f"through base {precision}"] = time_through_base(images[: args.train_images], precision)
        print(precision, "through base", figures[f"through base {precision}"], flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "device.json").write_text(json.dumps(figures, indent=1))
    print_table(figures)


def print_table(figures: dict) -> None:
    print(f"\n{figures['machine']}\n\n| work | figure |\n|---|---|")
    for precision in ("float32", "mixed_bfloat16"):
        e, t = figures[f"extraction {precision}"], figures[f"through base {precision}"]
        first = f"first call {e['first_call_s']:.1f} s"
        print(f"| extraction, {precision} | {e['images_per_s']:.0f} images/s ({first}) |")
        print(f"| training through the base, {precision} | {t['images_per_s']:.0f} images/s |")
    e = figures["extraction mixed_bfloat16, uint8 in"]
    print(f"| extraction, mixed_bfloat16, images sent as uint8 | {e['images_per_s']:.0f} images/s |")
    for name in HEAD_SIZES:
        h, floor = figures[f"head {name}"], figures[f"head in one loop {name}"]
        rows = f"{h['rows'][0]} + {h['rows'][1]} rows"
        print(f"| head, 100 epochs, {name} ({rows}): Keras `fit` | {h['seconds']:.1f} s |")
        if floor:
            compiling = f"compiling {floor['first_call_s']:.1f} s"
            print(f"| the same as one compiled JAX loop | {floor['seconds'] * 1000:.0f} ms ({compiling}) |")


if __name__ == "__main__":
    main()
