"""Multinomial logistic regression on Fisher's iris data with the Adam class.

Minibatches, two parameter groups (weight decay on the weights only) and a
cosine learning-rate schedule set through ``opt.param_groups``; the gradients
are written into the optimizer's own buffers (``opt.grads``). The data set is
the copy of iris that scipy ships with its test data (150 flowers, 4
measurements, rows ordered setosa, versicolor, virginica), so nothing is
downloaded.

    python examples/logistic_regression.py
"""

import importlib.util
import math
import os

import numpy as np

import numadam

SPECIES = ("setosa", "versicolor", "virginica")


def load_iris():
    """``(features, labels)`` from the iris file inside the installed scipy."""
    spec = importlib.util.find_spec("scipy")
    path = spec and os.path.join(spec.submodule_search_locations[0],
                                 "spatial", "tests", "data", "iris.txt")
    if not path or not os.path.exists(path):
        raise SystemExit("this example reads the iris data shipped inside scipy; "
                         "pip install scipy")
    features = np.loadtxt(path)
    return features, np.repeat(np.arange(3), 50)


def loss_and_grads(w, b, x, y, grad_w, grad_b):
    """Mean cross-entropy of softmax(x @ w + b); gradients written in place."""
    logits = x @ w + b
    logits -= logits.max(axis=1, keepdims=True)
    prob = np.exp(logits)
    prob /= prob.sum(axis=1, keepdims=True)
    rows = np.arange(y.size)
    loss = -np.log(prob[rows, y]).mean()
    prob[rows, y] -= 1.0
    prob /= y.size
    np.matmul(x.T, prob, out=grad_w)
    prob.sum(axis=0, out=grad_b)
    return loss


def main(epochs=60, batch=16, lr=0.05, seed=0):
    rng = np.random.default_rng(seed)
    x, y = load_iris()
    test = np.concatenate([rng.choice(np.flatnonzero(y == c), 10, replace=False)
                           for c in range(3)])
    train = np.setdiff1d(np.arange(y.size), test)
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    x = (x - mean) / std

    w = np.zeros((4, 3))
    b = np.zeros(3)
    opt = numadam.Adam([{"params": [w], "weight_decay": 1e-3},
                        {"params": [b]}], lr=lr)
    grad_w, grad_b = opt.grads
    history = []
    for epoch in range(epochs):
        for group in opt.param_groups:              # cosine decay, once an epoch
            group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * epoch / epochs))
        order = rng.permutation(train)
        for start in range(0, order.size, batch):
            rows = order[start:start + batch]
            loss_and_grads(w, b, x[rows], y[rows], grad_w, grad_b)
            opt.step()
        history.append(loss_and_grads(w, b, x[train], y[train],
                                      np.empty_like(w), np.empty_like(b)))
        if epoch % 10 == 0 or epoch == epochs - 1:
            print(f"epoch {epoch:3d}  lr {opt.param_groups[0]['lr']:.4f}  "
                  f"train loss {history[-1]:.4f}")

    predicted = np.argmax(x[test] @ w + b, axis=1)
    accuracy = float(np.mean(predicted == y[test]))
    print(f"test accuracy {accuracy:.3f} on {test.size} held-out flowers "
          f"({', '.join(SPECIES)})")
    return dict(accuracy=accuracy, history=history, w=w, b=b)


if __name__ == "__main__":
    main()
