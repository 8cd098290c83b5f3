"""The PyTorch hash grid against a direct, per-point computation of Instant-NGP's encoding."""

import math

import torch

from dreamfusion.encoding.hashgrid import HashGrid, HashGridConfig

PRIMES = (1, 2654435761, 805459861)


def direct_encoding(u, tables, base, desired, levels, log2_t, smooth):
    """One point u in [0,1]^3, written from the paper's definition with Python numbers."""
    b = math.exp((math.log(desired) - math.log(base)) / (levels - 1))
    out = []
    for level in range(levels):
        res = math.ceil(base * b**level)
        size = tables[level].shape[0]
        dense = (res + 1) ** 3 <= 2**log2_t
        i0, f = [], []
        for k in range(3):
            p = u[k] * res
            i = min(math.floor(p), res - 1)
            fr = p - i
            i0.append(i)
            f.append(fr * fr * (3 - 2 * fr) if smooth else fr)
        feat = [0.0] * tables[level].shape[1]
        for corner in range(8):
            bits = ((corner >> 2) & 1, (corner >> 1) & 1, corner & 1)
            v = [i0[k] + bits[k] for k in range(3)]
            w = 1.0
            for k in range(3):
                w *= f[k] if bits[k] else 1 - f[k]
            if dense:
                idx = v[0] + v[1] * (res + 1) + v[2] * (res + 1) ** 2
            else:
                h = 0
                for k in range(3):
                    h ^= (v[k] * PRIMES[k]) & 0xFFFFFFFF  # tiny-cuda-nn hashes in uint32
                idx = h % size
            for j in range(len(feat)):
                feat[j] += w * float(tables[level][idx, j])
        out += feat
    return out


def test_matches_direct_computation_dense_and_hashed_levels():
    cfg = HashGridConfig(num_levels=4, base_resolution=4, desired_resolution=64, log2_hashmap_size=8, level_dim=2)
    torch.manual_seed(0)
    grid = HashGrid(cfg, bound=1.0)
    for t in grid.tables:
        t.data.uniform_(-1, 1)
    assert grid.hashed == [False, True, True, True]
    x = torch.rand(64, 3, dtype=torch.float32) * 2 - 1
    x[0] = torch.tensor([-1.0, -1.0, -1.0])
    x[1] = torch.tensor([1.0, 1.0, 1.0])  # the upper corner uses the last cell
    got = grid(x)
    u = ((x.double() + 1) / 2).clamp(0, 1)
    tables = [t.detach().double() for t in grid.tables]
    want = torch.tensor([direct_encoding(p.tolist(), tables, 4, 64, 4, 8, True) for p in u])
    assert got.shape == (64, 8)
    assert (got.double() - want).abs().max() < 1e-5


def test_linear_interpolation_and_max_level():
    cfg = HashGridConfig(
        num_levels=3,
        base_resolution=2,
        desired_resolution=16,
        log2_hashmap_size=6,
        interpolation="linear",
        encoder_max_level=2,
    )
    torch.manual_seed(1)
    grid = HashGrid(cfg, bound=2.0)
    for t in grid.tables:
        t.data.uniform_(-1, 1)
    x = torch.rand(16, 3) * 4 - 2
    got = grid(x)
    u = ((x.double() + 2) / 4).clamp(0, 1)
    tables = [t.detach().double() for t in grid.tables]
    want = torch.tensor([direct_encoding(p.tolist(), tables, 2, 16, 3, 6, False) for p in u])
    assert (got[:, :4].double() - want[:, :4]).abs().max() < 1e-5
    assert torch.all(got[:, 4:] == 0)  # levels above encoder_max_level are off


def test_gradients_reach_only_touched_entries():
    cfg = HashGridConfig(num_levels=2, base_resolution=4, desired_resolution=8, log2_hashmap_size=10)
    grid = HashGrid(cfg)
    x = torch.zeros(1, 3) + 0.3
    grid(x).sum().backward()
    touched = [int((t.grad.abs().sum(1) > 0).sum()) for t in grid.tables]
    assert all(1 <= n <= 8 for n in touched)


def test_compiled_path_matches_eager_in_training_and_inference():
    cfg = HashGridConfig(num_levels=4, base_resolution=4, desired_resolution=64, log2_hashmap_size=8)
    torch.manual_seed(2)
    eager, compiled = HashGrid(cfg), HashGrid(cfg, compile=True)
    compiled.load_state_dict(eager.state_dict())
    x = torch.rand(500, 3) * 2 - 1
    a, b = eager(x), compiled(x)
    assert (a - b).abs().max() < 1e-6
    a.square().sum().backward()
    b.square().sum().backward()
    for ta, tb in zip(eager.tables, compiled.tables):
        assert (ta.grad - tb.grad).abs().max() < 1e-6
    with torch.no_grad():
        c = compiled(x[:100])
    assert not c.requires_grad and (c - a[:100].detach()).abs().max() < 1e-6


def test_compile_without_a_compiler_runs_eagerly(monkeypatch, caplog):
    """The CPU image has no C++ compiler, which inductor needs: trainer.compile=true there must
    run the same encoding eagerly, with one warning, not fail at the first step."""
    monkeypatch.setenv("CXX", "no-such-c++-compiler")
    cfg = HashGridConfig(num_levels=4, base_resolution=4, desired_resolution=64, log2_hashmap_size=8)
    torch.manual_seed(2)
    eager = HashGrid(cfg)
    with caplog.at_level("WARNING"):
        grid = HashGrid(cfg, compile=True)
    assert not grid.compiled
    assert "no C++ compiler (no-such-c++-compiler)" in caplog.text
    grid.load_state_dict(eager.state_dict())
    x = torch.rand(200, 3) * 2 - 1
    assert torch.equal(grid(x), eager(x))
