"""The doctor: sanity checks that catch silently failing models before a long run.

    report = gradloop.doctor(model, (X, y), loss="cross_entropy", val=(Xv, yv))
    print(report)          # a table: PASS / WARN / FAIL, evidence, advice
    report.ok              # False when any check failed

Checks, in the order they run (each gives one line of evidence and one of advice):

========================  ==================================================================
data.shapes               X/y lengths, dtypes vs. the loss, train/val sample shapes
data.finite               NaN/Inf in inputs and targets
data.labels               class labels within [0, n_outputs); binary targets within [0, 1]
data.balance              class counts; warns from a 5:1 imbalance, suggests class weights
data.leakage              val rows that also occur in train (64-bit row hashes, verified)
data.variance             constant features
data.scale                features of very different scales (std ratio >= 100, |x| >= 1000)
model.output              runs on the data; outputs fit targets and loss (Trainer.fit's rules)
model.loss_fit            final Softmax/Sigmoid/LogSoftmax vs. the loss; bounded regression
model.initial_loss        untrained loss vs. chance (ln C; ln 2; predicting mean(y) for mse)
model.train_eval          eval vs. train outputs differ only through dropout/batch-norm
train.gradients           every trainable parameter gets a finite, non-zero gradient
train.nan_origin          first module producing NaN/Inf, in the forward or backward pass
train.overfit             Adam drives the loss on one small batch near zero
train.lr_find             LR range test; suggested LR = min-loss LR / 10; lr_find.png
========================  ==================================================================

A check that does not apply (no val data, a regression task) is listed in `report.skipped`.
"""
from .lr_find import LRFindResult
from .report import Check, DoctorReport
from .run import CHECK_NAMES, doctor, lr_find

__all__ = ["doctor", "lr_find", "DoctorReport", "Check", "LRFindResult", "CHECK_NAMES"]
