"""`beit3 data synth`: a seeded, byte-deterministic collection of coloured-shape data a tiny model can learn.

Every image is one or two coloured shapes on a light background and every caption names exactly what is
drawn ("a small red circle above a large blue square"), so text and image determine each other. The
vocabulary is small and compositional (6 colours x 4 shapes x 2 sizes x positions/relations). Written:

    OUT/pairs                  image-caption pairs (pretraining)
    OUT/images                 images with a shape label (pretraining, visual tokenizer)
    OUT/text                   sentences about the same world (pretraining, text tokenizer)
    OUT/tasks/classification   label = shape
    OUT/tasks/vqa              colour / shape / count / yes-no / position questions, 10 noisy answers each
    OUT/tasks/nlvr2            two images + a statement, true or false
    OUT/tasks/retrieval        3 captions per image, images disjoint across splits
    OUT/tasks/captioning       same layout as retrieval, other images

Same arguments -> same files, same bytes: one random.Random per dataset seeded from (seed, name), JSON with
sorted keys, JPEG at fixed quality, no timestamps.
"""

from __future__ import annotations

import argparse
import io as _pyio
import json
import logging
import math
import os
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from beit3core.data import formats
from beit3core.data.staging import staged_dir
from beit3core.errors import UserError
from beit3core.progress import progress_bar

log = logging.getLogger(__name__)

COLOURS = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 200),
    "yellow": (235, 200, 20),
    "purple": (148, 70, 189),
    "orange": (250, 127, 14),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "center")
RELATIONS = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}
JPEG_QUALITY = 90
GENERATOR = "beit3 data synth"  # dataset.json source.generator of this module's output
SIDES = {"square": "four sides", "triangle": "three sides", "star": "five points", "circle": "no corners"}

# rows per split at --scale 1.0
SIZES_AT_SCALE_1 = {
    "pairs": {"train": 2850, "val": 150},
    "images": {"train": 1400, "val": 100},
    "text": {"train": 5700, "val": 300},
    "classification": {"train": 1000, "val": 200, "test": 200},
    "vqa": {"train": 340, "val": 70, "test": 70},  # images; 3 questions each
    "nlvr2": {"train": 1000, "val": 200, "test": 200},
    "retrieval": {"train": 334, "val": 67, "test": 67},  # images; 3 captions each
    "captioning": {"train": 334, "val": 67, "test": 67},
}


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    where: str  # one object: a POSITION; two objects: a RELATION of objects[0] to objects[1]


def random_scene(rng: random.Random, n_objects: int | None = None, distinct_colours: bool = False) -> Scene:
    n = n_objects or rng.choice((1, 2))
    if n == 1:
        return Scene((Obj(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(SIZES)),), rng.choice(POSITIONS))
    while True:
        a = Obj(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(SIZES))
        b = Obj(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(SIZES))
        if a.shape != b.shape and (a.colour != b.colour or not distinct_colours):
            return Scene((a, b), rng.choice(list(RELATIONS)))


def _position_phrase(pos: str) -> str:
    return "in the center" if pos == "center" else f"on the {pos}" if pos in ("left", "right") else f"at the {pos}"


def captions(scene: Scene) -> list[str]:
    """Three paraphrases; the first names everything drawn (sizes included)."""
    if len(scene.objects) == 1:
        o, p = scene.objects[0], _position_phrase(scene.where)
        return [f"a {o.size} {o.colour} {o.shape} {p}", f"there is a {o.colour} {o.shape} {p}",
                f"a {o.colour} {o.shape} {p}, it is {o.size}"]
    a, b = scene.objects
    rel, inv = scene.where, RELATIONS[scene.where]
    return [f"a {a.size} {a.colour} {a.shape} {rel} a {b.size} {b.colour} {b.shape}",
            f"a {b.colour} {b.shape} {inv} a {a.colour} {a.shape}",
            f"there is a {a.colour} {a.shape} {rel} a {b.colour} {b.shape}"]


# ---------------------------------------------------------------- drawing
def _layout(scene: Scene, rng: random.Random) -> list[tuple[Obj, float, float, float]]:
    """(object, centre x, centre y, radius) in units of the image side."""
    jitter = lambda: rng.uniform(-0.04, 0.04)  # noqa: E731
    if len(scene.objects) == 1:
        o = scene.objects[0]
        x, y = {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73),
                "center": (0.5, 0.5)}[scene.where]
        r = 0.12 if o.size == "small" else 0.2
        return [(o, x + jitter(), y + jitter(), r)]
    a, b = scene.objects
    r = {"small": 0.1, "large": 0.16}
    near, far = 0.27, 0.73
    if scene.where in ("above", "below"):
        ya, yb = (near, far) if scene.where == "above" else (far, near)
        return [(a, rng.uniform(0.3, 0.7), ya + jitter(), r[a.size]), (b, rng.uniform(0.3, 0.7), yb + jitter(), r[b.size])]
    xa, xb = (near, far) if scene.where == "left of" else (far, near)
    return [(a, xa + jitter(), rng.uniform(0.3, 0.7), r[a.size]), (b, xb + jitter(), rng.uniform(0.3, 0.7), r[b.size])]


def _polygon(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        s = r * 0.85
        return [(x - s, y - s), (x + s, y - s), (x + s, y + s), (x - s, y + s)]
    if shape == "triangle":
        return [(x + r * math.cos(a), y + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    pts = []  # star: 5 outer + 5 inner points
    for i in range(10):
        rad = r if i % 2 == 0 else r * 0.45
        a = -math.pi / 2 + i * math.pi / 5
        pts.append((x + rad * math.cos(a), y + rad * math.sin(a)))
    return pts


def render(scene: Scene, rng: random.Random, size: int) -> bytes:
    """JPEG bytes of a scene (drawn at 4x and reduced, for smooth edges)."""
    big = size * 4
    bg = tuple(230 + rng.randint(-10, 10) for _ in range(3))
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    for obj, x, y, r in _layout(scene, rng):
        colour = COLOURS[obj.colour]
        cx, cy, rr = x * big, y * big, r * big
        if obj.shape == "circle":
            draw.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), fill=colour)
        else:
            draw.polygon(_polygon(obj.shape, cx, cy, rr), fill=colour)
    img = img.resize((size, size), Image.Resampling.BOX)
    buf = _pyio.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=False, progressive=False, subsampling=0)
    return buf.getvalue()


# ---------------------------------------------------------------- datasets
class _Writer:
    """Writes one raw dataset into a local staging folder."""

    def __init__(self, root: str, rel: str, image_size: int):
        self.dir = os.path.join(root, rel)
        os.makedirs(os.path.join(self.dir, "images"), exist_ok=True)
        self.image_size = image_size
        self.n_images = 0

    def image(self, scene: Scene, rng: random.Random, split: str) -> tuple[str, str]:
        self.n_images += 1
        image_id = f"{split}-{self.n_images:06d}"
        rel = f"images/{image_id}.jpg"
        with open(os.path.join(self.dir, rel), "wb") as f:
            f.write(render(scene, rng, self.image_size))
        return rel, image_id

    def finish(self, header: dict, rows: dict[str, list[dict]]) -> None:
        for split, split_rows in rows.items():
            with open(os.path.join(self.dir, formats.split_file(split)), "w", encoding="utf-8") as f:
                for row in split_rows:
                    f.write(json.dumps(row, sort_keys=True, ensure_ascii=True) + "\n")
        with open(os.path.join(self.dir, formats.HEADER), "w", encoding="utf-8") as f:
            f.write(json.dumps(header, sort_keys=True, indent=2) + "\n")


def _n(count: int, scale: float) -> int:
    return max(4, round(count * scale))


def _unique_scenes(rng: random.Random, count: int, **kwargs) -> list[Scene]:
    seen, out = set(), []
    for _ in range(count * 50):
        s = random_scene(rng, **kwargs)
        if s not in seen:
            seen.add(s)
            out.append(s)
            if len(out) == count:
                return out
    raise UserError(f"--scale too large: only {len(out)} distinct scenes available, {count} requested")


def _pairs(w: _Writer, rng, counts, source) -> None:
    rows = {}
    for split, n in counts.items():
        rows[split] = []
        for i in range(n):
            scene = random_scene(rng)
            img, image_id = w.image(scene, rng, split)
            rows[split].append({"id": f"pair-{image_id}", "image": img, "caption": captions(scene)[0]})
    w.finish(formats.make_header("pairs", "synth-pairs", list(counts), source), rows)


def _labelled_images(w: _Writer, rng, counts, source, kind: str) -> None:
    """One shape per image, labelled with it: the `images` stream and the classification task alike."""
    rows = {}
    for split, n in counts.items():
        rows[split] = []
        for _ in range(n):
            scene = random_scene(rng, n_objects=1)
            img, image_id = w.image(scene, rng, split)
            rows[split].append({"id": image_id, "image": img, "label": scene.objects[0].shape})
    w.finish(formats.make_header(kind, f"synth-{kind}", list(counts), source, labels=sorted(SHAPES)), rows)


def sentence(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.6:
        return rng.choice(captions(random_scene(rng))) + "."
    shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
    facts = [f"a {shape} has {SIDES[shape]}.", f"{colour} is a colour.", f"a {shape} is a shape.",
             f"the {shape} is {colour}.", f"the {colour} {shape} is {rng.choice(SIZES)}.",
             f"a {rng.choice(SIZES)} {shape} can be {colour}.",
             f"there are two objects: a {colour} {shape} and a {rng.choice(list(COLOURS))} {rng.choice(SHAPES)}."]
    return rng.choice(facts)


def _text(root: str, rng, counts, source) -> None:
    w = _Writer(root, "text", 0)
    os.rmdir(os.path.join(w.dir, "images"))
    rows = {split: [{"id": f"text-{split}-{i:06d}", "text": sentence(rng)} for i in range(n)]
            for split, n in counts.items()}
    w.finish(formats.make_header("text", "synth-text", list(counts), source), rows)


ANSWER_TYPES = {
    "colour": sorted(COLOURS),
    "shape": sorted(SHAPES),
    "count": ["1", "2"],
    "yesno": ["no", "yes"],
    "position": sorted(POSITIONS),
}


def vqa_questions(scene: Scene, rng: random.Random) -> list[tuple[str, str, str]]:
    """(question, answer, answer type) triples about a scene (shapes, and colours, distinct within it)."""
    objs = scene.objects
    o = rng.choice(objs)
    qs = [(f"what colour is the {o.shape}?", o.colour, "colour"),
          (f"what shape is the {o.colour} object?", o.shape, "shape"),
          ("how many objects are there?", str(len(objs)), "count")]
    if rng.random() < 0.5:
        q = rng.choice(objs)
        qs.append((f"is there a {q.colour} {q.shape}?", "yes", "yesno"))
    else:
        while True:
            c, s = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            if not any(x.colour == c and x.shape == s for x in objs):
                break
        qs.append((f"is there a {c} {s}?", "no", "yesno"))
    if len(objs) == 1:
        qs.append((f"where is the {o.shape}?", scene.where, "position"))
    else:
        a, b = objs
        rel = rng.choice(list(RELATIONS))
        qs.append((f"is the {a.shape} {rel} the {b.shape}?", "yes" if rel == scene.where else "no", "yesno"))
    rng.shuffle(qs)
    return qs[:3]


def annotator_answers(answer: str, atype: str, rng: random.Random, n: int = 10, noise: float = 0.1) -> list[str]:
    return [answer if rng.random() >= noise else rng.choice(ANSWER_TYPES[atype]) for _ in range(n)]


def _vqa(w: _Writer, rng, counts, source) -> None:
    rows = {}
    for split, n in counts.items():
        rows[split] = []
        for _ in range(n):
            scene = random_scene(rng, distinct_colours=True)
            img, image_id = w.image(scene, rng, split)
            for k, (q, a, t) in enumerate(vqa_questions(scene, rng)):
                rows[split].append({"id": f"q-{image_id}-{k}", "image": img, "image_id": image_id, "question": q,
                                    "answers": annotator_answers(a, t, rng), "answer_type": t})
    vocab = sorted({a for v in ANSWER_TYPES.values() for a in v})
    w.finish(formats.make_header("vqa", "synth-vqa", list(counts), source, answers=vocab), rows)


def nlvr2_statement(left: Scene, right: Scene, rng: random.Random) -> tuple[str, bool]:
    lo, ro = left.objects, right.objects
    c, s = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    o = rng.choice(lo + ro)
    options = [
        (f"the left image contains a {o.colour} {o.shape}", any(x == o or (x.colour, x.shape) == (o.colour, o.shape) for x in lo)),
        (f"the right image contains a {c} {s}", any((x.colour, x.shape) == (c, s) for x in ro)),
        (f"both images contain a {s}", any(x.shape == s for x in lo) and any(x.shape == s for x in ro)),
        (f"both images contain a {c} object", any(x.colour == c for x in lo) and any(x.colour == c for x in ro)),
        (f"there are {rng.choice((2, 3, 4))} objects in total", None),
        ("the right image has more objects than the left image", len(ro) > len(lo)),
        (f"exactly one image contains a {o.shape}", any(x.shape == o.shape for x in lo) != any(x.shape == o.shape for x in ro)),
    ]
    text, truth = rng.choice(options)
    if truth is None:
        truth = int(text.split()[2]) == len(lo) + len(ro)
    return text, truth


def _nlvr2(w: _Writer, rng, counts, source) -> None:
    rows = {}
    for split, n in counts.items():
        pool = []
        for _ in range(max(2, n)):
            scene = random_scene(rng)
            pool.append((scene, *w.image(scene, rng, split)))
        rows[split] = []
        for i in range(n):
            want = i % 2 == 0  # balanced labels
            (ls, limg, _), (rs, rimg, _) = rng.sample(pool, 2)
            for _ in range(200):
                text, truth = nlvr2_statement(ls, rs, rng)
                if truth == want:
                    break
            rows[split].append({"id": f"nlvr2-{split}-{i:06d}", "image_left": limg, "image_right": rimg,
                                "sentence": text, "label": truth})
    w.finish(formats.make_header("nlvr2", "synth-nlvr2", list(counts), source), rows)


def _caption_task(kind: str, w: _Writer, rng, counts, source) -> None:
    scenes = iter(_unique_scenes(rng, sum(counts.values())))
    rows = {}
    for split, n in counts.items():
        rows[split] = []
        for _ in range(n):
            scene = next(scenes)
            img, image_id = w.image(scene, rng, split)
            for k, cap in enumerate(captions(scene)):
                rows[split].append({"id": f"cap-{image_id}-{k}", "image": img, "image_id": image_id, "caption": cap})
    w.finish(formats.make_header(kind, f"synth-{kind}", list(counts), source), rows)


def synthesize(out: str, *, seed: int = 0, image_size: int = 64, scale: float = 1.0) -> dict[str, int]:
    """Write the synthetic collection to `out` (local or s3://); returns rows per dataset."""
    if image_size < 16 or image_size > 1024:
        raise UserError(f"--image-size must be between 16 and 1024, got {image_size}")
    if not 0 < scale <= 20:
        raise UserError(f"--scale must be in (0, 20], got {scale}")
    source = {"generator": GENERATOR, "seed": seed, "image_size": image_size, "scale": scale}
    counts = {name: {split: _n(n, scale) for split, n in splits.items()} for name, splits in SIZES_AT_SCALE_1.items()}
    layout = {"pairs": "pairs", "images": "images", "text": "text",
              **{t: f"tasks/{t}" for t in ("classification", "vqa", "nlvr2", "retrieval", "captioning")}}
    makers = {"pairs": _pairs, "images": lambda *a: _labelled_images(*a, "images"),
              "classification": lambda *a: _labelled_images(*a, "classification"), "vqa": _vqa, "nlvr2": _nlvr2,
              "retrieval": lambda *a: _caption_task("retrieval", *a),
              "captioning": lambda *a: _caption_task("captioning", *a)}
    summary = {}
    with staged_dir(out, "data synth") as root:
        for name in progress_bar(list(layout), desc="synth", unit="dataset"):
            rng = random.Random(f"beit3-synth/{seed}/{name}")
            if name == "text":
                _text(root, rng, counts[name], source)
            else:
                makers[name](_Writer(root, layout[name], image_size), rng, counts[name], source)
            with open(os.path.join(root, layout[name], formats.HEADER), encoding="utf-8") as f:
                header = json.load(f)
            summary[layout[name]] = sum(
                sum(1 for _ in open(os.path.join(root, layout[name], formats.split_file(s)), encoding="utf-8"))
                for s in header["splits"])
    log.info("synthesized %s", summary)
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output collection folder or s3:// URI")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every split size")


def run(args: argparse.Namespace) -> int:
    summary = synthesize(args.out, seed=args.seed, image_size=args.image_size, scale=args.scale)
    for name, n in summary.items():
        print(f"{name}: {n} rows")
    print(f"wrote {args.out}")
    return 0
