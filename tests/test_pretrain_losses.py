"""The pretraining losses against their papers' formulas written as loops; queue, EMA, heads, augmentations."""

import copy
import math

import pytest
import torch
from torch import nn
from torchvision.transforms import v2

from bench.pretrain import augment
from bench.pretrain.distributed import gather_no_grad, gather_with_grad, world
from bench.pretrain.heads import AttentionPool2d, projection_mlp
from bench.pretrain.losses import (
    LogitScale,
    MoCoQueue,
    clip_loss,
    convirt_loss,
    moco_infonce,
    momentum_update,
    nt_xent,
)

D = torch.float64


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def _cos(a, b):
    a, b = a.detach(), b.detach()
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


def _nt_xent_loop(z1, z2, t):
    """SimCLR eq. 1: anchor k, positive its other view, all 2N - 1 other views in the denominator."""
    z = torch.cat([z1, z2])
    n2 = len(z)
    total = 0.0
    for k in range(n2):
        p = (k + n2 // 2) % n2
        denominator = sum(math.exp(_cos(z[k], z[j]) / t) for j in range(n2) if j != k)
        total += -math.log(math.exp(_cos(z[k], z[p]) / t) / denominator)
    return total / n2


def _info_nce_loop(a, b, scale):
    """mean_i -log exp(s·cos(a_i, b_i)) / sum_k exp(s·cos(a_i, b_k))."""
    total = 0.0
    for i in range(len(a)):
        denominator = sum(math.exp(scale * _cos(a[i], b[k])) for k in range(len(b)))
        total += -math.log(math.exp(scale * _cos(a[i], b[i])) / denominator)
    return total / len(a)


def test_single_process_world_and_gathers_are_identities():
    x = _rand(3, 2).requires_grad_()
    assert world() == (0, 1)
    assert gather_with_grad(x) is x
    y = gather_no_grad(x)
    assert not y.requires_grad and torch.equal(y, x.detach())


def test_nt_xent_matches_the_loop_formula_in_both_directions():
    z1, z2 = _rand(5, 4, seed=1), _rand(5, 4, seed=2)
    for t in (0.1, 0.5):
        want = _nt_xent_loop(z1, z2, t)
        assert nt_xent(z1, z2, t).item() == pytest.approx(want, rel=1e-10)
        assert nt_xent(z2, z1, t).item() == pytest.approx(want, rel=1e-10)
    assert torch.equal(nt_xent(z1, z2, gather=True), nt_xent(z1, z2, gather=False))


def test_nt_xent_has_2n_minus_2_negatives():
    # N = 1: no negatives, the positive alone in the denominator, so the loss is 0 whatever the
    # similarity; the anchor's similarity to itself is not a candidate
    z1, z2 = _rand(1, 4, seed=3), _rand(1, 4, seed=4)
    assert nt_xent(z1, z2).item() == pytest.approx(0.0, abs=1e-12)
    # N = 2: exactly 2 negatives per anchor: with orthogonal views the loss is log(1 + 2)
    e = torch.eye(4, dtype=D)
    z1, z2 = e[[0, 1]], e[[2, 3]]  # all pairs orthogonal: every logit is 0
    assert nt_xent(z1, z2).item() == pytest.approx(math.log(3))


def test_moco_infonce_matches_the_loop_formula_and_keys_are_constants():
    q, k = _rand(4, 3, seed=5).requires_grad_(), _rand(4, 3, seed=6).requires_grad_()
    queue = nn.functional.normalize(_rand(7, 3, seed=7), dim=1)
    t = 0.2
    want = 0.0
    for i in range(4):
        logits = [_cos(q[i], k[i]) / t] + [_cos(q[i], queue[j]) / t for j in range(7)]
        want += -math.log(math.exp(logits[0]) / sum(math.exp(v) for v in logits))
    loss = moco_infonce(q, k, queue, t)
    assert loss.item() == pytest.approx(want / 4, rel=1e-10)
    loss.backward()
    assert q.grad is not None and k.grad is None


def test_moco_loss_then_enqueue_then_backward():
    # MoCo enqueues inside the step, before backward: the loss must not hold the live buffer
    mq = MoCoQueue(3, size=6, seed=0).double()
    q = _rand(2, 3, seed=8).requires_grad_()
    loss = moco_infonce(q, _rand(2, 3, seed=9), mq.queue)
    mq.enqueue(_rand(2, 3, seed=9))
    loss.backward()
    assert q.grad is not None


def test_convirt_lambda_weighting():
    img, txt = _rand(5, 4, seed=10), _rand(5, 4, seed=11)
    i2t, t2i = _info_nce_loop(img, txt, 10.0), _info_nce_loop(txt, img, 10.0)
    assert convirt_loss(img, txt, 0.1, lam=1.0).item() == pytest.approx(i2t, rel=1e-10)
    assert convirt_loss(img, txt, 0.1, lam=0.0).item() == pytest.approx(t2i, rel=1e-10)
    assert convirt_loss(img, txt).item() == pytest.approx(0.75 * i2t + 0.25 * t2i, rel=1e-10)
    assert i2t != pytest.approx(t2i)  # the test would not see a swapped λ otherwise


def test_clip_loss_is_symmetric_with_a_learnable_temperature():
    img, txt = _rand(5, 4, seed=12), _rand(5, 4, seed=13)
    scale = LogitScale().double()
    assert scale().item() == pytest.approx(math.log(1 / 0.07))
    s = math.exp(scale().item())  # 1/0.07 as the float32 parameter holds it
    want = (_info_nce_loop(img, txt, s) + _info_nce_loop(txt, img, s)) / 2
    loss = clip_loss(img, txt, scale())
    assert loss.item() == pytest.approx(want, rel=1e-10)
    assert clip_loss(txt, img, scale()).item() == pytest.approx(want, rel=1e-10)
    loss.backward()
    assert scale.log_scale.grad is not None and scale.log_scale.grad.abs() > 0


def test_logit_scale_fixed_and_clamped():
    fixed = LogitScale(temperature=0.1)
    assert not fixed.log_scale.requires_grad
    assert fixed().item() == pytest.approx(math.log(10))
    assert list(fixed.parameters()) and not any(p.requires_grad for p in fixed.parameters())
    with pytest.raises(ValueError, match="1/100"):
        LogitScale(temperature=0.001)
    learnable = LogitScale()
    with torch.no_grad():
        learnable.log_scale.fill_(10.0)  # exp = 22026
    value = learnable()
    assert value.exp().item() == pytest.approx(100.0) and value.requires_grad
    (-value).backward()  # still a gradient at the ceiling: the scale can come back down
    assert learnable.log_scale.grad.item() == -1.0


def _enqueue_loop(queue, pointer, keys):
    queue = queue.clone()
    for key in keys:
        queue[pointer] = key
        pointer = (pointer + 1) % len(queue)
    return queue, pointer


def test_moco_queue_wraps_around():
    mq = MoCoQueue(3, size=5, seed=1)
    assert torch.allclose(mq.queue.norm(dim=1), torch.ones(5))
    assert torch.equal(mq.queue, MoCoQueue(3, size=5, seed=1).queue)
    queue, pointer = mq.queue.clone(), 0
    for n, seed in ((3, 20), (3, 21), (7, 22), (5, 23)):  # 3, 6 -> wrap, 13 > size, 5 == size
        keys = nn.functional.normalize(_rand(n, 3, seed=seed).float(), dim=1)
        mq.enqueue(keys * 3.0)  # normalized on the way in
        queue, pointer = _enqueue_loop(queue, pointer, keys)
        torch.testing.assert_close(mq.queue, queue)
        assert int(mq.pointer) == pointer


def test_moco_queue_state_dict_round_trip():
    a = MoCoQueue(3, size=5, seed=1)
    a.enqueue(_rand(2, 3, seed=30).float())
    b = MoCoQueue(3, size=5, seed=2)
    b.load_state_dict(a.state_dict())
    assert set(a.state_dict()) == {"keys", "pointer"}
    assert torch.equal(a.queue, b.queue) and int(b.pointer) == 2
    keys = _rand(4, 3, seed=31).float()
    a.enqueue(keys), b.enqueue(keys)
    assert torch.equal(a.queue, b.queue) and int(a.pointer) == int(b.pointer) == 1


def test_momentum_update_numbers():
    online = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    target = copy.deepcopy(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    online.train()(torch.randn(4, 3))  # new running statistics
    before = [p.detach().clone() for p in target.parameters()]
    momentum_update(online, target, m=0.9)
    for t, b, o in zip(target.parameters(), before, online.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o)
    for t, o in zip(target.buffers(), online.buffers()):
        assert torch.equal(t, o)
    with pytest.raises(ValueError, match="different parameters"):
        momentum_update(online, nn.Linear(3, 2))


def test_projection_mlp_layers():
    assert [type(m) for m in projection_mlp(8, 16, 4)] == [nn.Linear, nn.ReLU, nn.Linear]
    assert [type(m) for m in projection_mlp(8, 16, 4, layers=1)] == [nn.Linear]
    three = projection_mlp(8, 16, 4, layers=3)
    assert [m.out_features for m in three if isinstance(m, nn.Linear)] == [16, 16, 4]
    assert three(torch.randn(2, 8)).shape == (2, 4)
    with pytest.raises(ValueError):
        projection_mlp(8, 16, 4, layers=0)


def test_attention_pool_on_a_grid_other_than_its_init():
    pool = AttentionPool2d(grid=4, embed_dim=16, num_heads=4, output_dim=8)
    assert pool(torch.randn(2, 16, 4, 4)).shape == (2, 8)
    out = pool(torch.randn(3, 16, 3, 5))  # positional embedding resampled
    assert out.shape == (3, 8)
    out.sum().backward()
    assert pool.pos_embed.grad is not None


IMG = torch.randint(
    0, 256, (1, 48, 60), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
)
RANDOM = [augment.simclr_transform, augment.moco_cxr_transform, augment.image_text_transform]


@pytest.mark.parametrize("make", RANDOM + [augment.eval_transform], ids=lambda f: f.__name__)
def test_transform_output_shape_dtype_range_and_seed(make):
    tf = make(32)
    torch.manual_seed(5)
    a = tf(IMG)
    torch.manual_seed(5)
    b = tf(IMG)
    assert a.shape == (1, 32, 32) and a.dtype == torch.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert torch.equal(a, b)


@pytest.mark.parametrize("make", RANDOM, ids=lambda f: f.__name__)
def test_random_transforms_vary(make):
    tf = make(32)
    torch.manual_seed(0)
    views = [tf(IMG) for _ in range(4)]
    assert any(not torch.equal(views[0], v) for v in views[1:])


def test_eval_transform_is_an_exact_resize_and_image_text_has_no_flip():
    want = v2.functional.resize(IMG.float() / 255, [32, 32], antialias=True)
    torch.testing.assert_close(augment.eval_transform(32)(IMG), want)
    steps = augment.image_text_transform(32).transforms
    assert not any(isinstance(t, v2.RandomHorizontalFlip) for t in steps)
