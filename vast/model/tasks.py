"""Task strings in the upstream grammar and the VAST-27M modality grouping.

``ret%tvas%tv_cap%tvas`` reads: tasks joined by ``_``; each task is ``kind%group%group...``; a
group names the text ``t`` and the modalities it is paired with (``v`` vision, ``a`` audio,
``s`` subtitle). Kinds: ``ret`` (contrastive OM-VCC + matching OM-VCM), ``cap`` (OM-VCG), ``qa``.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("ret", "cap", "qa")
CONDITIONS = ("v", "a", "s", "va", "vs", "vas")  # modality sets with a contrastive head

# On VAST-27M each group is paired with its own text: the caption that describes what it sees.
CAPTION_FOR_GROUP = {
    "tv": "vision_caption",
    "ta": "audio_caption",
    "tva": "omni_caption",
    "tvs": "omni_caption",
    "tvas": "omni_caption",
}


@dataclass(frozen=True)
class Task:
    """One task of a task string: its kind and the modality groups it runs on."""

    kind: str
    groups: tuple[str, ...]

    def __str__(self) -> str:
        return "%".join((self.kind, *self.groups))


def condition_of(group: str) -> str:
    """The non-text modalities of a group, in canonical v-a-s order: ``tsav`` -> ``vas``."""
    if not group.startswith("t"):
        raise ValueError(f"modality group {group!r} must start with the text 't'")
    mods = "".join(m for m in "vas" if m in group[1:])
    if len(mods) != len(group) - 1 or mods not in CONDITIONS:
        raise ValueError(f"modality group {group!r}: condition must be one of {CONDITIONS}")
    return mods


def parse_task(task: str) -> list[Task]:
    """Parse ``ret%tvas%tv_cap%tvas`` into ``[Task('ret', ('tvas', 'tv')), Task('cap', ('tvas',))]``."""
    tasks = []
    for part in task.split("_"):
        kind, *groups = part.split("%")
        if kind not in KINDS:
            raise ValueError(f"unknown task kind {kind!r} in {task!r}; known: {KINDS}")
        if not groups:
            raise ValueError(f"task {part!r} names no modality group")
        for g in groups:
            condition_of(g)
        tasks.append(Task(kind, tuple(groups)))
    return tasks


def modalities_needed(tasks: list[Task]) -> set[str]:
    """The encoders a list of tasks needs: a subset of {'v', 'a', 's'}."""
    return {m for t in tasks for g in t.groups for m in condition_of(g)}


def text_key(group: str, batch_keys: set[str] | frozenset[str]) -> str:
    """Batch key of the text paired with ``group``: its VAST-27M caption if present, else ``text``."""
    key = CAPTION_FOR_GROUP.get("t" + condition_of(group))
    if key is not None and key in batch_keys:
        return key
    if "text" in batch_keys:
        return "text"
    raise KeyError(f"batch has neither {key!r} nor 'text' for modality group {group!r}")
