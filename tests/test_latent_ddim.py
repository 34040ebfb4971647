"""Property tests of the latent DDIM (Diff-AE §4, Eq. 9, App. A.1, Table 6)."""
import torch
import torch.nn.functional as F

from latent_ddim import LatentDDIM, LatentNet, LatentNetConfig
from nn import timestep_embedding

SMALL = dict(z_dim=8, hidden=16, num_layers=5)



def test_defaults_are_the_ffhq_preset():
    c = LatentNetConfig()
    assert (c.z_dim, c.hidden, c.num_layers, c.skip_layers) == (512, 2048, 10, tuple(range(1, 10)))
    assert LatentNetConfig(num_layers=20).skip_layers == tuple(range(1, 20))  # Horse/Bedroom: 20 layers
    assert c.condition_bias == 1 and c.use_norm and c.dropout == 0


def test_skip_layers_widen_their_linear():
    D, H = SMALL["z_dim"], SMALL["hidden"]
    net = LatentNet(LatentNetConfig(**SMALL))
    ins = [layer.linear.in_features for layer in net.layers]
    outs = [layer.linear.out_features for layer in net.layers]
    assert ins == [D] + [H + D] * 4 and outs == [H] * 4 + [D]
    net = LatentNet(LatentNetConfig(**SMALL, skip_layers=(2,)))
    assert [layer.linear.in_features for layer in net.layers] == [D, H, H + D, H, H]


def test_every_skip_layer_sees_the_input_verbatim():
    torch.manual_seed(0)
    cfg = LatentNetConfig(**SMALL)
    net = LatentNet(cfg).eval()
    seen = {}
    for i, layer in enumerate(net.layers):
        layer.linear.register_forward_hook(lambda m, inp, out, i=i: seen.__setitem__(i, inp[0]))
    z_t, t = torch.randn(4, cfg.z_dim), torch.tensor([0, 10, 500, 999])
    net(z_t, t)
    assert torch.equal(seen[0], z_t)
    for i in cfg.skip_layers:
        assert torch.equal(seen[i][:, -cfg.z_dim:], z_t)  # (B, H + D): [previous output | z_t]
    # Perturbing one input coordinate changes the input of every layer (directly, through the concat).
    seen_before = dict(seen)
    z2 = z_t.clone()
    z2[:, 3] += 1.0
    net(z2, t)
    assert all(not torch.equal(seen[i], seen_before[i]) for i in range(cfg.num_layers))


def test_layer_scales_by_t_before_norm_and_last_layer_is_linear():
    """App. A.1: h = SiLU(LayerNorm(W x * (1 + s(t)))); the output layer is a plain linear."""
    torch.manual_seed(0)
    cfg = LatentNetConfig(**SMALL)
    net = LatentNet(cfg).eval()
    x, t = torch.randn(3, cfg.z_dim), torch.tensor([1, 2, 3])
    cond = net.time_embed(timestep_embedding(t, cfg.time_emb_dim))  # (B, D): the scales' input
    L0 = net.layers[0]
    h = L0.linear(x) * (1 + L0.linear_emb(F.silu(cond)))
    expected = F.silu(F.layer_norm(h, (cfg.hidden,), L0.norm.weight, L0.norm.bias))
    assert torch.allclose(L0(x, cond), expected, atol=1e-6)
    last = net.layers[-1]
    hin = torch.randn(3, cfg.hidden + cfg.z_dim)
    assert torch.allclose(last(hin, cond), last.linear(hin))
    # t enters only through the scale: with it zeroed, eps no longer depends on t.
    for layer in net.layers[:-1]:
        torch.nn.init.zeros_(layer.linear_emb.weight)
        torch.nn.init.zeros_(layer.linear_emb.bias)
    assert torch.equal(net(x, torch.tensor([0, 0, 0])), net(x, torch.tensor([999, 500, 7])))


def test_normalize_round_trip_and_stats():
    g = torch.Generator().manual_seed(0)
    z_all = 3.0 + torch.randn(2000, 8, generator=g) * torch.linspace(0.1, 5, 8)
    m = LatentDDIM(LatentNetConfig(**SMALL))
    m.set_stats(z_all)
    zn = m.normalize(z_all)
    assert torch.allclose(zn.mean(0), torch.zeros(8), atol=1e-5)
    assert torch.allclose(zn.std(0), torch.ones(8), atol=1e-5)
    assert torch.allclose(m.denormalize(zn), z_all, atol=1e-5)
    assert set(dict(m.named_buffers())) == {"mean", "std"}  # saved with the model


def test_loss_is_l1_on_normalized_codes():
    """Diff-AE Eq. 9, by hand: mean |eps_omega(sqrt(ab) zn + sqrt(1 - ab) eps, t) - eps| on zn = (z - mean) / std."""
    torch.manual_seed(0)
    m = LatentDDIM(LatentNetConfig(**SMALL))
    m.set_stats(torch.randn(100, 8) * 2 + 1)
    z, noise, t = torch.randn(5, 8) * 2 + 1, torch.randn(5, 8), torch.tensor([0, 1, 250, 700, 999])
    ab = 0.992 ** (t.double() + 1)  # constant beta = 0.008: alphabar_t = (1 - 0.008)^(t + 1)
    assert torch.allclose(m.diffusion.alphas_cumprod[t], ab)
    zn = (z - m.mean) / m.std
    z_t = ab.sqrt().float()[:, None] * zn + (1 - ab).sqrt().float()[:, None] * noise
    expected = (m.net(z_t, t) - noise).abs().mean()
    assert torch.allclose(m.loss(z, t=t, noise=noise), expected, atol=1e-6)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(m.loss(z, generator=g1), m.loss(z, generator=g2))


def test_sample_shapes_determinism_and_denormalization():
    torch.manual_seed(0)
    m = LatentDDIM(LatentNetConfig(**SMALL))
    m.set_stats(torch.randn(100, 8) * 4 + 10)
    s1 = m.sample(6, 5, generator=torch.Generator().manual_seed(1))
    s2 = m.sample(6, 5, generator=torch.Generator().manual_seed(1))
    s3 = m.sample(6, 5, generator=torch.Generator().manual_seed(2))
    assert s1.shape == (6, 8) and torch.equal(s1, s2) and not torch.equal(s1, s3)
    raw = LatentDDIM.from_config({**m.config, "znormalize": False})
    raw.load_state_dict(m.state_dict())
    sn = raw.sample(6, 5, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(s1, m.denormalize(sn), atol=1e-5)  # sample() returns un-normalised codes
    assert sn.abs().max() > 1  # no clipping to [-1, 1]: normalised codes are unbounded


def test_config_rebuilds_the_same_model():
    m = LatentDDIM(LatentNetConfig(**SMALL, skip_layers=(1, 3)), T=500, schedule="linear")
    m2 = LatentDDIM.from_config(m.config)
    assert m2.config == m.config and m2.diffusion.T == 500 and m2.diffusion.schedule == "linear"
    m2.load_state_dict(m.state_dict(), strict=True)


def test_training_on_a_gaussian_mixture_moves_samples_to_the_data():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[7.0, -5.0], [13.0, -5.0]])
    draw = lambda n: centres[torch.randint(0, 2, (n,), generator=g)] + 0.3 * torch.randn(n, 2, generator=g)
    z_all = draw(4096)
    m = LatentDDIM(LatentNetConfig(z_dim=2, hidden=64, num_layers=4))
    m.set_stats(z_all)

    def far_from_modes():
        s = m.sample(1000, 20, generator=torch.Generator().manual_seed(1))
        return s, (s[:, None] - centres[None]).norm(dim=-1).min(1).values.mean()

    _, before = far_from_modes()
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    for _ in range(800):
        loss = m.loss(z_all[torch.randint(0, len(z_all), (256,), generator=g)], generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    s, after = far_from_modes()
    mu, sd = z_all.mean(0), z_all.std(0)
    assert after < 0.5 < before  # mode width is 0.3: samples land on the modes
    assert ((s.mean(0) - mu).abs() < 0.15 * sd).all()
    assert ((s.std(0) / sd - 1).abs() < 0.3).all()
    assert 0.35 < (s[:, 0] > 10).float().mean() < 0.65  # both modes, in about equal shares


def test_pdae_sampling_option_clamps_the_start_and_clips_every_step():
    torch.manual_seed(0)
    m = LatentDDIM(LatentNetConfig(**SMALL), znormalize=False, clip=True)
    with torch.no_grad():
        m.net.layers[-1].linear.bias.fill_(5.0)  # predictions far outside [-1, 1]
    again = LatentDDIM.from_config(m.config)
    assert again.clip is True and again.config == m.config
    z = m.sample(6, 5, generator=torch.Generator().manual_seed(1))
    assert z.abs().max() <= 1  # on the Diff-AE grid the last move lands on the clipped z_0
    z_T = torch.randn(6, SMALL["z_dim"], generator=torch.Generator().manual_seed(1)).clamp(-1, 1)
    with torch.no_grad():
        assert torch.equal(z, m.diffusion.ddim_sample(m.net, z_T, 5, clip=True))
    grid = LatentDDIM.from_config({**m.config, "grid": "pdae"})
    assert grid.diffusion.grid == "pdae" and len(grid.diffusion.ddim_moves(5)) == 5
    assert LatentDDIM.from_config({"net": m.config["net"]}).clip is False  # older configs: Diff-AE's sampler
