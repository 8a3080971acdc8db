"""The tutorials' MNIST MLP with gradloop: 784 -> 128 -> 10, Adam 1e-3, batch 64, 5 epochs.

Rewrites the classic "train an MLP on MNIST" program: flatten each 28x28 image, one hidden layer
of 128 ReLU units, cross-entropy, Adam, and the test-set accuracy after every epoch.

    python examples/mnist_mlp.py MNIST_DIR    # a folder with the four IDX files (plain or .gz)
    python examples/mnist_mlp.py              # no folder: scikit-learn's digits instead

MNIST_DIR holds train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and
t10k-labels-idx1-ubyte (each may end in .gz), as distributed. Without it, the example uses
scikit-learn's bundled 8x8 digits (1,797 images, 64 features) and the same network with 64
inputs (64 -> 128 -> 10), holding out a fifth of them as the test set.
"""

import argparse
import gzip
from pathlib import Path

import numpy as np
import torch
from torch import nn

import gradloop as gl


def read_idx(path):
    """An IDX file (the MNIST format) as a numpy uint8 array, e.g. (60000, 28, 28) for images."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise SystemExit(f"{path} is not an IDX file of unsigned bytes (it should start with 00 00 08)")
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    values = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if values.size != np.prod(shape):
        raise SystemExit(f"{path} is truncated: its header says {shape}, it holds {values.size} values")
    return values.reshape(shape)


def find(folder, name):
    for candidate in (name, name + ".gz", name.replace("-idx", ".idx"), name.replace("-idx", ".idx") + ".gz"):
        if (folder / candidate).is_file():
            return folder / candidate
    raise SystemExit(f"{folder} has no {name}[.gz]: download the four MNIST IDX files into it")


def load_mnist(folder):
    """(X_train, y_train), (X_test, y_test): images scaled to [0, 1], labels 0-9."""

    def split(prefix):
        images = read_idx(find(folder, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(find(folder, f"{prefix}-labels-idx1-ubyte"))
        return images.astype(np.float32) / 255.0, labels.astype(np.int64)

    return split("train"), split("t10k")


def load_digits():
    """scikit-learn's 8x8 digits, flattened to 64 features in [0, 1], with a stratified 20% test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split((X / 16.0).astype(np.float32), y, test_size=0.2, random_state=0, stratify=y)
    return (X_train, y_train), (X_test, y_test)


def main():
    parser = argparse.ArgumentParser(description="Train a 784-128-10 MLP on MNIST (or 64-128-10 on the 8x8 digits).")
    parser.add_argument("mnist_dir", nargs="?", type=Path, help="folder with the MNIST IDX files; omit for the digits")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs (default 5)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training images (quick runs)")
    args = parser.parse_args()

    if args.mnist_dir is not None:
        (X_train, y_train), (X_test, y_test) = load_mnist(args.mnist_dir)
    else:
        print("no MNIST folder given: using scikit-learn's 8x8 digits (64 features) and a 64-128-10 MLP")
        (X_train, y_train), (X_test, y_test) = load_digits()
    if args.limit is not None:
        X_train, y_train = X_train[: args.limit], y_train[: args.limit]
    features = int(np.prod(X_train.shape[1:]))  # 784 for MNIST, 64 for the digits

    torch.manual_seed(0)  # the same initial weights and batch order on every run
    model = nn.Sequential(nn.Flatten(), nn.Linear(features, 128), nn.ReLU(), nn.Linear(128, 10))
    trainer = gl.Trainer(model, optimizer="adam", lr=1e-3, loss="cross_entropy", metrics=["accuracy"], max_epochs=args.epochs)
    trainer.fit((X_train, y_train), val=(X_test, y_test), batch_size=64)
    result = trainer.test((X_test, y_test))
    print(f"test loss {result['test_loss']:.4f}  test accuracy {result['test_accuracy']:.4f}")


if __name__ == "__main__":
    main()
