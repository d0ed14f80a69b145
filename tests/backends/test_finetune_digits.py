"""Fine-tuning through the torch backend: a few SGD steps on scikit-learn's digits, then the
trained weights go back into the IR and onnxruntime computes what the trained module computes."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from irtool.backends.onnx import run_onnxruntime
from irtool.backends.torch import to_torch, update_constants
from irtool.frontends.torch import load_module


class DigitsNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = nn.functional.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(self.drop(x.flatten(1)))


def _digits():
    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    return images, torch.from_numpy(digits.target.astype(np.int64))


def test_finetune_lowers_loss_and_weights_flow_back_to_the_ir():
    torch.manual_seed(0)
    images, labels = _digits()
    train_x, train_y, test_x, test_y = images[:1400], labels[:1400], images[1400:], labels[1400:]
    graph = load_module(DigitsNet().eval(), train_x[:2], dynamic_batch=True)
    initial = {name: value.const.copy() for name, value in graph.constants.items()}

    module = to_torch(graph)
    loss_fn = nn.CrossEntropyLoss()

    def test_loss() -> float:
        module.eval()
        with torch.no_grad():
            return loss_fn(module(test_x), test_y).item()

    before = test_loss()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    module.train()
    for _ in range(40):
        batch = torch.randint(0, len(train_x), (64,), generator=generator)
        optimizer.zero_grad()
        loss_fn(module(train_x[batch]), train_y[batch]).backward()
        optimizer.step()
    after = test_loss()
    assert after < 0.5 * before, (before, after)

    assert update_constants(graph, module) == len(module.state_dict())
    for name in ("conv1.weight", "fc.bias", "bn2.running_mean"):
        assert not np.allclose(graph.constants[name].const, initial[name]), name

    module.eval()
    with torch.no_grad():
        expected = module(test_x).numpy()
    (result,) = run_onnxruntime(graph, [test_x.numpy()])
    assert np.abs(result - expected).max() <= 1e-5 * np.abs(expected).max()
    accuracy = float((result.argmax(1) == test_y.numpy()).mean())
    assert accuracy > 0.8, accuracy
