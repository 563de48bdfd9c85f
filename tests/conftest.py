"""Shared fixtures."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one CPU thread is faster, and avoids OpenMP spinning on a busy machine (10x here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def interrupt_training(monkeypatch):
    """interrupt_training(step): Ctrl-C at that training step until the returned undo() is called."""
    from genbound.train import _Run

    real = _Run.train_step

    def at(step: int):
        def stop(self):
            if self.step == step:
                raise KeyboardInterrupt
            return real(self)

        monkeypatch.setattr(_Run, "train_step", stop)
        return lambda: monkeypatch.setattr(_Run, "train_step", real)

    return at
