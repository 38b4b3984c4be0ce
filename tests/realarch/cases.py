"""Healthy short trainings of real architectures (built from tiny configs, random weights, synthetic
data; nothing is downloaded): the diagnosis must stay silent at warning level on every one of them.

Each case returns a :class:`Run`: the model, its optimizer and loss, a batch factory and how the
loop calls the model.  ``python -m tests.realarch.report`` prints the findings of every case."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class Run:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module | None
    batch: Callable[[int], tuple[Any, Tensor]]  # step -> (inputs, target)
    forward: Callable[[nn.Module, Any], Tensor]  # model, inputs -> prediction the loss reads
    shape_for_loss: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] = lambda p, t: (p, t)
    steps: int = 100
    val: Callable[[], tuple[Any, Tensor]] | None = None  # validation batch (eval mode, no_grad)
    val_every: int = 10
    probe_kwargs: dict[str, Any] = field(default_factory=dict)
    hf_loss: bool = False  # the model computes its own loss (logged with probe.log)


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], Run]
    note: str = ""


# ------------------------------------------------------------------------------ data
V, T = 32, 12  # vocabulary, sequence length


def _tokens(n: int, gen: torch.Generator) -> Tensor:
    """Learnable sequences: each continues by +1 or +3 (mod V) from a random start."""
    start = torch.randint(0, V, (n, 1), generator=gen)
    stride = 1 + 2 * torch.randint(0, 2, (n, 1), generator=gen)
    return (start + stride * torch.arange(T)) % V


def _images(n: int, gen: torch.Generator, size: int = 32, classes: int = 4) -> tuple[Tensor, Tensor]:
    """Standardized noise images whose class is a brighter quadrant."""
    y = torch.randint(0, classes, (n,), generator=gen)
    x = torch.randn(n, 3, size, size, generator=gen) * 0.5
    h = size // 2
    for k in range(classes):
        i, j = divmod(k, 2)
        sel = y == k
        x[sel, :, i * h : (i + 1) * h, j * h : (j + 1) * h] += 1.0
    return (x - x.mean()) / x.std(), y


def _lm_run(model: nn.Module, lr: float, *, batch_first: bool = True, steps: int = 80, hf: bool = False) -> Run:
    gen = torch.Generator().manual_seed(1)

    def batch(_step: int) -> tuple[Any, Tensor]:
        seq = _tokens(16, gen)
        x, y = seq[:, :-1], seq[:, 1:]
        if not batch_first:
            x, y = x.t().contiguous(), y.t().contiguous()
        return x, y

    def fwd(m: nn.Module, x: Any) -> Tensor:
        out = m(input_ids=x) if hf else m(x)
        return out.logits if hasattr(out, "logits") else out

    return Run(
        model, torch.optim.AdamW(model.parameters(), lr=lr), nn.CrossEntropyLoss(), batch, fwd,
        shape_for_loss=lambda p, t: (p.reshape(-1, p.shape[-1]), t.reshape(-1)), steps=steps,
    )


# ------------------------------------------------------------------------------ HF transformers
def gpt2() -> Run:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0)
    return _lm_run(GPT2LMHeadModel(cfg), 3e-3, hf=True)


def llama() -> Run:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    return _lm_run(LlamaForCausalLM(cfg), 3e-3, hf=True)


def bert() -> Run:
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32, num_labels=2)
    model = BertForSequenceClassification(cfg)
    gen = torch.Generator().manual_seed(2)

    def batch(_step: int) -> tuple[Any, Tensor]:
        seq = _tokens(16, gen)
        return seq, seq[:, 0] < V // 2  # the first token's half of the vocabulary

    def fwd(m: nn.Module, x: Any) -> Tensor:
        return m(input_ids=x).logits

    return Run(model, torch.optim.AdamW(model.parameters(), lr=1e-3), nn.CrossEntropyLoss(), batch, fwd,
               shape_for_loss=lambda p, t: (p, t.long()), steps=80)


def t5() -> Run:
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(vocab_size=V, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                   decoder_start_token_id=0, pad_token_id=0, dropout_rate=0.0)
    model = T5ForConditionalGeneration(cfg)
    gen = torch.Generator().manual_seed(3)

    def batch(_step: int) -> tuple[Any, Tensor]:
        seq = _tokens(16, gen)
        return seq, (seq + 1) % V  # seq2seq: shift every token by one

    def fwd(m: nn.Module, x: Any) -> Tensor:
        dec = torch.cat([torch.zeros_like(x[:, :1]), (x[:, :-1] + 1) % V], dim=1)
        return m(input_ids=x, decoder_input_ids=dec).logits

    return Run(model, torch.optim.AdamW(model.parameters(), lr=3e-3), nn.CrossEntropyLoss(), batch, fwd,
               shape_for_loss=lambda p, t: (p.reshape(-1, p.shape[-1]), t.reshape(-1)), steps=80)


# ------------------------------------------------------------------------------ vision
def _image_run(model: nn.Module, opt: torch.optim.Optimizer, *, steps: int = 60, size: int = 32,
               n: int = 16, val: bool = False) -> Run:
    gen = torch.Generator().manual_seed(4)
    xv, yv = _images(64, torch.Generator().manual_seed(5), size)

    def batch(_step: int) -> tuple[Any, Tensor]:
        return _images(n, gen, size)

    return Run(model, opt, nn.CrossEntropyLoss(), batch, lambda m, x: m(x), steps=steps,
               val=(lambda: (xv, yv)) if val else None)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (as timm's ConvNeXt)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """timm's ConvNeXt block: depthwise 7x7, LayerNorm, 4x MLP with GELU, layer scale (1e-6), residual."""

    def __init__(self, c: int, ls_init: float = 1e-6) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1, self.act, self.fc2 = nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(ls_init * torch.ones(c))

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(self.conv_dw(x).permute(0, 2, 3, 1))
        y = self.fc2(self.act(self.fc1(y))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """ConvNeXt-atto layout with one block per stage (timm ``convnext_atto``, depths (1, 1, 1, 1))."""

    def __init__(self, dims: tuple[int, ...] = (16, 32, 48, 64), classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4), LayerNorm2d(dims[0]))
        stages: list[nn.Module] = []
        for k, d in enumerate(dims):
            down = nn.Sequential(LayerNorm2d(dims[k - 1]), nn.Conv2d(dims[k - 1], d, 2, stride=2)) if k else nn.Identity()
            stages.append(nn.Sequential(down, ConvNeXtBlock(d)))
        self.stages = nn.Sequential(*stages)
        self.head_norm = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.head_norm(self.stages(self.stem(x)).mean((2, 3))))


def convnext() -> Run:
    m = ConvNeXt()
    return _image_run(m, torch.optim.AdamW(m.parameters(), lr=2e-3))


class Attention(nn.Module):
    """timm's ViT attention: one qkv projection, scaled dot-product attention, output projection."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class ViTBlock(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(d), Attention(d, heads)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A timm-style ViT-tiny (cls token, learned positions, pre-norm blocks), 32 px, patch 8."""

    def __init__(self, d: int = 48, depth: int = 2, heads: int = 2, patch: int = 8, size: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, d, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, (size // patch) ** 2 + 1, d))
        self.blocks = nn.Sequential(*(ViTBlock(d, heads) for _ in range(depth)))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def vit() -> Run:
    m = ViT()
    return _image_run(m, torch.optim.AdamW(m.parameters(), lr=1e-3))


class BasicBlock(nn.Module):
    def __init__(self, i: int, o: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o)
        self.conv2, self.bn2 = nn.Conv2d(o, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o)
        self.relu = nn.ReLU()
        self.down = (nn.Sequential(nn.Conv2d(i, o, 1, stride, bias=False), nn.BatchNorm2d(o))
                     if stride != 1 or i != o else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + self.down(x))


class ResNet(nn.Module):
    """ResNet with one BasicBlock per stage (ResNet-10 layout, narrow), global average pooling."""

    def __init__(self, widths: tuple[int, ...] = (8, 16, 32, 64), classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, c = [], widths[0]
        for k, w in enumerate(widths):
            blocks.append(BasicBlock(c, w, 1 if k == 0 else 2))
            c = w
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.layers(self.stem(x)).mean((2, 3)))


def resnet() -> Run:
    m = ResNet()
    return _image_run(m, torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9), val=True)


class Fire(nn.Module):
    def __init__(self, i: int, s: int, e: int) -> None:
        super().__init__()
        self.squeeze, self.squeeze_activation = nn.Conv2d(i, s, 1), nn.ReLU()
        self.expand1x1, self.expand1x1_activation = nn.Conv2d(s, e, 1), nn.ReLU()
        self.expand3x3, self.expand3x3_activation = nn.Conv2d(s, e, 3, padding=1), nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)), self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    """torchvision's SqueezeNet 1.1 layout: the logits come out of conv -> ReLU -> global average pool."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, stride=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(64, 16, 64), Fire(128, 16, 64), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(128, 32, 128), Fire(256, 32, 128), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(256, 48, 192), Fire(384, 64, 256),
        )
        final = nn.Conv2d(512, classes, 1)
        nn.init.normal_(final.weight, mean=0.0, std=0.01)
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(final.bias)
        self.classifier = nn.Sequential(nn.Dropout(0.5), final, nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x)).flatten(1)


def squeezenet() -> Run:
    m = SqueezeNet()
    return _image_run(m, torch.optim.Adam(m.parameters(), lr=1e-3), size=48, n=8, steps=48)


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Linear(128, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.f(x).flatten(1))


def bn_cnn() -> Run:
    m = BNNet()
    return _image_run(m, torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), steps=100, val=True)


class UNet(nn.Module):
    def __init__(self, c: int = 8) -> None:
        super().__init__()

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                                 nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())

        self.d1, self.d2, self.mid = block(1, c), block(c, 2 * c), block(2 * c, 4 * c)
        self.up2, self.u2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, stride=2), block(4 * c, 2 * c)
        self.up1, self.u1 = nn.ConvTranspose2d(2 * c, c, 2, stride=2), block(2 * c, c)
        self.out = nn.Conv2d(c, 1, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        a = self.d1(x)
        b = self.d2(self.pool(a))
        m = self.mid(self.pool(b))
        b2 = self.u2(torch.cat([self.up2(m), b], 1))
        return self.out(self.u1(torch.cat([self.up1(b2), a], 1)))


def unet() -> Run:
    m = UNet()
    gen = torch.Generator().manual_seed(6)

    def batch(_step: int) -> tuple[Any, Tensor]:
        clean = torch.zeros(8, 1, 32, 32)
        for k in range(8):  # a bright square somewhere
            i, j = torch.randint(0, 24, (2,), generator=gen).tolist()
            clean[k, 0, i : i + 8, j : j + 8] = 1.0
        noisy = clean + 0.3 * torch.randn(clean.shape, generator=gen)
        return noisy, clean

    return Run(m, torch.optim.Adam(m.parameters(), lr=2e-3), nn.MSELoss(), batch, lambda mm, x: mm(x), steps=60)


def frozen_backbone() -> Run:
    m = BNNet()
    for p in m.f.parameters():
        p.requires_grad_(False)
    m.f.eval()  # a frozen, "pretrained" feature extractor
    run = _image_run(m, torch.optim.Adam(m.head.parameters(), lr=1e-2), steps=60)
    return run


# ------------------------------------------------------------------------------ recurrent
class SeqFirstLSTM(nn.Module):
    """The default nn.LSTM layout: (T, B, F)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, 32)
        self.rnn = nn.LSTM(32, 64, num_layers=2)
        self.out = nn.Linear(64, V)

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.rnn(self.emb(x))
        return self.out(h)


class TiedGRU(nn.Module):
    """A GRU language model whose output layer shares the embedding matrix."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, 32)
        self.rnn = nn.GRU(32, 32, batch_first=True)
        self.out = nn.Linear(32, V)
        self.out.weight = self.emb.weight

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.rnn(self.emb(x))
        return self.out(h)


class SeqFirstTransformer(nn.Module):
    """nn.TransformerEncoder in its default (S, B, E) layout, causal mask."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, 32)
        self.pos = nn.Parameter(0.02 * torch.randn(T, 1, 32))
        layer = nn.TransformerEncoderLayer(32, 2, 64, dropout=0.0)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.out = nn.Linear(32, V)

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        mask = nn.Transformer.generate_square_subsequent_mask(n)
        return self.out(self.enc(self.emb(x) + self.pos[:n], mask=mask, is_causal=True))


def transformer_seq_first() -> Run:
    return _lm_run(SeqFirstTransformer(), 3e-3, batch_first=False, steps=80)


def lstm_seq_first() -> Run:
    return _lm_run(SeqFirstLSTM(), 1e-2, batch_first=False, steps=100)


def gru_tied() -> Run:
    return _lm_run(TiedGRU(), 1e-2, steps=100)


CASES: tuple[Case, ...] = (
    Case("hf_gpt2", gpt2, "GPT-2 LM, lm_head tied to wte"),
    Case("hf_bert", bert, "BERT sequence classifier"),
    Case("hf_t5", t5, "T5 seq2seq, tied embeddings"),
    Case("hf_llama", llama, "LLaMA causal LM (RMSNorm, SwiGLU, rotary)"),
    Case("convnext", convnext, "timm-style ConvNeXt-atto (layer-scale gammas 1e-6)"),
    Case("vit", vit, "timm-style ViT-tiny, 32 px, patch 8"),
    Case("resnet", resnet, "ResNet-10 layout with BN, SGD 0.05, eval-mode validation"),
    Case("squeezenet", squeezenet, "SqueezeNet 1.1: logits out of a ReLU + global pool"),
    Case("bn_cnn", bn_cnn, "BN CNN, SGD 0.1, eval-mode validation"),
    Case("unet", unet, "UNet denoiser, MSE"),
    Case("frozen_backbone", frozen_backbone, "requires_grad=False backbone in eval mode, trained head"),
    Case("lstm_seq_first", lstm_seq_first, "nn.LSTM in the default (T, B, F) layout"),
    Case("gru_tied", gru_tied, "GRU LM with the output layer tied to the embedding"),
    Case("transformer_seq_first", transformer_seq_first, "nn.TransformerEncoder in the default (S, B, E) layout"),
)
