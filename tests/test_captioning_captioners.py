"""Natural-language captioners on tiny random models of the real transformers classes, built offline.

Florence-2 (Florence2ForConditionalGeneration + Florence2Processor with a BART tokenizer and CLIP image
processor), BLIP (BlipForConditionalGeneration + BlipProcessor with a BERT tokenizer) and a chat VLM (LLaVA, the
class JoyCaption uses; Qwen2.5-VL goes through the same AutoModelForImageTextToText path). Random weights give
gibberish text; the tests check the plumbing: loading from a folder, batching, decoding, storage, skipping.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from PIL import Image

from helpers.captioning import captioners as K
from helpers.captioning.sidecar import RenderConfig, load_record
from helpers.dataset.caption_files import caption_path, read_caption

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _byte_vocab(specials: list[str], extra: list[str]) -> dict[str, int]:
    from helpers.models.tiny import _bytes_to_unicode

    vocab = {t: i for i, t in enumerate(specials)}
    for token in _bytes_to_unicode() + extra:
        vocab.setdefault(token, len(vocab))
    return vocab


def build_tiny_florence2(folder: Path) -> Path:
    tok = transformers.BartTokenizerFast(vocab=_byte_vocab(["<s>", "<pad>", "</s>", "<unk>"], ["<mask>", "<image>"]),
                                         merges=[], extra_special_tokens={"image_token": "<image>"})
    image_processor = transformers.CLIPImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False)
    image_processor.image_seq_length = 65  # 8x8 patch grid + 1 pooled token from the tiny vision tower
    processor = transformers.Florence2Processor(image_processor=image_processor, tokenizer=tok,
                                                post_processor_config={"pure_text": {}})
    config = transformers.Florence2Config(
        text_config=dict(model_type="bart", vocab_size=len(tok), max_position_embeddings=512, encoder_layers=1,
                         decoder_layers=1, encoder_ffn_dim=16, decoder_ffn_dim=16, encoder_attention_heads=1,
                         decoder_attention_heads=1, d_model=16, bos_token_id=0, pad_token_id=1, eos_token_id=2,
                         decoder_start_token_id=2, forced_bos_token_id=0),
        vision_config=dict(depths=[1], patch_size=[7], patch_stride=[4], patch_padding=[3], patch_prenorm=[False],
                           embed_dim=[16], num_heads=[1], num_groups=[1], window_size=12, projection_dim=16),
        image_token_id=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    transformers.Florence2ForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_tiny_blip(folder: Path) -> Path:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *string.ascii_lowercase, "photo", "of", "red"]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    tok = transformers.BertTokenizer(vocab=vocab, bos_token="[DEC]")
    processor = transformers.BlipProcessor(image_processor=transformers.BlipImageProcessor(
        size={"height": 32, "width": 32}), tokenizer=tok)
    config = transformers.BlipConfig(
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8, projection_dim=16),
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, encoder_hidden_size=16, max_position_embeddings=512,
                         bos_token_id=vocab["[DEC]"], pad_token_id=0, sep_token_id=vocab["[SEP]"],
                         eos_token_id=vocab["[SEP]"]), projection_dim=16)
    torch.manual_seed(0)
    transformers.BlipForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}"
                 "<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")


def build_tiny_llava(folder: Path) -> Path:
    tok = transformers.RobertaTokenizer(vocab=_byte_vocab(["<s>", "<pad>", "</s>", "<unk>"], ["<image>"]), merges=[],
                                        extra_special_tokens={"image_token": "<image>"})
    processor = transformers.LlavaProcessor(
        image_processor=transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok, patch_size=8, vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
        image_token="<image>", num_additional_image_tokens=1)
    config = transformers.LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8, projection_dim=16),
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=512, bos_token_id=0, eos_token_id=2, pad_token_id=1),
        image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
        vision_feature_select_strategy="default")
    torch.manual_seed(0)
    transformers.LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("captioners")
    return {"florence2": build_tiny_florence2(root / "tiny-florence2"), "blip": build_tiny_blip(root / "tiny-blip"),
            "vlm": build_tiny_llava(root / "tiny-llava")}


def _dataset(folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    paths = [folder / "a.png", folder / "b.jpg", folder / "c.png"]
    Image.new("RGBA", (40, 30), (255, 0, 0, 128)).save(paths[0])
    Image.new("RGB", (20, 50), (0, 0, 255)).save(paths[1])
    Image.new("RGB", (30, 30), (0, 255, 0)).save(paths[2])
    (folder / "broken.png").write_bytes(b"not an image")
    caption_path(paths[2]).write_text("1girl, solo, smile", encoding="utf-8")
    return paths


@pytest.mark.parametrize("family", ["florence2", "blip", "vlm"])
def test_caption_dataset_with_each_family(tmp_path, tiny_models, family):
    paths = _dataset(tmp_path / "ds")
    captioner = K.load_captioner(str(tiny_models[family]), device="cpu")
    assert captioner.family == family and captioner.device == "cpu" and captioner.dtype == torch.float32
    cfg = K.CaptionerConfig(model=str(tiny_models[family]), max_new_tokens=6, num_beams=2, batch_size=2)
    report = K.caption_dataset(tmp_path / "ds", cfg, render=RenderConfig(format="caption, tags"), progress=False,
                               captioner=captioner)
    assert report.captioned == 3 and list(report.problems) == [tmp_path / "ds" / "broken.png"]
    source = captioner.name
    for path in paths:
        record = load_record(path)
        assert isinstance(record.captions[source], str) and "\n" not in record.captions[source]
    assert load_record(paths[2]).tags == ["1girl", "solo", "smile"]  # the existing tags stay apart
    assert read_caption(paths[2]).endswith("1girl, solo, smile")
    again = K.caption_dataset(tmp_path / "ds", cfg, progress=False, captioner=captioner)
    assert again.captioned == 0 and again.skipped == 3  # already captioned by this captioner


def test_batching_gives_the_same_captions_as_one_by_one(tiny_models):
    captioner = K.load_captioner(str(tiny_models["florence2"]), device="cpu")
    images = [Image.new("RGB", (40, 30), (255, 0, 0)), Image.new("RGB", (20, 50), (0, 0, 255))]
    cfg = K.CaptionerConfig(max_new_tokens=5, num_beams=1)
    batched = K.generate_captions(captioner, images, cfg)
    single = [K.generate_captions(captioner, [im], cfg)[0] for im in images]
    assert batched == single


def test_florence_task_prompt_and_post_processing(tiny_models):
    captioner = K.load_captioner(str(tiny_models["florence2"]), device="cpu")
    inputs = K.build_inputs(captioner, [Image.new("RGB", (10, 10))], K.CaptionerConfig())
    text = captioner.processor.tokenizer.decode(inputs["input_ids"][0], skip_special_tokens=True)
    assert "Describe with a paragraph what is shown in the image." in text  # <MORE_DETAILED_CAPTION> expanded
    assert K.clean_caption("A cat on a mat.  The overall mood is calm.", remove_mood=True) == "A cat on a mat."
    assert K.clean_caption("two\nlines<pad><pad>") == "two lines"


def test_vlm_prompt_goes_through_the_chat_template(tiny_models):
    captioner = K.load_captioner(str(tiny_models["vlm"]), device="cpu")
    cfg = K.CaptionerConfig(prompt="Mention the trigger word ewpp.")
    inputs = K.build_inputs(captioner, [Image.new("RGB", (10, 10)), Image.new("RGB", (12, 10))], cfg)
    text = captioner.processor.tokenizer.decode(inputs["input_ids"][0], skip_special_tokens=False)
    assert "user: " in text and "Mention the trigger word ewpp.assistant: " in text
    assert captioner.processor.tokenizer.padding_side == "left"


def test_resolve_and_vram_estimates(tiny_models):
    assert K.resolve_captioner("florence-2-large") == ("florence-community/Florence-2-large", "florence2", 0.77)
    assert K.resolve_captioner("someone/my-blip-finetune")[1] == "blip"
    assert K.resolve_captioner(str(tiny_models["vlm"]))[1] == "vlm"
    with pytest.raises(K.CaptionerError, match="unknown captioner"):
        K.resolve_captioner("nonsense")
    assert K.estimate_vram_gb(8.3, "vlm", 2, 1) == pytest.approx(8.3 * 2 * 1.2 + 0.8)
    line = K.describe_vram("qwen2.5-vl-7b", batch_size=4, device="cpu")
    assert "needs about" in line and "GB" in line and "CPU" in line
    with pytest.raises(K.CaptionerError, match="could not load"):
        K.load_captioner("florence-2-base", device="cpu")  # offline in tests: a clear message, not a traceback


def test_qwen_image_size_cap_bounds_image_tokens():
    processor = type("P", (), {"image_processor": transformers.Qwen2VLImageProcessor()})()
    big = Image.new("RGB", (2000, 2000))
    assert K.cap_image_pixels(processor, 256 * 28 * 28)
    grid = processor.image_processor(images=[big], return_tensors="pt")["image_grid_thw"][0].tolist()
    assert grid[1] * grid[2] * 14 * 14 <= 256 * 28 * 28
    assert not K.cap_image_pixels(type("P", (), {"image_processor": object()})(), 1000)  # not Qwen: untouched
