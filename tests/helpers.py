"""Small pieces shared by several test files."""

import torch
from torch.utils.data import Dataset


class Scripted:
    """A metric whose value over all of epoch e is values[e]: the trainer it reads is bound after construction."""

    def __init__(self, values, name="score"):
        self.values, self.__name__, self.trainer = list(values), name, None

    def __call__(self, outputs, targets):
        epoch = self.trainer.state.epoch if self.trainer is not None else 0
        return torch.tensor(float(self.values[min(epoch, len(self.values) - 1)]), dtype=torch.float64)


class PairDataset(Dataset):
    """A plain map-style Dataset of (x, y) pairs."""

    def __init__(self, X, y):
        self.X, self.y = X, y

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i], self.y[i]
