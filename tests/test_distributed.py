"""genbound.distributed: the context from torchrun's environment, shares, and collectives over gloo (2 ranks)."""

import pytest
import torch

from genbound import distributed
from genbound.errors import GenboundError
from ranks import run_ranks


def test_context_defaults_to_one_process(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    ctx = distributed.context()
    assert (ctx.rank, ctx.world, ctx.local_rank, ctx.active, ctx.main) == (0, 1, 0, False, True)
    assert distributed.init() == ctx  # a world of one joins nothing
    t = torch.ones(3)
    assert distributed.all_reduce_sum(t) is t and t.tolist() == [1, 1, 1]
    assert distributed.all_gather_objects("a") == ["a"]


def test_bad_environment_is_one_line(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(GenboundError, match="WORLD_SIZE"):
        distributed.context()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(GenboundError, match="outside"):
        distributed.context()


@pytest.mark.parametrize("n,world", [(10, 3), (2, 4), (0, 2), (7, 1)])
def test_shares_cover_every_item_once(n, world):
    parts = [distributed.share(n, distributed.Context(r, world, r)) for r in range(world)]
    assert [i for p in parts for i in p] == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def _collectives():
    ctx = distributed.init(torch.device("cpu"))
    t = torch.tensor([float(ctx.rank + 1), 2.0])
    distributed.all_reduce_sum(t)
    distributed.barrier(long=True)
    return ctx.rank, ctx.world, t.tolist(), distributed.all_gather_objects({"r": ctx.rank}), \
        distributed.broadcast_object(f"from {ctx.rank}")


def test_collectives_over_two_gloo_processes():
    out = run_ranks(_collectives, 2)
    assert [o[:2] for o in out] == [(0, 2), (1, 2)]
    assert all(o[2] == [3.0, 4.0] for o in out)  # 1 + 2, 2 + 2
    assert all(o[3] == [{"r": 0}, {"r": 1}] for o in out)
    assert all(o[4] == "from 0" for o in out)


def test_mine_is_this_ranks_share_and_everything_without_ranks():
    seq = torch.arange(11)
    parts = [distributed.mine(seq, distributed.Context(r, 3, r)) for r in range(3)]
    assert torch.equal(torch.cat(parts), seq) and [len(p) for p in parts] == [4, 4, 3]
    assert distributed.mine(range(5), None) == range(5)
    assert distributed.mine(range(5), distributed.Context()) == range(5)  # a world of one runs whole
    assert not distributed.spread(None) and not distributed.spread(distributed.Context())
    assert distributed.spread(distributed.Context(1, 2, 1))
