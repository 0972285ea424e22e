"""``OmniCaptionFuser``: an LLM fuses vision captions, audio captions and the subtitle into ``vast_cap``.

The prompt comes from a versioned YAML template in ``vast/configs/prompts/`` (``vast27m-v1`` is
the original VAST-27M instruction word for word; ``omni-v1`` a cleaner one). A template has:

- ``version``: bumped whenever its wording changes (recorded in every sample's provenance);
- ``system`` (optional): the system message;
- ``template``: the user message, with ``{vision}``, ``{n_vision}``, ``{audio}``, ``{n_audio}``,
  ``{subtitle}``; each list is rendered as ``item`` joined by ``separator``, and a missing
  source as ``absent``, so a clip without audio captions or subtitle is still fused and the
  model is told which inputs are absent;
- ``response_prefix``: text the answer starts with (e.g. ``The sentence is "``);
- ``plain``: the layout (``{system}``, ``{prompt}``, ``{response_prefix}``) for tokenizers
  without a chat template; with one, the messages go through ``apply_chat_template``.

The LLM runs on one of the backends of ``vast.captioners.llm`` (``transformers`` and ``vllm`` in
the actor, or ``openai-server``: any OpenAI-compatible server), greedy by default; the decoded
continuation is cleaned to one caption by ``clean_caption``.

**Nothing to fuse.** A clip with no vision caption, no audio caption and no subtitle (a silent
audio file, a tone clip without audio captions) is not sent to the LLM: an LLM asked to fuse
nothing invents a sentence. Its ``vast_cap`` is ``""`` and the field's provenance says
``empty_reason: "nothing to fuse: …"``. An answer that cleans to nothing is ``""`` with its
reason too. ``vast_cap``'s provenance records the digests of the three inputs it was fused from,
so a re-run subtitle or caption shows which omni-captions it outdated.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from vast.captioners.base import EMPTY_REASON, ModelStage, ModelStageConfig
from vast.captioners.llm import LLM_BACKENDS, Sampling, ServerOptions, load_llm
from vast.config import ConfigError
from vast.pipeline.stage import SampleError

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "configs" / "prompts"
MAX_INPUTS = 3  # captions per modality fed to the LLM, as in VAST-27M


@dataclass
class FusionConfig(ModelStageConfig):
    """Settings of the omni-caption fusion stage."""

    model: str = "lmsys/vicuna-13b-v1.5"
    """A causal LM: hub id (fetched by ``vast-pipeline models pull``) or local directory
    (``save_pretrained`` layout); with ``openai-server``, the model name the server serves."""
    prompt: str = "vast27m-v1"
    """A template name in ``vast/configs/prompts/`` or a path to a YAML template."""
    max_new_tokens: int = 64
    """Most tokens generated per clip."""
    do_sample: bool = False
    """Sample instead of greedy decoding."""
    temperature: float = 0.7
    """Sampling temperature (only with ``do_sample``)."""
    top_p: float = 0.9
    """Nucleus sampling mass (only with ``do_sample``)."""
    max_words: int = 60
    """Longest cleaned caption, in words; longer ones are cut."""
    backend: str = "transformers"
    """``transformers`` (in the actor), ``vllm`` (vLLM's offline engine in the actor: needs the ``vllm``
    package and a GPU) or ``openai-server`` (any OpenAI-compatible server, see ``server``)."""
    server: ServerOptions = field(default_factory=ServerOptions)
    """The server of the ``openai-server`` backend: URL, API key variable, concurrency, timeout, retries."""

    def __post_init__(self) -> None:
        if self.backend not in LLM_BACKENDS:
            raise ConfigError(f"unknown fusion backend {self.backend!r}; "
                              f"use one of {', '.join(LLM_BACKENDS)}")

    def sampling(self) -> Sampling:
        """The decoding settings every backend applies."""
        return Sampling(self.max_new_tokens, self.do_sample, self.temperature, self.top_p, self.seed)


@dataclass(frozen=True)
class PromptTemplate:
    """A versioned fusion prompt (see the module docstring for the fields)."""

    name: str
    version: int | str
    template: str
    system: str | None = None
    response_prefix: str = ""
    plain: str = "{system}\n\n{prompt}\n{response_prefix}"
    item: str = "{}"
    separator: str = "; "
    absent: str = "none"
    sha256: str = ""

    def user_message(self, vision: list[str], audio: list[str], subtitle: str) -> str:
        """The user turn for one clip's inputs (missing ones rendered as ``absent``)."""
        def listed(caps: list[str]) -> str:
            return self.separator.join(self.item.format(c) for c in caps) if caps else self.absent

        return self.template.format(vision=listed(vision), n_vision=len(vision), audio=listed(audio),
                                    n_audio=len(audio), subtitle=subtitle or self.absent)

    def plain_text(self, vision: list[str], audio: list[str], subtitle: str) -> str:
        """The whole prompt for a tokenizer without a chat template."""
        text = self.plain.format(system=self.system or "", prompt=self.user_message(vision, audio, subtitle),
                                 response_prefix=self.response_prefix)
        return text.lstrip()

    def messages(self, vision: list[str], audio: list[str], subtitle: str) -> list[dict[str, str]]:
        """Chat messages (system, user) for ``apply_chat_template``."""
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return [*msgs, {"role": "user", "content": self.user_message(vision, audio, subtitle)}]


def load_prompt(name_or_path: str) -> PromptTemplate:
    """A prompt template by name (``vast27m-v1``) from ``vast/configs/prompts/``, or from a YAML path."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = PROMPTS_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            known = ", ".join(sorted(p.stem for p in PROMPTS_DIR.glob("*.yaml")))
            raise ValueError(f"unknown fusion prompt {name_or_path!r}; known: {known} (or a .yaml path)")
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    missing = {"version", "template"} - set(data)
    if missing:
        raise ValueError(f"prompt template {path} lacks {', '.join(sorted(missing))}")
    unknown = set(data) - {f for f in PromptTemplate.__dataclass_fields__ if f not in ("name", "sha256")}
    if unknown:
        raise ValueError(f"prompt template {path} has unknown fields {', '.join(sorted(unknown))}")
    return PromptTemplate(name=path.stem, sha256=hashlib.sha256(text.encode()).hexdigest(), **data)


_LEAD_IN = re.compile(r'^\s*(?:(?:assistant|answer|sentence|caption)\s*:\s*)?(?:the sentence is\s*:?\s*)?',
                      re.IGNORECASE)
_QUOTES = "\"'“”‘’`"
_TURN = re.compile(r"\b(?:Human|User|Assistant|USER|ASSISTANT)\s*:|###|<\|")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def clean_caption(text: str, response_prefix: str = "", max_words: int = 60) -> str:
    """A model continuation → one caption: no echoed prefix or lead-in, no quotes, first line and sentence,
    at most ``max_words`` words; control characters and undecodable bytes are dropped."""
    t = "".join(ch for ch in text if ch in "\n\t" or (unicodedata.category(ch)[0] != "C" and ch != "\ufffd"))
    t = t.strip()
    prefix = response_prefix.strip()
    if prefix and t.startswith(prefix):
        t = t[len(prefix):]
    t = _LEAD_IN.sub("", t, count=1)
    # an answer primed with an opening quote, or opening one itself, ends at the closing quote
    quoted = prefix.endswith(tuple(_QUOTES)) or t.lstrip().startswith(tuple(_QUOTES))
    t = t.lstrip(_QUOTES + " ")
    if quoted:
        t = re.split(r"[\"“”]", t, maxsplit=1)[0]
    turn = _TURN.search(t)
    if turn:
        t = t[:turn.start()]
    t = next((line.strip() for line in t.splitlines() if line.strip()), "")
    end = _SENTENCE_END.search(t)
    if end:
        t = t[:end.end()]
    words = t.split()
    if len(words) > max_words:
        t = " ".join(words[:max_words]).rstrip(",;:-")
    return t.strip().strip(_QUOTES).strip()


def fusion_inputs(row: dict[str, Any]) -> tuple[list[str], list[str], str]:
    """Up to 3 vision captions, 3 audio captions and the subtitle of a row (missing → empty)."""
    def caps(value: Any) -> list[str]:
        if value is None or isinstance(value, float | str):  # absent, NaN
            return [value.strip()] if isinstance(value, str) and value.strip() else []
        return [str(c).strip() for c in value if str(c).strip()][:MAX_INPUTS]

    subtitle = row.get("subtitle")
    subtitle = subtitle.strip() if isinstance(subtitle, str) else ""
    return caps(row.get("vision_cap")), caps(row.get("audio_cap")), subtitle


def render_prompt(tokenizer: Any, template: PromptTemplate, vision: list[str], audio: list[str],
                  subtitle: str) -> str:
    """The full prompt: the tokenizer's chat template (when it has one) + the response prefix, else the
    template's plain layout."""
    if getattr(tokenizer, "chat_template", None):
        messages = template.messages(vision, audio, subtitle)
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + template.response_prefix
    return template.plain_text(vision, audio, subtitle)


class OmniCaptionFuser(ModelStage):
    """Fuses ``vision_cap``, ``audio_cap`` and ``subtitle`` into one omni-caption ``vast_cap`` with an LLM."""

    name: ClassVar[str] = "fusion"
    Config: ClassVar[type] = FusionConfig
    fields: ClassVar[tuple[str, ...]] = ("vast_cap",)
    empty: ClassVar[dict[str, Any]] = {"vast_cap": ""}
    needs: ClassVar[tuple[str, ...]] = ("captions",)
    inputs: ClassVar[tuple[str, ...]] = ("vision_cap", "audio_cap", "subtitle")
    model_options: ClassVar[tuple[str, ...]] = ("model",)

    @classmethod
    def model_refs(cls, config: FusionConfig) -> dict[str, str]:
        """The LM the backend loads on this machine (``transformers``, ``vllm``)."""
        return {"model": config.model} if config.backend in ("transformers", "vllm") else {}

    @classmethod
    def preflight(cls, config: FusionConfig) -> None:
        """The model on this machine, and for ``vllm`` the package: both refused in the driver, before
        an actor fails on them."""
        super().preflight(config)
        if config.backend == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ConfigError("stages.fusion.options.backend: vllm is not installed (pip install vllm, on a "
                              "CUDA machine); use backend transformers, or openai-server with a serving "
                              "engine")

    def __init__(self, config: FusionConfig | None = None):
        super().__init__(config)
        c = self.config
        self.template = load_prompt(c.prompt)
        self.backend = load_llm(c.backend, c.model, c.sampling(), c, c.server)

    def prompts(self, rows: list[dict[str, Any]]) -> list[str] | list[list[dict[str, str]]]:
        """Each row's prompt: the full text (chat template applied, response prefix appended), or the chat
        messages when the backend is a server's chat API (the server applies the model's template)."""
        if self.backend.chat:
            return [self.template.messages(*fusion_inputs(r)) for r in rows]
        return [render_prompt(self.backend.tokenizer, self.template, *fusion_inputs(r)) for r in rows]

    def annotate(self, rows: list[dict[str, Any]]) -> list[dict[str, Any] | SampleError]:
        outputs = self.backend.generate(self.prompts(rows))
        caps = [o if isinstance(o, SampleError) else clean_caption(o, self.template.response_prefix,
                                                                    self.config.max_words)
                for o in outputs]
        return [cap if isinstance(cap, SampleError) else
                {"vast_cap": cap,
                 EMPTY_REASON: "" if cap else f"the LLM's answer {o[:80]!r} cleans to nothing"}
                for cap, o in zip(caps, outputs, strict=True)]

    def provenance(self) -> dict[str, Any]:
        c, t = self.config, self.template
        return {"model": c.model, **self.backend.provenance(), "decoding": c.sampling().record(),
                "max_words": c.max_words,
                "prompt": {"name": t.name, "version": t.version, "sha256": t.sha256}}
