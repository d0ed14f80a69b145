"""Embedding-free LSTM sequence classifier: (N, T, F) float -> nn.LSTM(batch_first)
-> last time step -> Linear."""
from __future__ import annotations

import torch
from torch import nn

from ._common import seeded_factory

__all__ = ["LSTMClassifier", "lstm_classifier"]


class LSTMClassifier(nn.Module):
    def __init__(self, input_size: int = 32, hidden_size: int = 64, num_layers: int = 2,
                 num_classes: int = 10) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers=num_layers, batch_first=True)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)  # N, T, H
        return self.fc(out[:, -1, :])


@seeded_factory
def lstm_classifier(input_size: int = 32, hidden_size: int = 64, num_layers: int = 2,
                    num_classes: int = 10) -> LSTMClassifier:
    return LSTMClassifier(input_size, hidden_size, num_layers, num_classes)
