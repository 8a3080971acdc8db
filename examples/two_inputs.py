"""A model with two inputs, numeric features and a categorical column: `forward(self, numeric, categorical)`.

The tabular pattern of wide-and-deep models and the entity-embedding tutorials: the categorical
column goes through an nn.Embedding, the numeric ones through a Linear layer, the two are
concatenated and a small head classifies. The data is scikit-learn's bundled wine set (178 wines,
13 measurements, 3 cultivars); its color intensity is binned into 8 quantile categories, the
12 other measurements (standardized) are the numeric features.

gradloop passes the inputs of `((X_num, X_cat), y)` to the model as `model(numeric, categorical)`:

    trainer.fit(((X_num, X_cat), y), val=((V_num, V_cat), v))

    python examples/two_inputs.py [--epochs 30]
"""

import argparse

import numpy as np
import torch
from sklearn.datasets import load_wine
from sklearn.model_selection import train_test_split
from torch import nn

import gradloop as gl

CATEGORICAL = 9  # color_intensity
BINS = 8


class NumericAndCategorical(nn.Module):
    def __init__(self, numeric_features, categories, classes, embedding_dim=4, hidden=16):
        super().__init__()
        self.embedding = nn.Embedding(categories, embedding_dim)
        self.numeric = nn.Linear(numeric_features, hidden)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(hidden + embedding_dim, classes))

    def forward(self, numeric, categorical):
        return self.head(torch.cat([self.numeric(numeric), self.embedding(categorical)], dim=1))


def load_data():
    """((numeric, categorical), labels) for the training and validation splits."""
    X, y = load_wine(return_X_y=True)
    X_train, X_val, y_train, y_val = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)

    edges = np.quantile(X_train[:, CATEGORICAL], np.linspace(0, 1, BINS + 1)[1:-1])  # from the training split only
    numeric = [i for i in range(X.shape[1]) if i != CATEGORICAL]
    mean, std = X_train[:, numeric].mean(axis=0), X_train[:, numeric].std(axis=0)

    def split(X):
        X_num = ((X[:, numeric] - mean) / std).astype(np.float32)
        X_cat = np.digitize(X[:, CATEGORICAL], edges).astype(np.int64)  # category 0 .. BINS-1
        return X_num, X_cat

    return (split(X_train), y_train), (split(X_val), y_val)


def main():
    parser = argparse.ArgumentParser(description="Classify wines with a numeric and a categorical input.")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    args = parser.parse_args()

    train, val = load_data()
    (X_num, X_cat), _ = train
    print(f"{len(X_num)} wines to train on: {X_num.shape[1]} numeric features and 1 categorical ({BINS} categories)")

    torch.manual_seed(0)  # the same initial weights and batch order on every run
    model = NumericAndCategorical(X_num.shape[1], BINS, classes=3)
    trainer = gl.Trainer(model, optimizer="adam", lr=1e-2, loss="cross_entropy", metrics=["accuracy"], max_epochs=args.epochs)
    history = trainer.fit(train, val=val, batch_size=16)
    print(f"final val_loss {history['val_loss'][-1]:.4f}  val_accuracy {history['val_accuracy'][-1]:.4f}")

    (V_num, V_cat), _ = val
    # predict takes the inputs alone, as a 1-tuple: a pair (V_num, V_cat) would read as (inputs, targets)
    probabilities = trainer.predict(((V_num[:3], V_cat[:3]),)).softmax(dim=1)
    for p, label in zip(probabilities, val[1][:3]):
        print(f"wine of class {label}: predicted probabilities " + "  ".join(f"{q:.3f}" for q in p.tolist()))


if __name__ == "__main__":
    main()
