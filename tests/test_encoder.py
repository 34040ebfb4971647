"""encoder.py: both semantic encoders map x0 to one z per image, independently of the batch, and every
weight learns from a loss on z."""
import pytest
import torch

from encoder import EncoderConfig, PDAEEncoder, PDAEEncoderConfig, SemanticEncoder

ENCODERS = {
    "diffae": lambda: SemanticEncoder(EncoderConfig(res=16, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_res=(8,),
                                                    z_dim=12, norm_groups=4)),
    "pdae": lambda: PDAEEncoder(PDAEEncoderConfig(res=16, ch=8, ch_mult=(1, 2), attn_res=(8,), num_heads=2, z_dim=12,
                                                  norm_groups=4)),
}


@pytest.mark.parametrize("name", ENCODERS)
@pytest.mark.parametrize("seed", [0, 1])
def test_one_code_per_image_whatever_the_batch(name, seed):
    torch.manual_seed(seed)
    enc = ENCODERS[name]().eval()
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    with torch.no_grad():
        z = enc(x)
        alone = torch.cat([enc(x[i:i + 1]) for i in range(5)])
    assert z.shape == (5, 12) and torch.allclose(z, alone, atol=1e-5)
    assert not torch.allclose(z[0], z[1])  # different images, different codes


@pytest.mark.parametrize("name", ENCODERS)
def test_every_weight_learns_from_a_loss_on_z(name):
    """Connectivity: with the zero-initialised output layers (ADM's init) nudged off zero, every weight gets a gradient."""
    torch.manual_seed(0)
    enc = ENCODERS[name]()
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.01 * torch.randn_like(p))
    enc(torch.rand(3, 3, 16, 16) * 2 - 1).square().sum().backward()
    silent = [n for n, p in enc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent, f"no gradient reaches {silent}"
