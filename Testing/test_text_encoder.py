import pytest
import torch

from GenerateCTLib.text_encoder import T5TextEncoder
from Testing.tiny_models import make_tiny_t5


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    return make_tiny_t5(tmp_path_factory.mktemp("t5"))


def test_encode_pads_to_longest_with_zero_embeddings(tiny_t5):
    encoder = T5TextEncoder.from_pretrained(tiny_t5, local_files_only=True)
    out = encoder.encode(["65 years old male: cardiomegaly.", "40 years old female: no acute findings , and mild"])
    lengths = out.mask.sum(dim=1).tolist()
    assert out.embeds.shape == (2, max(lengths), encoder.dim)
    assert out.embeds.dtype == torch.float32
    assert lengths[0] < lengths[1]
    # padding positions are exactly zero and masked out; real tokens are not
    assert torch.all(out.embeds[0, lengths[0]:] == 0)
    assert not out.mask[0, lengths[0]:].any()
    assert out.mask[:, 0].all()
    assert encoder.tokens(out.token_ids[0])[-1] == "<pad>"


def test_truncates_to_max_length(tiny_t5):
    encoder = T5TextEncoder.from_pretrained(tiny_t5, local_files_only=True, max_length=8)
    out = encoder.encode("nodule " * 50)
    assert out.embeds.shape[1] == 8


def test_bad_inputs_name_the_problem(tiny_t5, tmp_path):
    encoder = T5TextEncoder.from_pretrained(tiny_t5, local_files_only=True)
    with pytest.raises(ValueError, match="prompts"):
        encoder.encode([])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        T5TextEncoder.from_pretrained(tmp_path / "empty")
    with pytest.raises(ValueError, match="cannot load the T5 text encoder"):
        T5TextEncoder.from_pretrained("no-such-org/no-such-model", local_files_only=True)
