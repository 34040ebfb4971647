"""Exercise 4 (respace): the timesteps a short sampler visits (Diff-AE §5.5; the official ddimN / even rules)."""
import pytest
import torch

import diffusion
from diffusion import Diffusion

EXERCISE = "respace"


@pytest.mark.parametrize("T, steps, want", [
    (1000, 10, list(range(0, 1000, 100))),
    (1000, 20, list(range(0, 1000, 50))),
    (1000, 1, [0]),
    (1000, 1000, list(range(1000))),
    (10, 3, [0, 4, 8]),   # stride 4 is the smallest with 3 timesteps (stride 3 gives 4: 0, 3, 6, 9)
])
def test_respace_ddim_rule(T, steps, want):
    got = diffusion.space_timesteps(T, steps)
    more = "..." if len(want) > 12 else ""
    assert list(got) == want, f"space_timesteps({T}, {steps}) must be {want[:12]}{more}, got {list(got)[:12]}{more}"


@pytest.mark.parametrize("T, steps, want", [
    (1000, 10, [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]),
    (1000, 3, [0, 500, 999]),   # round(499.5) = 500: Python rounds halves to even
    (1000, 1, [0]),
    (250, 4, [0, 83, 166, 249]),
])
def test_respace_even_rule(T, steps, want):
    got = diffusion.space_timesteps(T, steps, "even")
    assert list(got) == want, f"space_timesteps({T}, {steps}, 'even') must be {want}, got {list(got)}"


def test_respace_falls_back_to_even_without_an_integer_stride():
    got = diffusion.space_timesteps(1000, 600)
    assert len(got) == 600, f"600 of 1000 has no integer stride: fall back to the even rule (600 timesteps), got {len(got)}"
    assert list(got) == diffusion.space_timesteps(1000, 600, "even") and got[0] == 0 and got[-1] == 999


def test_respace_refuses_bad_arguments():
    for args in [(10, 11), (10, 0), (10, 3, "cosine")]:
        with pytest.raises(ValueError):
            diffusion.space_timesteps(*args)


def test_respace_is_what_the_samplers_walk():
    """Diffusion.respace, ddim_sample and ddim_invert all go through your space_timesteps."""
    d = Diffusion(1000)
    assert d.respace(10).tolist() == list(range(0, 1000, 100)), "Diffusion.respace(10) must call space_timesteps(1000, 10)"
    seen = []
    f = lambda x, t: seen.append(int(t[0])) or torch.zeros_like(x)
    d.ddim_sample(f, torch.zeros(1, 1), 10)
    assert seen == list(range(900, -1, -100)), f"a 10-step decode should ask eps at t = 900, 800, ..., 0; it asked at {seen}"
    seen.clear()
    d.ddim_invert(f, torch.zeros(1, 1), 5)
    assert seen == [0, 200, 400, 600, 800], f"a 5-step encode should go up through t = 0, 200, ..., 800; it went {seen}"
