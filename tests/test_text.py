"Prompt encoding: parity with diffusers' EasyAnimatePipeline.encode_prompt, truncation warnings, batches, reuse."
import warnings
import pytest, torch
from diffusers import EasyAnimatePipeline as DiffusersT2V
from easyanimate.core import InputError
from easyanimate.text import (DEFAULT_NEGATIVE_PROMPT, PromptCache, PromptTruncatedWarning, encode_prompts, encode_text,
                              tokenize_prompts)
from easyanimate.testing import make_tiny_components

PROMPTS = ["A panda, dressed in a small red jacket, plays a guitar in a bamboo forest.",
           "一只穿着小外套的猫咪正在花园秋千上安静地弹吉他。"]


@pytest.fixture(scope="module")
def parts():
    return make_tiny_components("t2v")


@pytest.fixture(scope="module")
def oracle(parts):
    from diffusers import AutoencoderKLMagvit, EasyAnimateTransformer3DModel
    from easyanimate.testing import make_tiny_transformer, make_tiny_vae
    return DiffusersT2V(vae=make_tiny_vae(cls=AutoencoderKLMagvit), text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
                        transformer=make_tiny_transformer(16, cls=EasyAnimateTransformer3DModel), scheduler=parts["scheduler"])


def rel_err(a, b): return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("prompt", [PROMPTS[0], PROMPTS[1], PROMPTS])
def test_parity_with_diffusers_encode_prompt(parts, oracle, prompt):
    neg = DEFAULT_NEGATIVE_PROMPT if isinstance(prompt, str) else [DEFAULT_NEGATIVE_PROMPT, "ugly"]
    ref = oracle.encode_prompt(prompt, num_images_per_prompt=2, do_classifier_free_guidance=True, negative_prompt=neg,
                               device=torch.device("cpu"), dtype=torch.float32)
    ours = encode_prompts(parts["text_encoder"], parts["tokenizer"], prompt, negative_prompt=neg, num_videos_per_prompt=2)
    ref = (ref[0], ref[2], ref[1], ref[3])  # diffusers returns (embeds, neg embeds, mask, neg mask)
    # diffusers interleaves embedding rows (p0, p0, p1, p1) but tiles the masks (p0, p1, p0, p1), so its masks do not
    # line up with its embeddings for a batch; ours interleave both. Compare masks in the embeddings' order.
    b = 1 if isinstance(prompt, str) else len(prompt)
    order = torch.arange(2 * b).view(2, b).t().reshape(-1)
    ref = (ref[0], ref[1][order], ref[2], ref[3][order])
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        if a.is_floating_point(): assert rel_err(a, b) < 1e-6
        else: assert torch.equal(a.long(), b.long())
    assert ours.prompt_embeds.shape[1] == 256  # padded to the full budget


def test_default_negative_prompt_is_used_when_none(parts):
    ours = encode_prompts(parts["text_encoder"], parts["tokenizer"], PROMPTS[0], negative_prompt=None)
    explicit = encode_prompts(parts["text_encoder"], parts["tokenizer"], PROMPTS[0], negative_prompt=DEFAULT_NEGATIVE_PROMPT)
    assert torch.equal(ours.negative_prompt_embeds, explicit.negative_prompt_embeds)
    assert DEFAULT_NEGATIVE_PROMPT.startswith("扭曲的身体")


def test_long_prompt_warns_with_the_cut_text(parts):
    long = " ".join(f"word{i}" for i in range(300)) + " FINALWORDS"
    with pytest.warns(PromptTruncatedWarning, match="FINALWORDS") as rec:
        tokens = tokenize_prompts(parts["tokenizer"], long)
    assert tokens.input_ids.shape == (1, 256) and tokens.attention_mask.all()
    msg = str(rec[0].message)
    assert "256 tokens" in msg and "word0 " not in msg  # it quotes only the part that was cut
    # the quoted text is exactly what is missing: kept prompt text + cut text == the prompt
    kept = parts["tokenizer"].decode(tokens.input_ids[0])
    kept_prompt = kept[kept.index("<|im_start|>user\n") + len("<|im_start|>user\n"):]
    cut = msg.split("will not see: '")[1].split("'. Shorten")[0]
    assert kept_prompt + cut == long


def test_short_prompt_does_not_warn(parts):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenize_prompts(parts["tokenizer"], PROMPTS)


def test_batch_rows_equal_single_prompts(parts):
    emb, mask = encode_text(parts["text_encoder"], parts["tokenizer"], PROMPTS)
    for i, p in enumerate(PROMPTS):
        e1, m1 = encode_text(parts["text_encoder"], parts["tokenizer"], p)
        assert rel_err(emb[i], e1[0]) < 1e-5 and torch.equal(mask[i], m1[0])
    assert mask[1].sum() != mask[0].sum()  # Chinese and English prompts tokenise to different lengths


@pytest.mark.filterwarnings("ignore::easyanimate.text.PromptTruncatedWarning")
def test_cache_skips_the_encoder_for_known_prompts(parts):
    calls = {"n": 0}
    enc = parts["text_encoder"]
    handle = enc.register_forward_pre_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    try:
        cache = PromptCache()
        a = encode_prompts(enc, parts["tokenizer"], PROMPTS[0], cache=cache)
        n_first = calls["n"]
        b = encode_prompts(enc, parts["tokenizer"], PROMPTS[0], cache=cache)
        assert calls["n"] == n_first, "the second run must not call the encoder"
        assert torch.equal(a.prompt_embeds, b.prompt_embeds) and torch.equal(a.negative_prompt_embeds, b.negative_prompt_embeds)
        encode_prompts(enc, parts["tokenizer"], PROMPTS[0], cache=cache, max_length=64)  # another budget: a new entry
        assert calls["n"] > n_first
    finally:
        handle.remove()


def test_errors(parts):
    te, tok = parts["text_encoder"], parts["tokenizer"]
    with pytest.raises(InputError, match="2 negative prompts for 3"):
        encode_prompts(te, tok, ["a", "b", "c"], negative_prompt=["x", "y"])
    with pytest.raises(InputError, match="exactly one"):
        encode_prompts(te, tok, "a", prompt_embeds=torch.zeros(1, 4, 32))
    with pytest.raises(InputError, match="string or a non-empty list"):
        encode_prompts(te, tok, 123)
    with pytest.raises(InputError, match="no text encoder"):
        encode_prompts(None, None, "a")
