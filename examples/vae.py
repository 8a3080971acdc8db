"""The pytorch/examples VAE with gradloop: reconstruction and KL logged as columns of their own.

Rewrites pytorch/examples' vae/main.py (fc1 784 -> 400, fc21/fc22 400 -> 20, fc3 20 -> 400,
fc4 400 -> 784, the reparameterization trick with torch.randn_like, and the loss
BCE(recon, x, reduction="sum") + KLD, Adam 1e-3) on scikit-learn's bundled 8x8 digits instead of
MNIST: 64 pixels scaled to [0, 1], so the layers shrink to 64 -> 32 -> (8, 8) -> 32 -> 64.

The hand-written loop of the original becomes a `step(model, batch)`: it returns the loss per
sample and, besides it, the reconstruction and KL terms, which gradloop averages over each epoch
like the loss and logs as `recon`/`kl` (and `val_recon`/`val_kl`, columns in metrics.csv).

    python examples/vae.py [--epochs 20] [--batch-size 128] [--run-dir runs/vae]
"""

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import gradloop as gl

PIXELS, HIDDEN, LATENT = 64, 32, 8  # MNIST's 784, 400, 20 scaled to the 8x8 digits


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(PIXELS, HIDDEN)
        self.fc21 = nn.Linear(HIDDEN, LATENT)
        self.fc22 = nn.Linear(HIDDEN, LATENT)
        self.fc3 = nn.Linear(LATENT, HIDDEN)
        self.fc4 = nn.Linear(HIDDEN, PIXELS)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, PIXELS))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def vae_step(model, batch):
    """One batch of (images, anything): the original's loss_function, per sample, with its two terms."""
    x, _ = batch  # the targets are the images themselves; whatever the data pairs them with is ignored
    recon, mu, logvar = model(x)
    bce = F.binary_cross_entropy(recon, x.view(-1, PIXELS), reduction="sum")
    # see Appendix B from VAE paper: Kingma and Welling. Auto-Encoding Variational Bayes. ICLR, 2014
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    n = x.shape[0]
    return {"loss": (bce + kld) / n, "recon": bce / n, "kl": kld / n}


def load_digits():
    """The 1,797 digits as 64 pixels in [0, 1]: 80% to train, 20% to validate."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_train, X_val = train_test_split((X / 16.0).astype(np.float32), test_size=0.2, random_state=0, stratify=y)
    return X_train, X_val


def main():
    parser = argparse.ArgumentParser(description="Train the pytorch/examples VAE on scikit-learn's 8x8 digits.")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    parser.add_argument("--batch-size", type=int, default=128, help="input batch size for training (default 128)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (default 1e-3)")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/vae"), help="where metrics.csv and checkpoints go")
    args = parser.parse_args()

    X_train, X_val = load_digits()
    torch.manual_seed(1)  # the original's --seed 1: the same weights, batch order and noise on every run
    model = VAE()
    trainer = gl.Trainer(model, optimizer="adam", lr=args.lr, step=vae_step, max_epochs=args.epochs, run_dir=args.run_dir)
    history = trainer.fit((X_train, X_train), val=(X_val, X_val), batch_size=args.batch_size)

    print(f"first: loss {history['loss'][0]:.4f}  recon {history['recon'][0]:.4f}  kl {history['kl'][0]:.4f}")
    print(f"final: loss {history['loss'][-1]:.4f}  recon {history['recon'][-1]:.4f}  kl {history['kl'][-1]:.4f}")
    print(f"final val: loss {history['val_loss'][-1]:.4f}  recon {history['val_recon'][-1]:.4f}  kl {history['val_kl'][-1]:.4f}")

    with torch.no_grad():  # as the original's sample.png: decode points drawn from the prior
        samples = model.decode(torch.randn(8, LATENT, device=trainer.device)).view(8, 8, 8)
    print("8 digits decoded from z ~ N(0, I), mean pixel " + " ".join(f"{s.mean():.2f}" for s in samples))
    print(f"wrote {args.run_dir / 'metrics.csv'}")


if __name__ == "__main__":
    main()
