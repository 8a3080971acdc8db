"""pytorch/examples' time_sequence_prediction with gradloop: two LSTMCells learn sine waves, with L-BFGS.

Rewrites generate_sine_wave.py and train.py of pytorch/examples: N sine waves of period
2*pi*T, L samples each, shifted by random phases; the model (the original's `Sequence`: two
LSTMCells of 51 units and a Linear) reads a wave one value at a time and predicts the next one,
in float64. The first 3 waves are the test set, the rest train, all at once (one batch), with
MSE and `torch.optim.LBFGS(lr=0.8)`: each epoch is one L-BFGS step, which re-evaluates the batch
up to 20 times through the closure the Trainer writes (zero_grad, forward, loss, backward).

The original trains on N=100 waves of L=1000 for 15 steps; the defaults here are smaller
(N=20, L=200) to run in seconds: pass --waves 100 --length 1000 --epochs 15 for the original.
After training the model continues the test waves by feeding its predictions back
(`future` steps), as the original does before drawing predict%d.pdf.

    python examples/sine_lbfgs.py [--epochs 4] [--waves 20] [--length 200] [--future 100]
"""

import argparse

import numpy as np
import torch
from torch import nn

import gradloop as gl

T, HIDDEN = 20, 51


def generate_sine_wave(waves, length, seed=2):
    """generate_sine_wave.py: waves[i, t] = sin((t + shift_i) / T), shifts uniform in [-4T, 4T)."""
    rng = np.random.RandomState(seed)
    x = np.empty((waves, length), "int64")
    x[:] = np.array(range(length)) + rng.randint(-4 * T, 4 * T, waves).reshape(waves, 1)
    return np.sin(x / 1.0 / T).astype("float64")


class Sequence(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm1 = nn.LSTMCell(1, HIDDEN)
        self.lstm2 = nn.LSTMCell(HIDDEN, HIDDEN)
        self.linear = nn.Linear(HIDDEN, 1)

    def forward(self, input, future=0):
        outputs = []
        h_t = torch.zeros(input.size(0), HIDDEN, dtype=input.dtype, device=input.device)
        c_t = torch.zeros_like(h_t)
        h_t2 = torch.zeros_like(h_t)
        c_t2 = torch.zeros_like(h_t)

        for input_t in input.split(1, dim=1):
            h_t, c_t = self.lstm1(input_t, (h_t, c_t))
            h_t2, c_t2 = self.lstm2(h_t, (h_t2, c_t2))
            output = self.linear(h_t2)
            outputs += [output]
        for _ in range(future):  # if we should predict the future
            h_t, c_t = self.lstm1(output, (h_t, c_t))
            h_t2, c_t2 = self.lstm2(h_t, (h_t2, c_t2))
            output = self.linear(h_t2)
            outputs += [output]
        return torch.cat(outputs, dim=1)


def main():
    parser = argparse.ArgumentParser(description="Predict sine waves with two LSTMCells and L-BFGS.")
    parser.add_argument("--epochs", type=int, default=4, help="L-BFGS steps, one per epoch (default 4; the original: 15)")
    parser.add_argument("--waves", type=int, default=20, help="number of sine waves, 3 of them for testing (default 20)")
    parser.add_argument("--length", type=int, default=200, help="samples per wave (default 200)")
    parser.add_argument("--future", type=int, default=100, help="steps to predict past the end of the test waves (default 100)")
    args = parser.parse_args()

    # torch tensors keep their dtype (numpy float arrays would become float32): the original runs in float64
    data = torch.from_numpy(generate_sine_wave(args.waves, args.length + args.future))
    seen, unseen = data[:, : args.length], data[:, args.length :]
    input, target = seen[3:, :-1], seen[3:, 1:]
    test_input, test_target = seen[:3, :-1], seen[:3, 1:]

    np.random.seed(0)
    torch.manual_seed(0)
    seq = Sequence().double()
    trainer = gl.Trainer(seq, optimizer=torch.optim.LBFGS(seq.parameters(), lr=0.8), loss="mse", max_epochs=args.epochs, device="cpu")
    history = trainer.fit((input, target), val=(test_input, test_target), batch_size=len(input), shuffle=False)  # the whole set at once
    print(f"first loss {history['loss'][0]:.6g}  test loss {history['val_loss'][0]:.6g}")
    print(f"final loss {history['loss'][-1]:.6g}  test loss {history['val_loss'][-1]:.6g}")

    with torch.no_grad():  # the original's prediction: continue the test waves from the model's own outputs
        pred = seq(test_input, future=args.future)
    future_mse = torch.mean((pred[:, -args.future :] - unseen[:3]) ** 2).item()
    print(f"continuing the 3 test waves for {args.future} steps: mse {future_mse:.6g} (a wave's variance is 0.5)")


if __name__ == "__main__":
    main()
