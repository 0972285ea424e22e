"""Tiny random-weight models of the real architectures, built offline, for tests and the demo.

Each writer is deterministic (same files, same weights, every call) and writes in the format the
real loaders read, so the stages run their real code path on them:

- ``write_tiny_whisper``: an openai-whisper checkpoint ``{dims, model_state_dict}`` (``whisper.load_model``);
- ``write_tiny_faster_whisper``: a CTranslate2 Whisper model directory with ``tokenizer.json``
  (``faster_whisper.WhisperModel``), converted from a tiny ``transformers`` Whisper;
- ``write_tiny_lm``: a causal LM directory (tiny ``LlamaForCausalLM`` + a byte-level BPE tokenizer
  with a chat template) for ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained``.

Their outputs are meaningless text: they exist to exercise batching, gating, prompting and cleaning.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

# Training text for the tiny LM's tokenizer: caption-like English, so prompts tokenize compactly.
_CORPUS = """\
A man is talking to the camera in a kitchen while music plays in the background.
A woman sings a song on a stage and the crowd cheers loudly.
A dog runs across a green field and barks at a red ball.
Someone explains how to cook pasta; water is boiling in a pot.
Cars drive along a busy street at night with horns and engine noise.
A child laughs and plays the piano in a bright living room.
About one video, here are 3 vision captions, 3 audio captions, and one speech subtitle.
You need to understand and encode them into 1 sentence. The sentence is a video description.
Vision and audio captions maybe redundant, summarize them before encode with speech subtitle.
Do not simply concatenate them together. The weights of video, audio and speech are equaled.
Human: Assistant: System: describe what is seen, heard and said in the clip.
"""

_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def write_tiny_whisper(directory: str | Path) -> Path:
    """A random tiny multilingual openai-whisper model → ``directory/tiny-whisper.pt`` (its path).

    Real vocabulary (51865 tokens, 99 languages) and mel front end (80 bins, 30 s windows), width 64,
    2 encoder + 2 decoder layers; loadable with ``whisper.load_model(path)``.
    """
    try:
        import torch
        from whisper.model import ModelDimensions, Whisper
    except ImportError as e:
        raise ImportError("write_tiny_whisper needs openai-whisper: "
                          "pip install openai-whisper==20250625") from e

    path = Path(directory) / "tiny-whisper.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=2,
                           n_vocab=51865, n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Whisper(dims)
        _spread(model)
    torch.save({"dims": dims.__dict__, "model_state_dict": model.state_dict()}, path)
    return path


def _spread(model) -> None:
    """Wider random weights than the default inits: peaked logits, so greedy decoding has no near-ties."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                torch.nn.init.normal_(p, std=0.2)
            else:  # biases and norms: off their 0/1 defaults
                p.add_(torch.randn_like(p) * 0.05)


def _whisper_tokenizer_json() -> str:
    """Whisper's multilingual tokenizer (the tiktoken ranks openai-whisper ships) as a ``tokenizers`` JSON."""
    import whisper.tokenizer as wt
    from transformers.convert_slow_tokenizer import TikTokenConverter

    encoding = wt.get_encoding("multilingual")
    specials = sorted(encoding._special_tokens.items(), key=lambda kv: kv[1])
    vocab_file = Path(wt.__file__).parent / "assets" / "multilingual.tiktoken"
    converter = TikTokenConverter(vocab_file=str(vocab_file), pattern=encoding._pat_str,
                                  extra_special_tokens=[t for t, _ in specials])
    tokenizer = converter.converted()
    for token, token_id in specials:
        if tokenizer.token_to_id(token) != token_id:
            got = tokenizer.token_to_id(token)
            raise RuntimeError(f"whisper special token {token} got id {got}, not {token_id}")
    return tokenizer.to_str()


# Whisper large-v2's dimensions (large-v3's but for 128 mel bins and one more language token).
LARGE_WHISPER_DIMS = {"d_model": 1280, "encoder_layers": 32, "decoder_layers": 32,
                      "encoder_attention_heads": 20, "decoder_attention_heads": 20,
                      "encoder_ffn_dim": 5120, "decoder_ffn_dim": 5120}


def write_tiny_faster_whisper(directory: str | Path, dims: dict[str, int] | None = None) -> Path:
    """A random tiny Whisper as a CTranslate2 model directory for faster-whisper → its path.

    Built offline: a tiny ``transformers`` ``WhisperForConditionalGeneration`` (whisper's real
    multilingual vocabulary and special tokens) converted with ctranslate2's converter. ``dims``
    replaces the tiny dimensions (``LARGE_WHISPER_DIMS``: random weights at large size, stored in
    fp16, for GPU benchmarks).
    """
    try:
        import ctranslate2.converters
        import torch
        from transformers import (
            GenerationConfig,
            PreTrainedTokenizerFast,
            WhisperConfig,
            WhisperForConditionalGeneration,
        )
    except ImportError as e:
        raise ImportError("write_tiny_faster_whisper needs faster-whisper (ctranslate2), transformers and "
                          "openai-whisper (for the vocabulary): "
                          "pip install faster-whisper openai-whisper") from e
    import whisper.tokenizer as wt

    out = Path(directory) / ("random-faster-whisper" if dims else "tiny-faster-whisper")
    hf_dir = Path(tempfile.mkdtemp(prefix="tiny-whisper-hf-"))  # transformers model: converted, then removed
    tok_file = hf_dir / "tokenizer.json"
    tok_file.write_text(_whisper_tokenizer_json())
    sot, eot = 50258, 50257
    lang_to_id = {f"<|{code}|>": 50259 + i for i, code in enumerate(list(wt.LANGUAGES)[:99])}
    size = {"d_model": 64, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 2,
            "decoder_attention_heads": 2, "encoder_ffn_dim": 256, "decoder_ffn_dim": 256, **(dims or {})}
    config = WhisperConfig(vocab_size=51865, num_mel_bins=80, max_source_positions=1500,
                           max_target_positions=448, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
                           decoder_start_token_id=sot, **size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = WhisperForConditionalGeneration(config)
        _spread(model)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, suppress_tokens=[],
        begin_suppress_tokens=[220, eot], lang_to_id=lang_to_id, no_timestamps_token_id=50363)
    try:
        model.save_pretrained(hf_dir)
        PreTrainedTokenizerFast(tokenizer_file=str(tok_file), eos_token="<|endoftext|>",
                                bos_token="<|endoftext|>", unk_token="<|endoftext|>").save_pretrained(hf_dir)
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        converter = ctranslate2.converters.TransformersConverter(str(hf_dir), copy_files=["tokenizer.json"])
        converter.convert(str(out), quantization="float16" if dims else None)
    finally:
        shutil.rmtree(hf_dir, ignore_errors=True)
    return out


def write_tiny_lm(directory: str | Path) -> Path:
    """A random tiny ``LlamaForCausalLM`` + byte-level BPE tokenizer with a chat template → its directory."""
    try:
        import torch
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    except ImportError as e:
        raise ImportError("write_tiny_lm needs transformers and tokenizers: pip install transformers") from e

    out = Path(directory) / "tiny-lm"
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<|pad|>", "<|bos|>", "<|eos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", bos_token="<|bos|>",
                                        eos_token="<|end|>", padding_side="left")
    tokenizer.chat_template = _CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        for p in model.parameters():
            if p.ndim > 1:
                torch.nn.init.normal_(p, std=0.3)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    note = {"note": "random weights; outputs are meaningless"}
    (out / "TINY_RANDOM_MODEL.json").write_text(json.dumps(note))
    return out
