"""The 3-class wine exercise with gradloop's callbacks: early stopping, LR on plateau, checkpoints, a plot.

Rewrites the tutorial exercise that classifies scikit-learn's wine data (178 wines, 13 chemical
measurements, 3 cultivars) with a small MLP, standardizing the features, and then adds by hand
early stopping, reduce-LR-on-plateau, checkpoint saving and a matplotlib plot of training and
validation accuracy. Here those are callbacks, and the plot is drawn from the returned history.

    python examples/wine_callbacks.py [--epochs 200] [--run-dir runs/wine]

Writes into the run directory: checkpoints/ (best.ckpt, last.ckpt and the newest epochs; any
of them resumes), metrics.csv and metrics.jsonl, curves.png, the final weights
(model.safetensors), and accuracy.png, drawn here from the returned history.
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # draw to files only: no window, works without a display
import matplotlib.pyplot as plt
import torch
from sklearn.datasets import load_wine
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn

import gradloop as gl


def main():
    parser = argparse.ArgumentParser(description="Classify wines with early stopping, LR on plateau and checkpoints.")
    parser.add_argument("--epochs", type=int, default=200, help="at most this many epochs (default 200)")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/wine"), help="where checkpoints and plots go")
    args = parser.parse_args()

    X, y = load_wine(return_X_y=True)
    X_train, X_val, y_train, y_val = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
    scaler = StandardScaler().fit(X_train)  # statistics of the training split only
    X_train, X_val = scaler.transform(X_train), scaler.transform(X_val)

    torch.manual_seed(0)  # the same initial weights and batch order on every run
    model = nn.Sequential(nn.Linear(13, 32), nn.ReLU(), nn.Linear(32, 3))
    early_stopping = gl.EarlyStopping(monitor="val_loss", min_delta=1e-3, patience=8, restore_best_weights=True)
    callbacks = [
        early_stopping,
        gl.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=3, min_delta=1e-3),
        gl.ModelCheckpoint(monitor="val_loss", keep=3),  # best.ckpt, last.ckpt and the newest 3 epochs
    ]
    trainer = gl.Trainer(
        model,
        optimizer="adam",
        lr=1e-2,
        loss="cross_entropy",
        metrics=["accuracy"],
        callbacks=callbacks,
        max_epochs=args.epochs,
        run_dir=args.run_dir,
    )
    history = trainer.fit((X_train, y_train), val=(X_val, y_val), batch_size=16)

    epochs = range(1, len(history["accuracy"]) + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, history["accuracy"], label="training")
    ax.plot(epochs, history["val_accuracy"], label="validation")
    ax.set(xlabel="epoch", ylabel="accuracy", title="wine: accuracy per epoch")
    ax.legend()
    fig.savefig(args.run_dir / "accuracy.png", dpi=100)
    plt.close(fig)

    result = trainer.validate((X_val, y_val))  # with the best epoch's weights, restored by early stopping
    print(f"stopped: {trainer.stop_reason}; best epoch {early_stopping.best_epoch + 1} of {len(history.epochs)}")
    print(f"final val_loss {result['val_loss']:.4f}  val_accuracy {result['val_accuracy']:.4f}")
    print(f"wrote {args.run_dir / 'accuracy.png'} and {args.run_dir / 'checkpoints'}")


if __name__ == "__main__":
    main()
