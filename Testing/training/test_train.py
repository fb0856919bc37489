"""Training smoke tests on tiny configs: losses decrease, checkpoints resume exactly, the CLI works."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from safetensors.torch import load_file

from GenerateCTLib.text_encoder import T5TextEncoder
from GenerateCTLib.tokenizer.ctvit import CTViT
from GenerateCTLib.training.cli import add_train_command
from GenerateCTLib.training.data import CTReportDataset
from GenerateCTLib.training.tiny_t5 import build_text_encoder, vocabulary_from_texts
from GenerateCTLib.training.train_superres import SuperResTrainConfig, train_superres
from GenerateCTLib.training.train_tokenizer import TokenizerTrainConfig, load_config, train_tokenizer
from GenerateCTLib.training.train_transformer import TransformerTrainConfig, train_transformer
from GenerateCTLib.transformer.maskgit import MaskGIT
from Testing.training.helpers import make_dataset

CTVIT = dict(
    dim=32, codebook_size=32, image_size=32, patch_size=8, spatial_depth=1, temporal_depth=1, dim_head=8, heads=2
)


def _mean(values):
    return sum(values) / len(values)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny dataset, a tiny T5 and a CT-ViT trained for 24 steps (shared by the later stages)."""
    root = tmp_path_factory.mktemp("train")
    data = make_dataset(root / "data", num=4, shape=(9, 32, 32))
    prompts = CTReportDataset(data, num_slices=9, image_size=32, stage="tokenizer").prompts
    t5 = build_text_encoder(vocabulary_from_texts(prompts), root / "t5", d_model=32, layers=1, heads=4, seed=0)
    config = TokenizerTrainConfig(
        model=CTVIT, num_slices=9, lr=1e-3, discriminator_lr=1e-4, batch_size=2, steps=24, checkpoint_every=8
    )
    result = train_tokenizer(data, config, root / "ctvit", progress=False)
    return {"root": root, "data": data, "t5": t5, "ctvit": result}


def test_tiny_text_encoder_loads_like_t5(trained):
    encoder = T5TextEncoder.from_pretrained(trained["t5"])
    encoded = encoder.encode(["65 years old male: No acute cardiopulmonary findings."])
    assert encoded.embeds.shape[-1] == 32 and encoded.mask.all()
    assert "<unk>" not in encoder.tokens(encoded.token_ids[0])


def test_tokenizer_training(trained):
    result = trained["ctvit"]
    assert result.step == 24 and len(result.history["mse"]) == 24
    assert _mean(result.history["mse"][-5:]) < 0.7 * _mean(result.history["mse"][:5])
    assert any(v > 0 for v in result.history["discriminator"])
    model = CTViT.from_pretrained(result.model_dir)
    assert model.vq.cluster_size.sum() > 0  # the EMA statistics are saved with the weights
    ids = model.encode_to_ids(torch.zeros(1, 1, 9, 32, 32))
    assert ids.shape == (1, 5, 4, 4)


def test_tokenizer_window_loss_is_logged_and_validated(trained, tmp_path):
    config = TokenizerTrainConfig(model=CTVIT, num_slices=9, lr=1e-3, batch_size=2, steps=3, adversarial_weight=0.0,
                                  window_weight=1.0, window_hu=[-1000, -500])
    assert config.window_hu == ((-1000.0, -500.0),)  # one pair is one window
    two = TokenizerTrainConfig(model=CTVIT, num_slices=9, window_hu=[[-1000, -700], [-150, 150]])
    assert two.window_hu == ((-1000.0, -700.0), (-150.0, 150.0))
    result = train_tokenizer(trained["data"], config, tmp_path / "w", progress=False)
    assert len(result.history["window"]) == 3 and all(v > 0 for v in result.history["window"])
    assert all(v == 0 for v in trained["ctvit"].history["window"])  # off by default, as in the reference
    assert all(v == 0 for v in trained["ctvit"].history["patch_mean"])
    means = TokenizerTrainConfig(model=CTVIT, num_slices=9, lr=1e-3, batch_size=2, steps=2, adversarial_weight=0.0,
                                 patch_mean_weight=5.0)
    assert all(v > 0 for v in train_tokenizer(trained["data"], means, tmp_path / "m", progress=False).history[
        "patch_mean"])
    for bad in ({"window_hu": (-500, -1000)}, {"window_hu": (-2000, 0)}, {"window_hu": [[-1000, -700], [0]]},
                {"window_hu": []}, {"window_weight": -1.0}, {"patch_mean_weight": -1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TokenizerTrainConfig(model=CTVIT, num_slices=9, **bad)


def test_fsq_tokenizer_trains_without_codebook_updates(trained, tmp_path):
    model = {**CTVIT, "fsq_levels": [4, 4, 2]}  # codebook_size 32
    config = TokenizerTrainConfig(model=model, num_slices=9, lr=1e-3, batch_size=2, steps=16, adversarial_weight=0.0)
    result = train_tokenizer(trained["data"], config, tmp_path / "fsq", progress=False)
    assert all(v == 0 for v in result.history["commit"])
    assert _mean(result.history["mse"][-4:]) < 0.7 * _mean(result.history["mse"][:4])
    ctvit = CTViT.from_pretrained(result.model_dir)
    assert ctvit.config.fsq_levels == (4, 4, 2)
    assert ctvit.encode_to_ids(torch.zeros(1, 1, 9, 32, 32)).max() < 32


def test_tokenizer_resume_equals_uninterrupted(trained, tmp_path):
    config = TokenizerTrainConfig(
        model=CTVIT, num_slices=9, lr=1e-3, discriminator_lr=1e-4, batch_size=2, steps=6, checkpoint_every=3
    )
    straight = train_tokenizer(trained["data"], config, tmp_path / "a", progress=False)
    first = train_tokenizer(trained["data"], dataclass_replace(config, steps=3), tmp_path / "b", progress=False)
    assert first.step == 3
    resumed = train_tokenizer(trained["data"], config, tmp_path / "b", progress=False)
    assert resumed.step == 6 and len(resumed.history["loss"]) == 6
    assert resumed.history["loss"] == pytest.approx(straight.history["loss"], rel=1e-5, abs=1e-7)
    a = load_file(straight.model_dir / "model.safetensors")
    b = load_file(resumed.model_dir / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # --no-resume starts over
    again = train_tokenizer(
        trained["data"], dataclass_replace(config, steps=2), tmp_path / "b", resume=False, progress=False
    )
    assert again.step == 2 and len(again.history["loss"]) == 2


def test_init_from_starts_a_new_run_from_trained_weights(trained, tmp_path):
    source = trained["ctvit"]
    config = TokenizerTrainConfig(model=CTVIT, num_slices=9, lr=1e-3, batch_size=2, steps=2, adversarial_weight=0.0,
                                  init_from=str(source.model_dir))
    tuned = train_tokenizer(trained["data"], config, tmp_path / "tuned", progress=False)
    # the first step already reconstructs as well as the end of the source run, far better than its start
    assert tuned.history["mse"][0] < 0.7 * _mean(source.history["mse"][:3])
    assert len(tuned.history["mse"]) == 2  # a new run: its own step count and history
    other = dict(CTVIT, dim=16)
    with pytest.raises(ValueError, match=r"init_from=.*dim: 32 there, 16 here"):
        train_tokenizer(trained["data"], dataclass_replace(config, model=other), tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match=r"init_from=.*missing.*allowed: a trained CTViT folder"):
        train_tokenizer(trained["data"], dataclass_replace(config, init_from=str(tmp_path / "missing")),
                        tmp_path / "y", progress=False)


def dataclass_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


def test_transformer_training(trained, tmp_path):
    config = TransformerTrainConfig(
        model=dict(max_seq_len=128, dim=32, depth=1, heads=2, dim_head=8),
        tokenizer_model=str(trained["ctvit"].model_dir),
        text_encoder=str(trained["t5"]),
        num_slices=9,
        lr=3e-3,
        warmup_steps=2,
        batch_size=2,
        steps=25,
        checkpoint_every=25,
    )
    result = train_transformer(trained["data"], config, tmp_path / "maskgit", progress=False)
    assert _mean(result.history["loss"][-5:]) < 0.85 * _mean(result.history["loss"][:5])
    model = MaskGIT.from_pretrained(result.model_dir)
    assert model.config.num_tokens == 32 and model.config.dim_context == 32


def test_superres_training(trained, tmp_path):
    config = SuperResTrainConfig(
        model=dict(
            dim=8,
            cond_dim=8,
            max_text_len=16,
            attn_heads=2,
            attn_dim_head=8,
            attn_pool_num_latents=4,
            mid_attn_heads=2,
            mid_attn_dim_head=8,
            init_cross_embed_kernel_sizes=(3, 7),
        ),
        tokenizer_model=str(trained["ctvit"].model_dir),
        text_encoder=str(trained["t5"]),
        num_slices=9,
        image_size=32,
        lr=2e-3,
        batch_size=4,
        steps=20,
        checkpoint_every=20,
        ema_decay=0.9,
    )
    result = train_superres(trained["data"], config, tmp_path / "sr", progress=False)
    assert _mean(result.history["loss"][-5:]) < _mean(result.history["loss"][:5])
    assert (tmp_path / "sr" / "model" / "config.json").is_file()


def test_config_json_and_errors(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": CTVIT, "num_slices": 9, "lr": 1e-3, "adam_betas": [0.5, 0.9]}))
    config = load_config(path, steps=5)
    assert config.steps == 5 and config.adam_betas == (0.5, 0.9) and config.model_config.dim == 32
    path.write_text(json.dumps({"learning_rate": 1}))
    with pytest.raises(ValueError, match="learning_rate"):
        load_config(path)
    with pytest.raises(ValueError, match="lr_schedule='linear'"):
        TokenizerTrainConfig(lr_schedule="linear")
    with pytest.raises(ValueError, match="tokenizer_model=''"):
        train_transformer(tmp_path, TransformerTrainConfig(), tmp_path / "out", progress=False)


def test_cli(trained, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="generatect")
    add_train_command(parser.add_subparsers(dest="command"))
    for stage in ("tokenizer", "transformer", "superres"):
        with pytest.raises(SystemExit):
            parser.parse_args(["train", stage, "--help"])
        assert "examples:" in capsys.readouterr().out
    config = tmp_path / "ctvit.json"
    config.write_text(
        json.dumps(
            {"model": CTVIT, "num_slices": 9, "lr": 1e-3, "batch_size": 1, "steps": 2, "adversarial_weight": 0.0}
        )
    )
    args = parser.parse_args(
        [
            "train",
            "tokenizer",
            "--data",
            str(trained["data"]),
            "--config",
            str(config),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    assert args.resume is True and args.func(args) == 0
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()
    args = parser.parse_args(["train", "tokenizer", "--data", str(tmp_path / "nope"), "--out", "x", "--no-resume"])
    assert args.resume is False
    with pytest.raises(ValueError, match="--data="):
        args.func(args)
