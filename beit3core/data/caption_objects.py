"""Which objects a caption of the synthetic world names, and the share of generated captions that name them all.

The synthetic references are templated ("a small red circle above a large blue square"), so CIDEr alone
flatters a model that calls everything a circle. Here an object is a colour word directly followed by a shape
word (the only way `beit3 data synth` names one); a generated caption counts as right when it names exactly
the objects its references name, and no other colour or shape: a swapped colour, a wrong shape, a missing
object or a stray shape word all make it wrong. Sizes and relations are not judged.
"""

from __future__ import annotations

import re

from beit3core.data.synth import COLOURS, GENERATOR, SHAPES

_WORD = re.compile(r"[a-z]+")


def named_objects(caption: str) -> tuple[frozenset[tuple[str, str]], bool]:
    """({(colour, shape)} the caption names, whether every colour and shape word in it belongs to one)."""
    words = _WORD.findall(caption.lower())
    objects, paired = set(), set()
    for i in range(len(words) - 1):
        if words[i] in COLOURS and words[i + 1] in SHAPES:
            objects.add((words[i], words[i + 1]))
            paired.update((i, i + 1))
    stray = any(w in COLOURS or w in SHAPES for i, w in enumerate(words) if i not in paired)
    return frozenset(objects), not stray


def names_all_objects(generated: str, references: list[str]) -> bool:
    """True when `generated` names exactly the (colour, shape) objects of the references and nothing else."""
    truth = frozenset().union(*(named_objects(r)[0] for r in references)) if references else frozenset()
    objects, clean = named_objects(generated)
    return bool(truth) and clean and objects == truth


def objects_named_percent(generated: list[str], references: list[list[str]]) -> float:
    """Percent of generated captions that name every object of their references' scene correctly."""
    if len(generated) != len(references):
        raise ValueError(f"{len(generated)} generated captions for {len(references)} reference sets")
    if not generated:
        return 0.0
    return 100.0 * sum(names_all_objects(g, r) for g, r in zip(generated, references)) / len(generated)


def is_synthetic(header: dict) -> bool:
    """Whether a dataset.json header describes data `beit3 data synth` made (the vocabulary above applies)."""
    return (header.get("source") or {}).get("generator") == GENERATOR
