"""SimpleNet with gradloop: the first program of most PyTorch tutorials, without the hand-written loop.

The tutorial defines a 10 -> 5 -> 2 network, draws 100 random samples with random labels, and
trains it with SGD (lr 0.01) and cross-entropy on the whole set at once, in a
`for epoch ...: zero_grad / forward / loss / backward / step` loop.
Here `gl.Trainer` runs that same loop (the same numbers, given the same seed). The labels are
random, so there is nothing to learn: the loss creeps down, the accuracy stays near 0.5.

    python examples/simple_net.py [--epochs 100]
"""

import argparse

import torch
from torch import nn

import gradloop as gl


class SimpleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(10, 5)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(5, 2)

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(x)))


def main():
    parser = argparse.ArgumentParser(description="Train the tutorial's SimpleNet on random data.")
    parser.add_argument("--epochs", type=int, default=100, help="training epochs (default 100)")
    args = parser.parse_args()

    torch.manual_seed(0)
    X = torch.randn(100, 10)  # 100 samples, 10 features
    y = torch.randint(0, 2, (100,))  # 2 classes
    model = SimpleNet()

    trainer = gl.Trainer(model, optimizer="sgd", lr=0.01, loss="cross_entropy", metrics=["accuracy"], max_epochs=args.epochs)
    history = trainer.fit((X, y), batch_size=len(X), shuffle=False)  # the whole set at once, as in the tutorial
    print(f"final loss {history['loss'][-1]:.4f}  accuracy {history['accuracy'][-1]:.4f}")


if __name__ == "__main__":
    main()
