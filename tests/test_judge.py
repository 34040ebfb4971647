"""The toyfaces judge: shapes, caching, batching, and that a small one learns the attributes."""
import os

import pytest
import torch

import judge
from judge import AttributeNet, attribute_accuracy, attribute_judge, knows, toy_frechet_distance


def images(n=4, c=3, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, h, w, generator=g) * 2 - 1

@pytest.mark.parametrize("res", [16, 64])
def test_attribute_net_shapes(res):
    torch.manual_seed(0)
    net = AttributeNet(n_attrs=8)
    x = images(2, 3, res, res)
    f = net.features(x)
    assert f.shape == (2, net.feature_dim) and 128 <= net.feature_dim <= 256
    assert net(x).shape == (2, 8)


def test_attribute_judge_caches_and_reloads(tmp_path, monkeypatch):
    data = pytest.importorskip("data")
    torch.manual_seed(0)
    trained = AttributeNet(n_attrs=3, attributes=["A", "B", "C"]).eval()
    calls = []
    monkeypatch.setattr(judge, "train_attribute_net",
                        lambda res, **kw: calls.append(res) or trained)
    j1 = attribute_judge(16, cache_dir=str(tmp_path))
    j2 = attribute_judge(16, cache_dir=str(tmp_path))
    assert calls == [16]  # trained once, then loaded
    # one file, no temp file left behind
    assert os.listdir(tmp_path) == [f"toyfaces-v{data.ToyFaces.VERSION}-judge-res16.pt"]
    x = images(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(j1(x), j2(x))
    assert j2.attributes == ["A", "B", "C"]


def test_the_judge_is_the_same_whatever_context_trains_it(tmp_path, monkeypatch):
    """sample.py runs its commands under bf16 autocast and inference mode: a judge trained there (its first
    use) must equal one trained anywhere else, not a collapsed net that answers one class."""
    import functools
    monkeypatch.chdir(tmp_path)  # ToyFaces caches its renders under ./data/cache
    small = functools.partial(judge.train_attribute_net, n_train=200, steps=30, batch_size=32, width=16, log_every=0)
    monkeypatch.setattr(judge, "train_attribute_net", lambda res, **kw: small(res))
    plain = attribute_judge(16, cache_dir="a")
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        inside = attribute_judge(16, cache_dir="b")
    for (name, p), q in zip(plain.state_dict().items(), inside.state_dict().values()):
        assert torch.equal(p, q), name


def test_attribute_accuracy_and_toy_frechet_distance_run_batched():
    torch.manual_seed(0)
    net = AttributeNet(n_attrs=2, attributes=["A", "B"]).eval()
    x = images(10, 3, 16, 16)
    acc = attribute_accuracy(net, x, torch.randint(0, 2, (10, 2)).float(), batch_size=3)
    assert set(acc) == {"A", "B"} and all(0 <= v <= 1 for v in acc.values())
    assert toy_frechet_distance(x, x, net, batch_size=3) == pytest.approx(0, abs=1e-6)
    y = images(10, 3, 16, 16, seed=1) * 0.3
    d3, d256 = toy_frechet_distance(x, y, net, batch_size=3), toy_frechet_distance(x, y, net)
    assert d3 > 0 and d3 == pytest.approx(d256, rel=1e-4)


def test_small_judge_beats_chance_on_held_out_toyfaces(tmp_path, monkeypatch):
    data = pytest.importorskip("data")
    monkeypatch.chdir(tmp_path)  # ToyFaces caches its renders under ./data/cache
    net = judge.train_attribute_net(16, n_train=400, steps=60, batch_size=32, width=16,
                                      log_every=0)
    x, y = data.ToyFaces(16, 400, seed=0, split="test").tensors()
    acc = attribute_accuracy(net, x, y)
    assert set(acc) == set(data.ToyFaces.ATTRIBUTES)
    # a few seconds of training: colours are learned first, shapes (smile, glasses) later
    assert sum(acc.values()) / len(acc) > 0.62, acc
    assert acc["Black_Hair"] > 0.85 and acc["Pale_Skin"] > 0.85, acc



def test_the_judge_knows_toyfaces_attributes_only():
    from data import ToyFaces
    assert knows(ToyFaces.ATTRIBUTES)
    assert not knows(["5_o_Clock_Shadow", "Arched_Eyebrows"]) and not knows([]) and not knows(ToyFaces.ATTRIBUTES[::-1])
