import json
import weakref

import numpy as np
import pytest
import torch

from GenerateCTLib.attention_maps import (
    STOP_WORDS,
    AttentionMaps,
    CrossAttentionRecorder,
    TextUnit,
    build_attention_maps,
    find_text_units,
    frame_slice_centres,
    iter_attention_maps,
    upsample_token_grid,
    write_attention_maps,
)
from GenerateCTLib.io import VolumeGeometry, read_volume
from Testing.tiny_models import make_tiny_t5

IMPRESSION = "No pleural effusion on the left, mild cardiomegaly and atelectasis."
PROMPT = f"65 years old male: {IMPRESSION}"


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(make_tiny_t5(tmp_path_factory.mktemp("t5")), local_files_only=True)


@pytest.fixture(scope="module")
def piece_tokenizer():
    """A SentencePiece-like (Unigram + Metaspace) fast tokenizer that splits words into sub-word pieces."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces = ["<pad>", "</s>", "<unk>", "▁", "▁6", "5", "▁years", "▁old", "▁male", ":", "▁No", "▁pl", "eural"]
    pieces += ["▁eff", "usion", "▁on", "▁the", "▁left", ",", "▁mild", "▁cardio", "megaly", "▁and", "▁at", "elect"]
    pieces += ["asis", ".", *"abcdefghijklmnopqrstuvwxyz"]
    model = models.Unigram([(p, -1.0 - (len(p) < 3)) for p in pieces], unk_id=2)
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def _ids(tokenizer, prompt=PROMPT, pad=0):
    ids = tokenizer(prompt).input_ids
    return torch.tensor(ids + [tokenizer.pad_token_id] * pad)


def _tokens(tokenizer, ids, unit):
    return [tokenizer.convert_ids_to_tokens(int(ids[c])) for c in unit.columns]


# -- recorder -----------------------------------------------------------------------------------------


def test_recorder_averages_heads_layers_steps_and_ignores_null_half():
    b, heads, n, num_null, length = 2, 3, 5, 2, 4
    generator = torch.Generator().manual_seed(0)
    recorder = CrossAttentionRecorder(batch_size=b, num_null_kv=num_null)
    steps = []
    for _ in range(3):
        layers = [torch.rand(2 * b, heads, n, num_null + length, generator=generator) for _ in range(2)]
        for layer in layers:
            layer[b:] = 1e3  # the null half must not leak into the mean
        steps.append(layers)
        recorder.add(layers)
    expected = torch.stack([torch.stack([p[:b, :, :, num_null:] for p in layers]) for layers in steps])
    expected = expected.mean(dim=(0, 1, 3))  # steps, layers, heads -> (b, n, L)
    mean = recorder.mean()
    assert mean.shape == (b, n, length) and mean.dtype == torch.float32
    assert recorder.num_steps == 3
    torch.testing.assert_close(mean, expected)


def test_recorder_accepts_conditional_only_batches_and_half_precision():
    recorder = CrossAttentionRecorder(batch_size=1)
    probs = torch.full((1, 2, 3, 2 + 4), 0.25, dtype=torch.bfloat16)
    recorder.add([probs])
    torch.testing.assert_close(recorder.mean(), torch.full((1, 3, 4), 0.25))


def test_recorder_rejects_bad_captures():
    recorder = CrossAttentionRecorder(batch_size=2)
    with pytest.raises(RuntimeError, match="no attention recorded"):
        recorder.mean()
    with pytest.raises(ValueError, match="probs_per_layer"):
        recorder.add([])
    with pytest.raises(ValueError, match=r"probs_per_layer\[0\].*B in \(2, 4\)"):
        recorder.add([torch.rand(3, 1, 4, 6)])
    recorder.add([torch.rand(4, 1, 4, 6)])
    with pytest.raises(ValueError, match="earlier steps"):
        recorder.add([torch.rand(4, 1, 4, 7)])
    with pytest.raises(ValueError, match="batch_size"):
        CrossAttentionRecorder(batch_size=0)


# -- text units ---------------------------------------------------------------------------------------


def test_units_with_word_level_tiny_t5_tokenizer(word_tokenizer):
    ids = _ids(word_tokenizer, pad=3)  # padded to a longer batch
    units = find_text_units(PROMPT, IMPRESSION, word_tokenizer, ids)
    labels = [u.label for u in units]
    assert labels == [
        "phrase: No pleural effusion on the left",
        "phrase: mild cardiomegaly",
        "phrase: atelectasis",
        "word: pleural",
        "word: effusion",
        "word: left",
        "word: mild",
        "word: cardiomegaly",
        "word: atelectasis",
    ]
    by_label = {u.label: u for u in units}
    assert _tokens(word_tokenizer, ids, by_label["word: effusion"]) == ["effusion"]
    # a phrase averages its content words; stop-words ("no", "on", "the") add no columns
    assert _tokens(word_tokenizer, ids, by_label["phrase: No pleural effusion on the left"]) == [
        "pleural",
        "effusion",
        "left",
    ]
    assert not any(u.kind == "word" and u.text in STOP_WORDS for u in units)


def test_units_merge_sub_word_pieces(piece_tokenizer):
    ids = _ids(piece_tokenizer)
    assert "▁eff" in piece_tokenizer.convert_ids_to_tokens(ids.tolist())  # the tokenizer really splits words
    by_label = {u.label: u for u in find_text_units(PROMPT, IMPRESSION, piece_tokenizer, ids)}
    assert _tokens(piece_tokenizer, ids, by_label["word: effusion"]) == ["▁eff", "usion"]
    assert _tokens(piece_tokenizer, ids, by_label["word: atelectasis"]) == ["▁at", "elect", "asis"]
    assert _tokens(piece_tokenizer, ids, by_label["phrase: mild cardiomegaly"]) == ["▁mild", "▁cardio", "megaly"]


def test_phrase_splitting_keeps_decimals_and_merges_repeats(word_tokenizer):
    impression = "Nodule 1.5 cm in the left lobe; left lobe atelectasis, nodule 1.5 cm in the left lobe"
    prompt = f"40 years old female: {impression}"
    units = find_text_units(prompt, impression, word_tokenizer, _ids(word_tokenizer, prompt))
    phrases = [u.text for u in units if u.kind == "phrase"]
    assert phrases == ["Nodule 1.5 cm in the left lobe", "left lobe atelectasis", "nodule 1.5 cm in the left lobe"]
    words = [u.text for u in units if u.kind == "word"]
    assert words.count("nodule") == 1 and "1" not in words and "5" not in words
    nodule = next(u for u in units if u.label == "word: nodule")
    assert len(nodule.columns) == 2  # both occurrences


def test_units_reject_mismatched_inputs(word_tokenizer):
    ids = _ids(word_tokenizer)
    with pytest.raises(ValueError, match="token_ids do not match"):
        find_text_units("70 years old female: cardiomegaly.", "cardiomegaly.", word_tokenizer, ids)
    with pytest.raises(ValueError, match="impression="):
        find_text_units(PROMPT, "emphysema", word_tokenizer, ids)
    with pytest.raises(ValueError, match="token_ids must be 1-D"):
        find_text_units(PROMPT, IMPRESSION, word_tokenizer, ids[None])


# -- token grid -> volume -----------------------------------------------------------------------------


def test_frame_centres_follow_the_ctvit_slice_grouping():
    np.testing.assert_allclose(frame_slice_centres(4), [0.0, 1.5, 3.5, 5.5])


@pytest.mark.parametrize("frame", [0, 1, 3])
def test_single_hot_token_lights_its_slices_and_patch(frame):
    grid, patch = (5, 4, 6), 16
    values = np.zeros(grid)
    values[frame, 1, 4] = 1.0
    out = upsample_token_grid(values, (2 * grid[0] - 1, grid[1] * patch, grid[2] * patch))
    assert out.shape == (9, 64, 96) and out.dtype == np.float32
    per_slice = out.max(axis=(1, 2))
    lit = {0} if frame == 0 else {2 * frame - 1, 2 * frame}
    # frame centres are at 0, 1.5, 3.5, ...: the frame's own slices are the brightest (equal from frame 2 on)
    assert set(np.argsort(per_slice)[-len(lit) :].tolist()) == lit
    z = max(lit)
    assert per_slice[z] == per_slice.max()
    row, col = np.unravel_index(np.argmax(out[z]), out[z].shape)
    assert 16 <= row < 32 and 64 <= col < 80  # inside patch (1, 4)
    # patch centres sit on pixel centres: the patch is symmetric about its centre (23.5, 71.5)
    np.testing.assert_allclose(out[z, 16:32, 64:80], out[z, 16:32, 64:80][::-1, ::-1], atol=1e-6)


def test_super_resolution_grid_keeps_the_field_of_view():
    values = np.zeros((3, 2, 2))
    values[:, 0, 1] = 1.0  # right half of the top half, every frame
    out = upsample_token_grid(values, (5, 128, 128))  # low-res would be 5x32x32
    plane = out[2]
    assert plane[:64, 64:].mean() > plane[64:, :64].mean() + 0.5
    # the two patch columns meet at the pixel boundary 63.5 | 64 (half-pixel alignment, no shift)
    np.testing.assert_allclose(plane[0, :64] + plane[0, 64:][::-1], 1.0, atol=1e-6)
    assert plane[0, 31] == 0.0 and plane[0, 96] == 1.0 and 0.0 < plane[0, 32] < plane[0, 95] < 1.0


def test_planted_region_lights_only_its_word(word_tokenizer):
    ids = _ids(word_tokenizer)
    units = find_text_units(PROMPT, IMPRESSION, word_tokenizer, ids)
    effusion = next(u for u in units if u.label == "word: effusion").columns
    grid = (4, 4, 4)
    generator = np.random.default_rng(0)
    attention = generator.uniform(0.0, 0.02, size=(*grid, len(ids)))
    region = (slice(2, 4), slice(0, 2), slice(2, 4))  # frames 2-3, rows 0-1, columns 2-3 of the token grid
    attention[region + (list(effusion),)] = 0.5
    maps = build_attention_maps(
        torch.from_numpy(attention.reshape(-1, len(ids))),
        grid=grid,
        prompt=PROMPT,
        impression=IMPRESSION,
        tokenizer=word_tokenizer,
        token_ids=ids,
        output_shape=(7, 32, 32),
    )
    # slices 3..6 (frames 2-3), rows 0..15, columns 16..31 at patch 8
    inside = (slice(3, 7), slice(0, 16), slice(16, 32))
    peak = np.unravel_index(np.argmax(maps["word: effusion"]), (7, 32, 32))
    assert all(s.start <= p < s.stop for s, p in zip(inside, peak, strict=True))
    assert maps["word: effusion"][inside].mean() > 0.6 > maps["word: effusion"][:2, 16:, :16].mean()
    assert maps["phrase: No pleural effusion on the left"][inside].mean() > 0.5
    for label in ("word: cardiomegaly", "word: pleural", "phrase: mild cardiomegaly"):
        assert maps[label][inside].mean() < 0.6 < maps["word: effusion"][inside].mean()


def test_maps_shape_range_and_one_per_unit(word_tokenizer):
    ids = _ids(word_tokenizer, pad=2)
    grid = (3, 2, 2)
    attention = torch.rand(12, len(ids), generator=torch.Generator().manual_seed(1))
    attention[:, 1] = 0.1  # "years": constant (but it is no unit of the impression anyway)
    maps = build_attention_maps(
        attention,
        grid=grid,
        prompt=PROMPT,
        impression=IMPRESSION,
        tokenizer=word_tokenizer,
        token_ids=ids,
        output_shape=(5, 16, 24),
    )
    assert len([k for k in maps if k.startswith("phrase: ")]) == 3
    assert len([k for k in maps if k.startswith("word: ")]) == 6
    for array in maps.values():
        assert array.shape == (5, 16, 24) and array.dtype == np.float32
        assert array.min() == 0.0 and array.max() == 1.0
    with pytest.raises(ValueError, match="L = len"):
        build_attention_maps(
            attention[:, :-1],
            grid=grid,
            prompt=PROMPT,
            impression=IMPRESSION,
            tokenizer=word_tokenizer,
            token_ids=ids,
            output_shape=(5, 16, 24),
        )
    with pytest.raises(ValueError, match="output_shape"):
        build_attention_maps(
            attention,
            grid=grid,
            prompt=PROMPT,
            impression=IMPRESSION,
            tokenizer=word_tokenizer,
            token_ids=ids,
            output_shape=(5, 16),
        )


def test_maps_are_upsampled_on_lookup_and_written_one_at_a_time(word_tokenizer, tmp_path):
    ids = _ids(word_tokenizer)
    grid, shape = (3, 2, 2), (5, 16, 24)
    attention = torch.rand(12, len(ids), generator=torch.Generator().manual_seed(2))
    maps = build_attention_maps(attention, grid=grid, prompt=PROMPT, impression=IMPRESSION,
                                tokenizer=word_tokenizer, token_ids=ids, output_shape=shape)
    assert isinstance(maps, AttentionMaps) and maps.output_shape == shape
    units = find_text_units(PROMPT, IMPRESSION, word_tokenizer, ids)
    eager = dict(iter_attention_maps(attention, grid=grid, units=units, output_shape=shape))
    assert list(maps) == list(eager) and len(maps) == len(eager)
    for label, array in eager.items():
        np.testing.assert_array_equal(maps[label], array)
        assert maps.grid_map(label).shape == grid
    assert maps["word: effusion"] is not maps["word: effusion"]  # computed per lookup, nothing cached
    with pytest.raises(KeyError):
        maps["word: absent"]

    class Counting(AttentionMaps):  # how many full-size maps exist while the writer runs
        alive = peak = 0

        def __getitem__(self, label):
            array = super().__getitem__(label)
            Counting.alive += 1
            Counting.peak = max(Counting.peak, Counting.alive)
            weakref.finalize(array, Counting.__dict__["_released"])
            return array

        @staticmethod
        def _released():
            Counting.alive -= 1

    counting = Counting({label: (maps.grid_map(label), False) for label in maps}, shape)
    write_attention_maps(counting, tmp_path / "maps", VolumeGeometry(spacing_mm=(2.0, 1.0, 1.0)))
    assert Counting.peak == 1 and len(list((tmp_path / "maps").glob("*.nii.gz"))) == len(maps)


def test_constant_map_becomes_zeros_and_bad_grid_raises():
    attention = np.full((8, 3), 0.2)
    unit = TextUnit(kind="word", text="effusion", columns=(1,))
    ((label, array),) = iter_attention_maps(attention, grid=(2, 2, 2), units=[unit], output_shape=(3, 8, 8))
    assert label == "word: effusion" and not array.any()
    with pytest.raises(ValueError, match=r"attention shape .* t\*h\*w = 12"):
        list(iter_attention_maps(attention, grid=(3, 2, 2), units=[unit], output_shape=(3, 8, 8)))


# -- files --------------------------------------------------------------------------------------------


def test_write_attention_maps_files_index_and_no_silent_overwrite(tmp_path):
    geometry = VolumeGeometry(spacing_mm=(1.5, 0.75, 0.75), origin_mm=(1.0, 2.0, 3.0))
    rng = np.random.default_rng(0)
    maps = {
        "phrase: No pleural effusion on the left": rng.random((3, 4, 5), dtype=np.float32),
        "word: effusion": rng.random((3, 4, 5), dtype=np.float32),
        "word: ../../etc": rng.random((3, 4, 5), dtype=np.float32),
    }
    out = tmp_path / "attention"
    index_path = write_attention_maps(maps, out, geometry, prompt=PROMPT)
    index = json.loads(index_path.read_text())
    assert index["prompt"] == PROMPT and index["shape"] == [3, 4, 5]
    files = [entry["file"] for entry in index["maps"]]
    assert files == [
        "00_phrase_no_pleural_effusion_on_the_left.nii.gz",
        "01_word_effusion.nii.gz",
        "02_word_etc.nii.gz",
    ]
    assert [(e["kind"], e["text"]) for e in index["maps"]][1] == ("word", "effusion")
    array, read_geometry = read_volume(out / files[1])
    np.testing.assert_allclose(array, maps["word: effusion"])
    np.testing.assert_allclose(read_geometry.spacing_mm, geometry.spacing_mm)
    assert sorted(p.name for p in out.iterdir()) == sorted([*files, "index.json"])  # no temporary files left
    with pytest.raises(FileExistsError):
        write_attention_maps(maps, out, geometry)
    write_attention_maps(iter(maps.items()), out, geometry, overwrite=True)
    with pytest.raises(ValueError, match="shared by all maps"):
        write_attention_maps({"word: a": np.zeros((2, 2, 2)), "word: b": np.zeros((2, 2, 3))}, tmp_path / "x", geometry)


@torch.no_grad()
def test_recorder_with_a_tiny_maskgit_guided_sampling_loop():
    from GenerateCTLib.transformer.maskgit import MaskGIT, MaskGITConfig
    from GenerateCTLib.transformer.masking_scheduler import MaskGITScheduler, sample_token_ids

    torch.manual_seed(0)
    config = MaskGITConfig(num_tokens=16, max_seq_len=64, dim=16, dim_context=8, depth=2, heads=2, dim_head=8)
    model = MaskGIT(config).eval()
    grid, b, length = (3, 2, 2), 2, 5
    text_embeds = torch.randn(b, length, 8)
    text_mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])  # the second prompt is padded
    recorder = CrossAttentionRecorder(batch_size=b, num_null_kv=config.num_null_kv)
    scheduler = MaskGITScheduler(num_inference_steps=4)
    sample_token_ids(
        model,
        text_embeds,
        text_mask,
        grid=grid,
        scheduler=scheduler,
        cond_scale=3.0,
        attention_steps=2,
        on_attention=recorder.add,
    )
    attention = recorder.mean()
    assert recorder.num_steps == 2 and attention.shape == (b, 12, length)
    assert torch.all(attention[1, :, 3:] == 0)  # padding is never attended
    assert torch.all(attention.sum(-1) < 1) and torch.all(attention[:, :, :3] > 0)  # the rest went to null keys
