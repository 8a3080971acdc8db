"""A text classifier that computes its own loss, the Hugging Face way, trained with `loss=None`.

Models from transformers take `input_ids`, `attention_mask` and `labels` and return an output
with `.loss` (when given labels) and `.logits`; the Hugging Face Trainer feeds them dict batches
as `model(**batch)`. gradloop does the same with `loss=None`: the data is a dict of aligned arrays,
batched by index, each batch passed as `model(**batch)`, the model's `loss` minimized, and the
metrics computed on its `logits` against `batch["labels"]`.

The task is synthetic: sequences of up to 12 tokens from a vocabulary of 50 (0 is padding),
padded to 12 and masked; a sequence is of class 1 when it contains the special token 1. A
token embedding, a per-token layer and a masked max-pool over the sequence learn it in a few
epochs.

    python examples/text_classifier.py [--epochs 5] [--samples 2000]
"""

import argparse
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

import gradloop as gl

VOCAB, LENGTH, PAD, SPECIAL = 50, 12, 0, 1


@dataclass
class ClassifierOutput:
    """What transformers' SequenceClassifierOutput holds: the loss when labels are given, and the logits."""

    logits: torch.Tensor
    loss: Optional[torch.Tensor] = None


class TinyTextClassifier(nn.Module):
    def __init__(self, vocab_size=VOCAB, dim=32, num_labels=2):
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, dim, padding_idx=PAD)
        self.token_layer = nn.Sequential(nn.Linear(dim, dim), nn.ReLU())
        self.classifier = nn.Linear(dim, num_labels)

    def forward(self, input_ids, attention_mask=None, labels=None):
        hidden = self.token_layer(self.embeddings(input_ids))  # (batch, length, dim)
        if attention_mask is not None:  # padding never wins the max-pool
            hidden = hidden.masked_fill(~attention_mask.bool().unsqueeze(-1), float("-inf"))
        logits = self.classifier(hidden.max(dim=1).values)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ClassifierOutput(logits=logits, loss=loss)


def make_data(n, generator):
    """{"input_ids", "attention_mask", "labels"}: random lengths 4..12, half of the sequences hold SPECIAL."""
    lengths = torch.randint(4, LENGTH + 1, (n,), generator=generator)
    attention_mask = (torch.arange(LENGTH) < lengths[:, None]).long()
    input_ids = torch.randint(SPECIAL + 1, VOCAB, (n, LENGTH), generator=generator)
    labels = torch.randint(0, 2, (n,), generator=generator)
    where = (torch.rand(n, generator=generator) * lengths).long()  # a position inside each sequence
    input_ids[labels == 1, where[labels == 1]] = SPECIAL
    input_ids[attention_mask == 0] = PAD
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def main():
    parser = argparse.ArgumentParser(description="Train a model that returns its own loss on synthetic token sequences.")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs (default 5)")
    parser.add_argument("--samples", type=int, default=2000, help="training sequences (default 2000; 500 more validate)")
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    train, val = make_data(args.samples, generator), make_data(500, generator)
    print(f"{args.samples} sequences of up to {LENGTH} tokens, vocabulary {VOCAB}: class 1 = contains token {SPECIAL}")

    torch.manual_seed(0)  # the same initial weights and batch order on every run
    model = TinyTextClassifier()
    trainer = gl.Trainer(model, optimizer="adamw", lr=3e-3, loss=None, metrics=["accuracy"], max_epochs=args.epochs)
    history = trainer.fit(train, val=val, batch_size=32)
    print(f"final val_loss {history['val_loss'][-1]:.4f}  val_accuracy {history['val_accuracy'][-1]:.4f}")

    # predict: a dict without labels, passed as model(**batch); the output's logits come back
    logits = trainer.predict({"input_ids": val["input_ids"][:4], "attention_mask": val["attention_mask"][:4]})
    print(f"first 4 validation sequences: predicted {logits.argmax(dim=1).tolist()}, labels {val['labels'][:4].tolist()}")


if __name__ == "__main__":
    main()
