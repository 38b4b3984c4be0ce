"""The suite: healthy controls of several kinds, and deliberately broken trainings (at least one per
label; several labels also have a second, less textbook instance: another architecture, optimizer
or way of getting it wrong)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from . import models as M
from .runner import Case, Setup, digits, standardized_digits


def _digits_setup(model: nn.Module, opt: str = "adam", lr: float = 1e-3, **kw: object) -> Setup:
    x, y, xv, yv = standardized_digits()
    o: torch.optim.Optimizer
    if opt == "adam":
        o = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        o = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9 if opt == "sgdm" else 0.0)
    return Setup(model, o, nn.CrossEntropyLoss(), x, y, xv, yv, **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ healthy
def h_relu_mlp() -> Setup:
    return _digits_setup(M.init_linear(M.mlp((64, 128, 64, 10)), "he"), "adam", 1e-3)


def h_cnn() -> Setup:
    return _digits_setup(M.cnn(), "sgdm", 0.05, steps=120)


def h_tanh_mlp() -> Setup:
    return _digits_setup(M.init_linear(M.mlp((64, 64, 64, 10), act=nn.Tanh), "xavier"), "sgdm", 0.05)


def h_bn_dropout() -> Setup:
    model = nn.Sequential(
        nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(128, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(64, 10),
    )  # fmt: skip
    return _digits_setup(model, "adam", 1e-3)


def h_transformer() -> Setup:
    x, y = M.sequences(1200, seed=1)
    xv, yv = M.sequences(300, seed=2)
    model = M.TinyTransformer()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return Setup(model, opt, nn.CrossEntropyLoss(), x, y, xv, yv, steps=150, batch=32)


def h_regression() -> Setup:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1200, 10, generator=g)
    w = torch.randn(10, 1, generator=g)
    y = torch.tanh(x @ w) + 0.1 * torch.randn(1200, 1, generator=g)
    model = M.init_linear(M.mlp((10, 64, 64, 1)), "he")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return Setup(model, opt, nn.MSELoss(), x[:1000], y[:1000], x[1000:], y[1000:], steps=200)


def h_binary_gelu() -> Setup:
    x, y = M.blobs(3000, seed=4, sep=0.3)
    model = nn.Sequential(nn.Linear(20, 64), nn.LayerNorm(64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    yf = y.float().unsqueeze(1)
    return Setup(model, opt, nn.BCEWithLogitsLoss(), x[:2500], yf[:2500], x[2500:], yf[2500:], steps=150)


def h_small_batch_sgd() -> Setup:
    return _digits_setup(M.init_linear(M.mlp((64, 64, 10)), "he"), "sgd", 0.05, steps=250, batch=8, val_every=25)


def h_residual_mlp() -> Setup:
    return _digits_setup(M.ResidualMLP(64, 64, 8, 10), "adam", 1e-3, steps=150)


def h_gru() -> Setup:
    x, y = M.sequences(1200, seed=5)
    xv, yv = M.sequences(300, seed=6)
    model = M.GRUClassifier()
    return Setup(model, torch.optim.Adam(model.parameters(), lr=3e-3), nn.CrossEntropyLoss(), x, y, xv, yv, steps=150, batch=32)


def h_autoencoder() -> Setup:
    x, _, xv, _ = standardized_digits()
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 32), nn.ReLU(),
                          nn.Linear(32, 64), nn.Sigmoid())
    M.init_linear(model, "he")
    # reconstruct the images scaled to (0, 1) from their standardized version
    return Setup(model, torch.optim.Adam(model.parameters(), lr=3e-3), nn.MSELoss(), x, torch.sigmoid(x), xv,
                 torch.sigmoid(xv), steps=200)


def h_deep_bn_cnn() -> Setup:
    blocks: list[nn.Module] = [M.Images()]
    c = 1
    for k in range(6):
        blocks += [nn.Conv2d(c, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
        c = 16
        if k in (1, 3):
            blocks.append(nn.AvgPool2d(2))
    blocks += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)]
    return _digits_setup(nn.Sequential(*blocks), "sgdm", 0.05, steps=120)


def h_warmup_cosine() -> Setup:
    s = _digits_setup(M.init_linear(M.mlp((64, 128, 10)), "he"), "adam", 1e-3, steps=200)
    sched = torch.optim.lr_scheduler.OneCycleLR(s.optimizer, max_lr=3e-3, total_steps=200)
    s.after_step = sched.step
    return s


def h_frozen_backbone() -> Setup:
    model = M.init_linear(M.mlp((64, 128, 64, 10)), "he")
    for p in model[0].parameters():
        p.requires_grad_(False)  # fine-tuning: the first layer is frozen on purpose
    x, y, xv, yv = standardized_digits()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    return Setup(model, opt, nn.CrossEntropyLoss(), x, y, xv, yv, steps=150)


def h_grad_accumulation() -> Setup:
    s = _digits_setup(M.init_linear(M.mlp((64, 64, 10)), "he"), "adam", 1e-3, steps=100, batch=16)
    s.accumulate = 4  # four micro-batches per optimizer step, zero_grad after each step
    return s


def h_label_smoothing_dropout() -> Setup:
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, 10))
    s = _digits_setup(model, "adam", 1e-3, steps=150)
    s.loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    return s


HEALTHY: list[Case] = [
    Case("relu_mlp_he", None, h_relu_mlp, note="ReLU MLP, He init, Adam"),
    Case("cnn_sgd", None, h_cnn, note="2-conv CNN, SGD momentum"),
    Case("tanh_mlp_xavier", None, h_tanh_mlp, note="tanh MLP, Xavier init, SGD momentum"),
    Case("bn_dropout_mlp", None, h_bn_dropout, note="BatchNorm + dropout MLP, proper train/eval"),
    Case("transformer_block", None, h_transformer, note="embedding + pre-LN transformer block, AdamW"),
    Case("regression_mse", None, h_regression, note="MLP regression, MSE"),
    Case("binary_layernorm_gelu", None, h_binary_gelu, note="LayerNorm + GELU, BCE-with-logits, weight decay"),
    Case("small_batch_sgd", None, h_small_batch_sgd, note="batch 8, plain SGD: noisy loss"),
    Case("residual_mlp_8_blocks", None, h_residual_mlp, note="8 pre-LN residual blocks"),
    Case("gru_sequences", None, h_gru, note="embedding + GRU"),
    Case("autoencoder_sigmoid_out", None, h_autoencoder, note="MSE autoencoder, sigmoid output, bottleneck 8"),
    Case("deep_bn_cnn_avgpool", None, h_deep_bn_cnn, note="6 conv + BN, average pooling"),
    Case("one_cycle_schedule", None, h_warmup_cosine, note="OneCycle LR schedule (warm-up)"),
    Case("frozen_first_layer", None, h_frozen_backbone, note="first layer frozen on purpose (fine-tuning)"),
    Case("gradient_accumulation", None, h_grad_accumulation, note="4 micro-batches per step"),
    Case("label_smoothing_dropout_0.5", None, h_label_smoothing_dropout, note="label smoothing 0.1, dropout 0.5"),
]


# ------------------------------------------------------------------------------ broken
def _named(model: nn.Sequential, names: list[str]) -> nn.Sequential:
    """Give a Sequential's children readable names (fc1, act1, ...)."""
    return nn.Sequential(OrderedDict(zip(names, model.children(), strict=True)))


def b_tiny_init_tanh() -> Setup:
    m = M.init_linear(M.mlp((64,) + (64,) * 7 + (10,), act=nn.Tanh), "normal", 0.02)
    return _digits_setup(m, "sgdm", 0.05, steps=100)


def b_tiny_init_cnn() -> Setup:
    m = nn.Sequential(
        M.Images(),
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 64, 10),
    )  # fmt: skip
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.normal_(mod.weight, std=0.01)
            nn.init.zeros_(mod.bias)
    return _digits_setup(m, "sgdm", 0.01, steps=100)


def b_default_init_deep_gelu() -> Setup:
    m = M.mlp((64,) + (64,) * 11 + (10,), act=nn.GELU)  # PyTorch's default init, 12 layers, no normalization
    return _digits_setup(m, "sgdm", 0.01, steps=100)


def b_big_init_relu() -> Setup:
    m = M.init_linear(M.mlp((64,) + (64,) * 7 + (10,)), "he", 2.5)
    return _digits_setup(m, "adam", 1e-4, steps=100)


def b_big_orthogonal_linear() -> Setup:
    m = nn.Sequential(*[nn.Linear(64, 64) for _ in range(6)], nn.Linear(64, 10))
    for mod in m:
        nn.init.orthogonal_(mod.weight, gain=3.0)
        nn.init.zeros_(mod.bias)
    return _digits_setup(m, "adam", 1e-4, steps=100)


def b_deep_sigmoid() -> Setup:
    m = M.mlp((64,) + (64,) * 9 + (10,), act=nn.Sigmoid)
    return _digits_setup(m, "sgd", 0.1, steps=120)


def b_deep_sigmoid_cnn() -> Setup:
    m = nn.Sequential(
        M.Images(),
        *[mod for _ in range(5) for mod in (nn.Conv2d(8 if _ else 1, 8, 3, padding=1), nn.Sigmoid())],
        nn.Flatten(), nn.Linear(8 * 64, 10),
    )
    return _digits_setup(m, "sgdm", 0.05, steps=100)


def b_exploding_grads_deep() -> Setup:
    m = M.init_linear(M.mlp((64,) + (64,) * 7 + (10,), act=nn.LeakyReLU), "he", 3.0)
    return _digits_setup(m, "adam", 1e-5, steps=100)


def b_exploding_grads_time() -> Setup:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1000, 10, generator=g) * 3
    y = x @ torch.randn(10, 1, generator=g)
    m = nn.Sequential(nn.Linear(10, 1))  # MSE Hessian ~ 2 * 9: stable only for lr < 0.11
    return Setup(m, torch.optim.SGD(m.parameters(), lr=0.15), nn.MSELoss(), x, y, steps=40)


def b_dead_bias() -> Setup:
    m = _named(M.init_linear(M.mlp((64, 64, 64, 10)), "he"), ["fc1", "relu1", "fc2", "relu2", "fc3"])
    with torch.no_grad():
        m.fc2.bias.fill_(-20.0)
    return _digits_setup(m, "adam", 1e-3, steps=80)


def b_dead_functional() -> Setup:
    m = M.FunctionalMLP()
    with torch.no_grad():
        m.fc1.bias.fill_(-15.0)
    return _digits_setup(m, "sgd", 0.05, steps=80)


def b_dead_cnn() -> Setup:
    m = M.cnn()
    with torch.no_grad():
        m[4].bias.fill_(-30.0)  # second conv
    return _digits_setup(m, "sgdm", 0.02, steps=80)


def b_saturated_tanh() -> Setup:
    m = _named(M.mlp((64, 64, 64, 10), act=nn.Tanh), ["fc1", "tanh1", "fc2", "tanh2", "fc3"])
    with torch.no_grad():
        m.fc1.weight.mul_(25.0)
    return _digits_setup(m, "sgd", 0.05, steps=80)


def b_saturated_sigmoid_bias() -> Setup:
    m = _named(M.mlp((64, 64, 64, 10), act=nn.Sigmoid), ["fc1", "sig1", "fc2", "sig2", "fc3"])
    with torch.no_grad():
        m.fc2.bias.fill_(8.0)
    return _digits_setup(m, "adam", 1e-3, steps=80)


def b_constant_init() -> Setup:
    m = M.init_linear(M.mlp((64, 64, 64, 10)), "constant", 0.05)
    return _digits_setup(m, "sgdm", 0.05, steps=60)


def b_zero_init_cnn() -> Setup:
    m = M.cnn(act=nn.Tanh)
    for mod in m.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            nn.init.zeros_(mod.weight)
            nn.init.zeros_(mod.bias)
    return _digits_setup(m, "adam", 1e-3, steps=60)


def b_log_layer() -> Setup:
    m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), M.LogOfRelu(), nn.Linear(64, 10))
    return _digits_setup(m, "adam", 1e-3, steps=40)


def b_sqrt_cnn() -> Setup:
    m = M.cnn()
    m[2] = M.SqrtLayer()  # sqrt instead of ReLU after the first conv: NaN wherever the conv is negative
    return _digits_setup(m, "sgdm", 0.01, steps=40)


def b_naive_softplus() -> Setup:
    x, y = digits()
    m = _named(nn.Sequential(nn.Linear(64, 64), M.NaiveSoftplus(), nn.Linear(64, 10)), ["fc1", "softplus", "fc2"])
    s = _digits_setup(m, "adam", 1e-3, steps=40)
    s.x, s.y = x[:1400] * 16, y[:1400]  # pixel scale: fc1 outputs reach ~100, exp overflows
    return s


def b_gradient_ascent() -> Setup:
    s = _digits_setup(M.init_linear(M.mlp((64, 64, 10)), "he"), "sgd", 0.05, steps=100)
    s.loss_sign = -1.0
    return s


def b_sgd_diverge_regression() -> Setup:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1000, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g)
    m = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    return Setup(m, torch.optim.SGD(m.parameters(), lr=0.9), nn.MSELoss(), x, y, steps=100)


def b_sorted_batches() -> Setup:
    x, y, _, _ = standardized_digits()
    order = torch.argsort(y, stable=True)
    s = _digits_setup(M.init_linear(M.mlp((64, 64, 10)), "he"), "sgd", 0.5, steps=150)
    s.x, s.y, s.shuffle = x[order], y[order], False
    return s


def b_momentum_bounce() -> Setup:
    return _digits_setup(M.init_linear(M.mlp((64, 64, 10)), "he"), "sgdm", 0.3, steps=150)


def b_zeroed_inputs() -> Setup:
    s = _digits_setup(M.init_linear(M.mlp((64, 64, 10)), "he"), "adam", 1e-3, steps=120)
    s.x = s.x * 0  # preprocessing bug
    s.xv = s.xv * 0 if s.xv is not None else None
    return s


def b_huge_weight_decay() -> Setup:
    x, y, xv, yv = standardized_digits()
    m = M.init_linear(M.mlp((64, 64, 64, 10)), "he")
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=3.0)
    return Setup(m, opt, nn.CrossEntropyLoss(), x, y, xv, yv, steps=120)


def b_adam_lr_high() -> Setup:
    return _digits_setup(M.init_linear(M.mlp((64, 64, 10)), "he"), "adam", 1.0, steps=150)


def b_sgd_lr_high_cnn() -> Setup:
    return _digits_setup(M.cnn(), "sgdm", 0.3, steps=120)


def b_sgd_lr_low() -> Setup:
    return _digits_setup(M.init_linear(M.mlp((64, 64, 64, 10)), "he"), "sgd", 1e-5, steps=120)


def b_adam_lr_low_cnn() -> Setup:
    return _digits_setup(M.cnn(), "adam", 3e-7, steps=120)


def b_overfit_small_data() -> Setup:
    x, y, _, _ = standardized_digits()
    m = M.init_linear(M.mlp((64, 256, 256, 10)), "he")
    s = _digits_setup(m, "adam", 2e-3, steps=200, batch=50, val_every=5)
    s.x, s.y = x[:50], y[:50]
    return s


def b_overfit_cnn() -> Setup:
    x, y, _, _ = standardized_digits()
    s = _digits_setup(M.cnn((32, 64)), "sgdm", 0.05, steps=200, batch=40, val_every=5)
    s.x, s.y = x[:40], y[:40]
    return s


def b_init_logits_scale() -> Setup:
    m = _named(M.init_linear(M.mlp((64, 64, 64, 10)), "he"), ["fc1", "relu1", "fc2", "relu2", "out"])
    with torch.no_grad():
        m.out.weight.mul_(30.0)
    return _digits_setup(m, "adam", 1e-3, steps=60)


def b_init_cnn_scale() -> Setup:
    m = M.cnn()
    for mod in m.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            with torch.no_grad():
                mod.weight.mul_(6.0)
    return _digits_setup(m, "sgdm", 1e-3, steps=60)


def b_raw_pixels() -> Setup:
    x, y = digits()
    s = _digits_setup(M.init_linear(M.mlp((64, 64, 10)), "he"), "adam", 1e-3, steps=60)
    s.x, s.y, s.xv, s.yv = x[:1400] * 16, y[:1400], x[1400:] * 16, y[1400:]
    return s


def b_mixed_scale_tabular() -> Setup:
    x, y = M.blobs(1200, d=12, classes=3, seed=8)
    scale = torch.ones(12)
    scale[0], scale[1] = 1e4, 3e3
    m = M.mlp((12, 32, 3))
    s = Setup(m, torch.optim.Adam(m.parameters(), 1e-3), nn.CrossEntropyLoss(), x[:1000] * scale, y[:1000],
              x[1000:] * scale, y[1000:], steps=60)
    return s


def b_not_in_optimizer() -> Setup:
    s = _digits_setup(_named(M.init_linear(M.mlp((64, 64, 64, 10)), "he"), ["fc1", "relu1", "fc2", "relu2", "fc3"]), "adam", 1e-3, steps=60)
    m = s.model
    s.optimizer = torch.optim.Adam([*m.fc1.parameters(), *m.fc3.parameters()], lr=1e-3)  # forgot fc2
    return s


def b_detached_layer() -> Setup:
    return _digits_setup(M.DetachedFirst(), "sgdm", 0.05, steps=60)


def b_no_zero_grad() -> Setup:
    s = _digits_setup(M.init_linear(M.mlp((64, 64, 10)), "he"), "sgd", 0.01, steps=60)
    s.zero_grad = False
    return s


def b_no_zero_grad_adam_cnn() -> Setup:
    s = _digits_setup(M.cnn(), "adam", 1e-3, steps=60)
    s.zero_grad = False
    return s


def b_softmax_into_ce() -> Setup:
    return _digits_setup(M.init_linear(M.mlp((64, 64, 10)), "he").append(nn.Softmax(dim=1)), "adam", 1e-3, steps=60)


def b_sigmoid_into_bce_logits() -> Setup:
    x, y = M.blobs(1200, seed=9)
    m = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 1), nn.Sigmoid())
    yf = y.float().unsqueeze(1)
    return Setup(m, torch.optim.Adam(m.parameters(), 1e-3), nn.BCEWithLogitsLoss(), x[:1000], yf[:1000], x[1000:], yf[1000:], steps=60)


def b_softmax_in_loop() -> Setup:
    s = _digits_setup(M.cnn(), "sgdm", 0.05, steps=60)
    s.transform = lambda out: torch.softmax(out, dim=1)
    return s


def b_val_in_train_mode() -> Setup:
    m = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10))
    s = _digits_setup(m, "adam", 1e-3, steps=60)
    s.val_eval_mode = False
    return s


def b_train_in_eval_mode() -> Setup:
    m = nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 10))
    s = _digits_setup(m, "adam", 1e-3, steps=60)
    s.train_mode = s.restore_train = False  # model.eval() once, before the loop
    return s


def b_forgot_train_after_val() -> Setup:
    m = nn.Sequential(M.Images(), nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Dropout2d(0.2),
                      nn.Flatten(), nn.Linear(16 * 64, 10))
    s = _digits_setup(m, "sgdm", 0.02, steps=60)
    s.restore_train = False
    s.train_mode = False
    return s


def b_center_over_batch() -> Setup:
    return _digits_setup(M.CenterOverBatch(), "adam", 1e-3, steps=40)


def b_softmax_over_batch_seq() -> Setup:
    x, y = M.sequences(1000, seed=3)
    m = M.SeqMixer()
    return Setup(m, torch.optim.Adam(m.parameters(), 1e-3), nn.CrossEntropyLoss(), x, y, steps=40, batch=32)


def b_random_labels() -> Setup:
    s = _digits_setup(M.init_linear(M.mlp((64, 256, 256, 10)), "he"), "adam", 1e-3, steps=200, val_every=10)
    g = torch.Generator().manual_seed(11)
    s.y = torch.randint(0, 10, s.y.shape, generator=g)
    s.yv = torch.randint(0, 10, s.yv.shape, generator=g)  # type: ignore[union-attr]
    return s


def b_shuffled_train_labels_cnn() -> Setup:
    s = _digits_setup(M.cnn((32, 64)), "adam", 2e-3, steps=200, val_every=10)
    g = torch.Generator().manual_seed(12)
    s.y = s.y[torch.randperm(len(s.y), generator=g)]
    return s


def b_mse_broadcast() -> Setup:
    g = torch.Generator().manual_seed(13)
    x = torch.randn(1000, 10, generator=g)
    y = (x @ torch.randn(10, generator=g))  # shape (N,)
    m = M.mlp((10, 32, 1))  # output (N, 1)
    return Setup(m, torch.optim.Adam(m.parameters(), 1e-3), nn.MSELoss(), x, y, steps=40)


def b_bce_class_indices() -> Setup:
    x, y, xv, yv = standardized_digits()
    m = M.mlp((64, 64, 1))
    return Setup(m, torch.optim.Adam(m.parameters(), 1e-3), nn.BCEWithLogitsLoss(), x, y.float().unsqueeze(1),
                 xv, yv.float().unsqueeze(1), steps=40)


def b_nll_on_logits() -> Setup:
    x, y, xv, yv = standardized_digits()
    m = M.mlp((64, 64, 10))
    return Setup(m, torch.optim.Adam(m.parameters(), 1e-3), nn.NLLLoss(), x, y, xv, yv, steps=40)


def b_weight_decay_too_high() -> Setup:
    m = M.init_linear(M.mlp((64, 128, 64, 10)), "he")
    x, y, xv, yv = standardized_digits()
    return Setup(m, torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=0.5), nn.CrossEntropyLoss(),
                 x, y, xv, yv, steps=150)


def b_dropout_everywhere() -> Setup:
    m = nn.Sequential(nn.Dropout(0.8), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.9), nn.Linear(32, 32), nn.ReLU(),
                      nn.Dropout(0.9), nn.Linear(32, 10))
    return _digits_setup(m, "sgd", 0.01, steps=150)


BROKEN: list[Case] = [
    Case("tiny_init_deep_tanh", "vanishing_activations", b_tiny_init_tanh, note="8 tanh layers, N(0, 0.02) init, SGD"),
    Case("default_init_deep_gelu", "vanishing_activations", b_default_init_deep_gelu, note="12 GELU layers, PyTorch default init, SGD"),
    Case("big_init_deep_relu", "exploding_activations", b_big_init_relu, note="8 ReLU layers, 2.5x He init"),
    Case("big_orthogonal_linear", "exploding_activations", b_big_orthogonal_linear, note="deep linear net, orthogonal gain 3"),
    Case("deep_sigmoid_mlp", "vanishing_gradients", b_deep_sigmoid, note="10 sigmoid layers, SGD"),
    Case("deep_sigmoid_cnn", "vanishing_gradients", b_deep_sigmoid_cnn, note="5 sigmoid convs"),
    Case("tiny_init_cnn_grads", "vanishing_gradients", b_tiny_init_cnn, note="4 convs, N(0, 0.01) init, SGD"),
    Case("big_init_leaky_relu", "exploding_gradients", b_exploding_grads_deep, note="8 LeakyReLU layers, 3x He init"),
    Case("sgd_blowup_regression", "exploding_gradients", b_exploding_grads_time, note="MSE regression, SGD lr too high"),
    Case("dead_relu_bias", "dead_units", b_dead_bias, ("fc2", "relu2"), note="fc2 bias -20"),
    Case("dead_functional_relu", "dead_units", b_dead_functional, ("fc1",), note="F.relu, fc1 bias -15"),
    Case("dead_conv_channels", "dead_units", b_dead_cnn, ("4", "5"), note="CNN, conv2 bias -30"),
    Case("saturated_tanh", "saturated_activations", b_saturated_tanh, ("tanh1", "fc1"), note="fc1 weights x25"),
    Case("saturated_sigmoid_bias", "saturated_activations", b_saturated_sigmoid_bias, ("sig2", "fc2"), note="fc2 bias +8, Adam"),
    Case("constant_init_mlp", "symmetric_init", b_constant_init, ("0",), note="every weight 0.05"),
    Case("zero_init_cnn", "symmetric_init", b_zero_init_cnn, ("1",), note="tanh CNN, all weights 0"),
    Case("log_of_relu", "nan_inf", b_log_layer, ("3",), note="log(relu(x)) layer"),
    Case("sqrt_in_cnn", "nan_inf", b_sqrt_cnn, ("2",), note="sqrt of a conv output"),
    Case("naive_softplus_overflow", "nan_inf", b_naive_softplus, ("softplus",), note="log(1 + exp(x)) overflows on pixel-scale inputs"),
    Case("gradient_ascent", "divergence", b_gradient_ascent, note="loss sign flipped in the loop"),
    Case("sgd_diverge_regression", "divergence", b_sgd_diverge_regression, note="tanh net, SGD lr 0.9"),
    Case("class_sorted_batches", "oscillation", b_sorted_batches, note="no shuffling, data sorted by class, SGD"),
    Case("momentum_bounce", "oscillation", b_momentum_bounce, note="SGD momentum 0.9, lr 0.3"),
    Case("zeroed_inputs", "not_learning", b_zeroed_inputs, note="preprocessing multiplies inputs by 0"),
    Case("huge_weight_decay", "not_learning", b_huge_weight_decay, note="SGD weight_decay=3"),
    Case("adam_lr_1", "lr_too_high", b_adam_lr_high, note="Adam lr 1.0"),
    Case("cnn_sgd_momentum_lr_0.3", "lr_too_high", b_sgd_lr_high_cnn, note="CNN, SGD momentum 0.9, lr 0.3"),
    Case("sgd_lr_1e-5", "lr_too_low", b_sgd_lr_low, note="plain SGD lr 1e-5"),
    Case("adam_lr_3e-7_cnn", "lr_too_low", b_adam_lr_low_cnn, note="CNN, Adam lr 3e-7"),
    Case("overfit_50_examples", "overfitting", b_overfit_small_data, note="MLP 256-256 on 50 digits"),
    Case("overfit_cnn_40_examples", "overfitting", b_overfit_cnn, note="CNN on 40 digits"),
    Case("logits_x30", "bad_loss_at_init", b_init_logits_scale, ("out",), note="output layer weights x30"),
    Case("cnn_all_weights_x6", "bad_loss_at_init", b_init_cnn_scale, note="every weight x6"),
    Case("raw_pixels_0_255", "unnormalized_inputs", b_raw_pixels, ("0",), note="pixels 0..255, not standardized"),
    Case("mixed_scale_features", "unnormalized_inputs", b_mixed_scale_tabular, ("0",), note="two features x1e4, x3e3"),
    Case("layer_not_in_optimizer", "frozen_parameters", b_not_in_optimizer, ("fc2",), note="optimizer built without fc2"),
    Case("detached_layer", "frozen_parameters", b_detached_layer, ("fc1",), note="fc1 output detached in forward"),
    Case("no_zero_grad_sgd", "missing_zero_grad", b_no_zero_grad, note="zero_grad never called, SGD"),
    Case("no_zero_grad_adam_cnn", "missing_zero_grad", b_no_zero_grad_adam_cnn, note="zero_grad never called, CNN + Adam"),
    Case("softmax_into_ce", "probabilities_into_loss", b_softmax_into_ce, note="nn.Softmax before CrossEntropyLoss"),
    Case("sigmoid_into_bce_logits", "probabilities_into_loss", b_sigmoid_into_bce_logits, note="nn.Sigmoid before BCEWithLogitsLoss"),
    Case("softmax_in_loop_cnn", "probabilities_into_loss", b_softmax_in_loop, note="softmax applied in the training loop"),
    Case("validate_in_train_mode", "train_eval_mode", b_val_in_train_mode, ("2",), note="dropout model, no model.eval()"),
    Case("train_in_eval_mode", "train_eval_mode", b_train_in_eval_mode, ("1",), note="BatchNorm model, model.eval() before training"),
    Case("forgot_train_after_val", "train_eval_mode", b_forgot_train_after_val, ("2", "4"), note="CNN with BN + dropout, no model.train() after validating"),
    Case("center_over_batch", "batch_mixing", b_center_over_batch, ("fc2", "fc1"), note="h - h.mean(0) in forward"),
    Case("softmax_over_batch_seq", "batch_mixing", b_softmax_over_batch_seq, ("head", "score"), note="token weights softmaxed over the batch"),
    Case("random_labels", "label_noise", b_random_labels, note="train and validation labels random"),
    Case("shuffled_train_labels_cnn", "label_noise", b_shuffled_train_labels_cnn, note="training labels permuted, CNN"),
    Case("mse_broadcast", "wrong_loss", b_mse_broadcast, note="MSE of (N, 1) against (N,)"),
    Case("bce_on_class_indices", "wrong_loss", b_bce_class_indices, note="BCEWithLogits with targets 0..9"),
    Case("nll_on_logits", "wrong_loss", b_nll_on_logits, note="NLLLoss without log_softmax"),
    Case("weight_decay_too_high", "over_regularization", b_weight_decay_too_high, note="SGD weight_decay 0.5 at lr 0.1"),
    Case("dropout_0.9_everywhere", "over_regularization", b_dropout_everywhere, ("3", "6"),
         note="dropout 0.8 on the inputs, 0.9 on the hidden layers, SGD"),
]

# ------------------------------------------------------------------------------ held out
# Written after the rules and thresholds were fixed, and never used to adjust them: a small check
# of how the diagnosis does on faults it was not developed against.
def ho_lr0_group() -> Setup:
    s = _digits_setup(M.init_linear(M.mlp((64, 64, 64, 10)), "he"), "sgdm", 0.05, steps=80)
    m = s.model
    s.optimizer = torch.optim.SGD(
        [{"params": m[0].parameters(), "lr": 0.0}, {"params": [*m[2].parameters(), *m[4].parameters()]}], lr=0.05, momentum=0.9
    )
    return s


def ho_dying_relu_adam_cnn() -> Setup:
    return _digits_setup(M.cnn((32, 64)), "adam", 0.05, steps=120)


def ho_divide_by_std() -> Setup:
    x, y = digits()
    m = nn.Sequential(M.DivideByBatchStd(), nn.Linear(64, 10))
    s = _digits_setup(m, "adam", 1e-3, steps=40)
    s.x, s.y = x[:1400], y[:1400]  # raw pixels: some columns are constant 0 -> 0 / 0
    return s


def ho_vanilla_rnn() -> Setup:
    x, y = M.sequences(1000, seq=30, seed=1)
    m = M.ReluRNN()
    return Setup(m, torch.optim.SGD(m.parameters(), lr=0.01), nn.CrossEntropyLoss(), x, y, steps=60, batch=32)


def ho_labels_offset() -> Setup:
    s = _digits_setup(M.init_linear(M.mlp((64, 128, 10)), "he"), "adam", 1e-3, steps=200)
    s.y = torch.roll(s.y, 1)  # labels shifted by one example against their inputs
    return s


def ho_sigmoid_mse_onehot() -> Setup:
    x, y, xv, yv = standardized_digits()
    m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10), nn.Sigmoid())
    return Setup(m, torch.optim.Adam(m.parameters(), 3e-3), nn.MSELoss(), x, torch.nn.functional.one_hot(y, 10).float(),
                 xv, torch.nn.functional.one_hot(yv, 10).float(), steps=150)


def ho_dropout_09() -> Setup:
    m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.9), nn.Linear(64, 10))
    return _digits_setup(m, "adam", 1e-3, steps=150)


HELD_OUT: list[Case] = [
    Case("ho_lr_0_param_group", "frozen_parameters", ho_lr0_group, ("0",), note="held out: first layer in a group with lr=0"),
    Case("ho_dying_relu_adam_cnn", "dead_units", ho_dying_relu_adam_cnn, note="held out: Adam lr 0.05 kills ReLU channels"),
    Case("ho_divide_by_batch_std", "nan_inf", ho_divide_by_std, ("0",), note="held out: x / x.std(0) with constant pixels"),
    Case("ho_relu_rnn", "exploding_gradients", ho_vanilla_rnn, note="held out: ReLU RNN, recurrent weights 1.3 I, 30 steps"),
    Case("ho_labels_offset_by_one", "label_noise", ho_labels_offset, note="held out: labels rolled by one example"),
    Case("ho_sigmoid_mse_onehot", None, ho_sigmoid_mse_onehot, note="held out: sigmoid + MSE on one-hot targets (unusual, not wrong)"),
    Case("ho_dropout_0.9", None, ho_dropout_09, note="held out: dropout 0.9 (heavy, but it learns)"),
]

for _c in HELD_OUT:
    _c.held_out = True

ALL: list[Case] = HEALTHY + BROKEN + HELD_OUT


# ------------------------------------------------------------------------------ head / targets / stopping (issue 13)
def b_softmax_one_unit_mse() -> Setup:
    x, y, xv, yv = standardized_digits()
    m = nn.Sequential(OrderedDict([("fc1", nn.Linear(64, 32)), ("relu1", nn.ReLU()), ("out", nn.Linear(32, 1)),
                                   ("head", nn.Softmax(dim=1))]))
    return Setup(m, torch.optim.Adam(m.parameters(), 1e-3), nn.MSELoss(), x, y.float().unsqueeze(1) / 9,
                 xv, yv.float().unsqueeze(1) / 9, steps=40)


def b_raw_regression_targets() -> Setup:
    g = torch.Generator().manual_seed(21)
    x = torch.randn(1200, 10, generator=g)
    y = (x @ torch.randn(10, 1, generator=g)) * 80 + 600  # targets ~600 +- 250, not standardized
    m = M.mlp((10, 32, 1))
    return Setup(m, torch.optim.Adam(m.parameters(), 1e-3), nn.MSELoss(), x[:1000], y[:1000], x[1000:], y[1000:], steps=60)


def b_labels_all_zero() -> Setup:
    s = _digits_setup(M.init_linear(M.mlp((64, 64, 10)), "he"), "adam", 1e-3, steps=40)
    s.y = (s.y.float() / 255).long()  # y / 255 cast back to integers: every label 0
    return s


def b_early_stop_too_eager() -> Setup:
    s = _digits_setup(M.init_linear(M.mlp((64, 64, 10)), "he"), "sgd", 0.01, steps=160, val_every=8)
    calls = [0]

    def start_stopper() -> None:  # the user's early stopping, started late with a min_delta the run cannot meet
        calls[0] += 1
        if calls[0] == 90:
            import trainscope.interventions as I
            from trainscope.probe import _ATTACHED

            I.early_stopping_(s.model, s.optimizer, probe=_ATTACHED.get(s.model), patience=1, smoothing=1,
                              min_delta=1.0)

    s.after_step = start_stopper
    return s


BROKEN += [
    Case("softmax_one_unit_mse", "head_loss_mismatch", b_softmax_one_unit_mse, ("head",),
         note="nn.Softmax(dim=1) over the single regression output: constant 1.0"),
    Case("raw_regression_targets", "unscaled_targets", b_raw_regression_targets, note="MSE on targets ~600 +- 250"),
    Case("labels_all_zero", "class_imbalance", b_labels_all_zero, note="labels divided by 255 and cast: all class 0"),
    Case("early_stop_too_eager", "still_improving", b_early_stop_too_eager,
         note="early stopping with min_delta 1.0 stops a slowly improving SGD run"),
]
ALL = HEALTHY + BROKEN + HELD_OUT
