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


@pytest.fixture
def reseal():
    """reseal(dir): record the current sha256 of a checkpoint's weight files in its manifest, for tests that
    write a well-formed but wrong adapter on purpose (to reach the checks behind the checksum)."""
    import json

    from genbound import checkpoint

    def apply(ckpt):
        path = ckpt / checkpoint.MANIFEST
        man = json.loads(path.read_text())
        man["files"] = checkpoint.weight_files(ckpt)
        path.write_text(json.dumps(man))

    return apply
