"""Procedural stimuli of the demo world: simple scenes with 1-3 coloured shapes, and their captions.

A scene is a background (a horizon scene: sky gradient above textured ground of some colour; or a wall:
plain, striped, checkered, brick or dotted) with 1-3 objects. Each object has a category (a distinct
silhouette), a colour, a size (small / medium / large) and a position on a 3 x 3 grid ("top left" ...
"bottom right"). Objects are drawn largest first, so small objects stay visible; each object's *visible*
area after occlusion is recorded (the simulated higher visual areas respond to what is visible).

Rendering: silhouettes are drawn with PIL at ``supersample`` times the image size and box-filtered down
(anti-aliasing); the result is the object's alpha mask ``a_k`` (H, W) in [0, 1]. Backgrounds are computed
with numpy at the final size. Compositing, object by object (k = 1..K, in drawing order)::

    img <- (1 - a_k) * img + a_k * rgb_k
    visible_k = sum_xy a_k * prod_{j > k} (1 - a_j)  /  (H * W)     (fraction of the image)

Everything is a pure function of a :class:`SceneSpec` (which carries its own texture seed), so scenes
render identically everywhere. Captions read, e.g., ``"a large red star at the top left above green
ground"`` or ``"a small blue circle at the center and a large yellow cross at the bottom right on a
striped wall"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ...errors import DataFormatError

# ------------------------------------------------------------------------------------------ vocabularies
CATEGORIES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross", "heart", "crescent", "diamond", "ring", "arrow",
)
"""Object categories (distinct silhouettes)."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "orange": (245, 135, 25),
    "yellow": (240, 215, 35),
    "green": (40, 165, 60),
    "blue": (35, 80, 225),
    "purple": (135, 55, 185),
    "pink": (245, 125, 190),
    "white": (245, 245, 245),
    "black": (22, 22, 22),
}
"""Object colours (sRGB, 0-255)."""
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

SIZES: dict[str, float] = {"small": 0.085, "medium": 0.13, "large": 0.19}
"""Object size words -> radius as a fraction of the image side (before a +-8 % jitter)."""
SIZE_NAMES: tuple[str, ...] = tuple(SIZES)

POSITIONS: tuple[str, ...] = (
    "top left", "top center", "top right",
    "center left", "center", "center right",
    "bottom left", "bottom center", "bottom right",
)
"""3 x 3 grid cells, row-major; cell ``p`` has row ``p // 3`` and column ``p % 3``."""

GROUNDS: dict[str, tuple[int, int, int]] = {
    "green": (70, 140, 55),
    "brown": (120, 82, 50),
    "sandy": (214, 190, 130),
    "grey": (125, 125, 120),
    "snowy": (236, 240, 246),
}
"""Ground colours of horizon scenes."""

WALLS: tuple[str, ...] = ("plain", "striped", "checkered", "brick", "dotted")
"""Wall textures."""

BACKGROUNDS: tuple[str, ...] = tuple(f"{g} ground" for g in GROUNDS) + tuple(f"{w} wall" for w in WALLS)
"""Background classes: 5 horizon scenes (by ground colour) then 5 walls (by texture)."""

SKIES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "blue": ((60, 120, 215), (175, 210, 245)),
    "overcast": ((150, 155, 165), (210, 212, 215)),
    "sunset": ((55, 55, 130), (250, 165, 90)),
}
"""Sky gradients (top colour, horizon colour)."""
SKY_NAMES: tuple[str, ...] = tuple(SKIES)

WALL_COLOURS: tuple[tuple[int, int, int], ...] = (
    (225, 210, 180), (170, 170, 175), (160, 190, 215), (175, 205, 165), (195, 110, 85), (185, 165, 205), (235, 235, 230),
)
"""Wall base colours (muted palette)."""

# Hand-made shape descriptors used by the simulated object-selective cortex to define a similarity
# between categories: [roundness, number of points/corners (scaled), has a hole, concavity, elongation,
# curvature].
SHAPE_DESCRIPTORS: np.ndarray = np.array(
    [
        [1.0, 0.0, 0.0, 0.0, 0.0, 1.0],  # circle
        [0.0, 0.4, 0.0, 0.0, 0.0, 0.0],  # square
        [0.0, 0.3, 0.0, 0.0, 0.2, 0.0],  # triangle
        [0.0, 1.0, 0.0, 1.0, 0.0, 0.0],  # star
        [0.0, 1.0, 0.0, 0.8, 0.0, 0.0],  # cross
        [0.6, 0.1, 0.0, 0.4, 0.1, 0.8],  # heart
        [0.5, 0.2, 0.0, 1.0, 0.6, 1.0],  # crescent
        [0.0, 0.4, 0.0, 0.0, 0.5, 0.0],  # diamond
        [1.0, 0.0, 1.0, 0.0, 0.0, 1.0],  # ring
        [0.0, 0.7, 0.0, 0.6, 0.8, 0.0],  # arrow
    ],
    dtype=np.float64,
)


# ------------------------------------------------------------------------------------------ scene specs
@dataclass(frozen=True)
class ObjectSpec:
    """One object. Coordinates are fractions of the image side (x right, y down)."""

    category: int
    colour: int
    size: int
    position: int
    cx: float
    cy: float
    radius: float
    angle: float  # rotation in degrees
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class SceneSpec:
    """A full scene description; rendering is a pure function of it."""

    objects: tuple[ObjectSpec, ...]
    background: int  # index into BACKGROUNDS
    sky: int  # index into SKY_NAMES (horizon scenes; -1 for walls)
    horizon: float  # horizon height as a fraction of the image (horizon scenes)
    wall_rgb: tuple[int, int, int]
    texture_scale: float  # stripe period / checker size / brick height, fraction of the image side
    texture_angle: float  # stripe orientation in degrees
    texture_seed: int

    @property
    def is_horizon(self) -> bool:
        return self.background < len(GROUNDS)


def _colour_distance(a: Sequence[int], b: Sequence[int]) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))


def _background_main_rgb(background: int, wall_rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    if background < len(GROUNDS):
        return GROUNDS[list(GROUNDS)[background]]
    return wall_rgb


def sample_scenes(
    rng: np.random.Generator,
    n: int,
    *,
    max_objects: int = 3,
    object_count_probs: Sequence[float] | None = None,
) -> list[SceneSpec]:
    """Draw ``n`` random scenes.

    Args:
        rng: the random generator (determinism: same generator state -> same scenes).
        n: number of scenes.
        max_objects: 1..9 objects per scene at most.
        object_count_probs: probabilities of 1..max_objects objects (default: 0.5, 0.3, 0.2 for 3).

    Objects of one scene occupy distinct grid cells; colours too close to the background are redrawn.
    """
    if not 1 <= max_objects <= 9:
        raise ValueError(f"max_objects must be in 1..9, got {max_objects}")
    if object_count_probs is None:
        base = np.array([0.5, 0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])[:max_objects]
        probs = base / base.sum()
    else:
        probs = np.asarray(object_count_probs, np.float64)
        if probs.shape != (max_objects,) or (probs < 0).any() or probs.sum() <= 0:
            raise ValueError(f"object_count_probs must be {max_objects} non-negative numbers, got {object_count_probs}")
        probs = probs / probs.sum()
    scenes: list[SceneSpec] = []
    colour_values = list(COLOURS.values())
    for _ in range(n):
        background = int(rng.integers(len(BACKGROUNDS)))
        sky = int(rng.integers(len(SKIES))) if background < len(GROUNDS) else -1
        horizon = float(rng.uniform(0.42, 0.68))
        wall_rgb = WALL_COLOURS[int(rng.integers(len(WALL_COLOURS)))]
        texture_scale = float(rng.uniform(0.09, 0.2))
        texture_angle = float(rng.choice([0.0, 45.0, 90.0, 135.0]))
        texture_seed = int(rng.integers(2**31 - 1))
        main_rgb = _background_main_rgb(background, wall_rgb)
        k = int(rng.choice(max_objects, p=probs)) + 1
        cells = rng.choice(len(POSITIONS), size=k, replace=False)
        sizes = rng.integers(len(SIZES), size=k)
        order = np.argsort(-sizes, kind="stable")  # largest first -> small ones on top
        objects = []
        for j in order:
            cell = int(cells[j])
            size = int(sizes[j])
            colour = int(rng.integers(len(COLOURS)))
            for _retry in range(10):
                if _colour_distance(colour_values[colour], main_rgb) > 90:
                    break
                colour = int(rng.integers(len(COLOURS)))
            jitter = rng.uniform(-0.04, 0.04, size=2)
            base_rgb = np.asarray(colour_values[colour], np.float64)
            rgb = tuple(int(v) for v in np.clip(base_rgb * rng.uniform(0.9, 1.08) + rng.normal(0, 6, 3), 0, 255).round())
            objects.append(
                ObjectSpec(
                    category=int(rng.integers(len(CATEGORIES))),
                    colour=colour,
                    size=size,
                    position=cell,
                    cx=float((cell % 3 * 2 + 1) / 6 + jitter[0]),
                    cy=float((cell // 3 * 2 + 1) / 6 + jitter[1]),
                    radius=float(SIZES[SIZE_NAMES[size]] * rng.uniform(0.92, 1.08)),
                    angle=float(rng.uniform(-15, 15)),
                    rgb=rgb,  # type: ignore[arg-type]
                )
            )
        scenes.append(
            SceneSpec(
                objects=tuple(objects),
                background=background,
                sky=sky,
                horizon=horizon,
                wall_rgb=wall_rgb,
                texture_scale=texture_scale,
                texture_angle=texture_angle,
                texture_seed=texture_seed,
            )
        )
    return scenes


# ------------------------------------------------------------------------------------------ captions
def _object_phrase(o: ObjectSpec) -> str:
    return f"a {SIZE_NAMES[o.size]} {COLOUR_NAMES[o.colour]} {CATEGORIES[o.category]} at the {POSITIONS[o.position]}"


def _background_phrase(background: int) -> str:
    name = BACKGROUNDS[background]
    if background < len(GROUNDS):
        return f"above {name}"
    return f"on a {name}"


def caption_from_labels(objects: Iterable[tuple[int, int, int, int]], background: int) -> str:
    """Caption from ``(category, colour, size, position)`` tuples (drawing order) and a background index.

    >>> caption_from_labels([(3, 0, 2, 0)], 0)
    'a large red star at the top left above green ground'
    """
    phrases = [
        f"a {SIZE_NAMES[s]} {COLOUR_NAMES[c]} {CATEGORIES[k]} at the {POSITIONS[p]}" for k, c, s, p in objects
    ]
    if not phrases:
        raise ValueError("a scene has at least one object")
    if len(phrases) == 1:
        body = phrases[0]
    else:
        body = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{body} {_background_phrase(background)}"


def caption(scene: SceneSpec) -> str:
    """The scene's caption, objects in drawing order (largest first)."""
    return caption_from_labels(((o.category, o.colour, o.size, o.position) for o in scene.objects), scene.background)


# ------------------------------------------------------------------------------------------ rendering
def _unit_polygon(category: int) -> list[np.ndarray]:
    """Outline(s) of a category in unit coordinates (radius ~1, y down). The first polygon is filled,
    later ones are cut out (holes)."""
    name = CATEGORIES[category]
    t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    circle = np.stack([np.cos(t), np.sin(t)], 1)
    if name == "circle":
        return [circle * 0.9]
    if name == "ring":
        return [circle, circle * 0.55]
    if name == "crescent":
        return [circle * 0.95, circle * 0.82 + np.array([0.42, -0.18])]
    if name == "square":
        return [np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]])]
    if name == "diamond":
        return [np.array([[0.0, -1.0], [0.62, 0.0], [0.0, 1.0], [-0.62, 0.0]])]
    if name == "triangle":
        a = np.deg2rad(np.array([-90.0, 30.0, 150.0]))
        return [np.stack([np.cos(a), np.sin(a)], 1) * 1.05 + np.array([0.0, 0.12])]
    if name == "star":
        a = np.deg2rad(np.arange(10) * 36.0 - 90.0)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return [np.stack([np.cos(a) * r, np.sin(a) * r], 1) + np.array([0.0, 0.08])]
    if name == "cross":
        w = 0.32
        return [np.array([
            [-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1], [-w, w], [-1, w], [-1, -w], [-w, -w],
        ]) * 0.92]
    if name == "heart":
        s = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        x = 16 * np.sin(s) ** 3
        y = -(13 * np.cos(s) - 5 * np.cos(2 * s) - 2 * np.cos(3 * s) - np.cos(4 * s))
        return [np.stack([x, y + 2.5], 1) / 16.5]
    if name == "arrow":
        return [np.array([[-1, -0.24], [0.1, -0.24], [0.1, -0.65], [1, 0], [0.1, 0.65], [0.1, 0.24], [-1, 0.24]])]
    raise ValueError(f"unknown category {category}")


def object_mask(obj: ObjectSpec, size: int, supersample: int = 4) -> np.ndarray:
    """Anti-aliased alpha mask (size, size) float32 in [0, 1] of one object."""
    big = size * supersample
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    a = math.radians(obj.angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    centre = np.array([obj.cx, obj.cy]) * big
    for i, poly in enumerate(_unit_polygon(obj.category)):
        pts = poly @ rot.T * (obj.radius * big) + centre
        draw.polygon([(float(x), float(y)) for x, y in pts], fill=255 if i == 0 else 0)
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise: a (cells x cells) random grid bilinearly upsampled to (size, size), zero mean unit-ish SD."""
    grid = rng.standard_normal((cells + 1, cells + 1))
    coords = np.linspace(0, cells, size)
    i0 = np.clip(np.floor(coords).astype(int), 0, cells - 1)
    f = coords - i0
    rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]  # (size, cells+1)
    return rows[:, i0] * (1 - f)[None] + rows[:, i0 + 1] * f[None]


def render_background(scene: SceneSpec, size: int) -> np.ndarray:
    """Background image (size, size, 3) float32 in [0, 1]."""
    rng = np.random.default_rng(scene.texture_seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    yy /= size
    xx /= size
    if scene.is_horizon:
        top, low = (np.asarray(c, np.float64) / 255 for c in SKIES[SKY_NAMES[scene.sky]])
        h = scene.horizon
        ts = np.clip(yy / h, 0, 1)[..., None]
        sky = top * (1 - ts) + low * ts
        ground_rgb = np.asarray(GROUNDS[list(GROUNDS)[scene.background]], np.float64) / 255
        depth = np.clip((yy - h) / max(1e-6, 1 - h), 0, 1)  # 0 at the horizon, 1 at the bottom
        texture = 0.07 * _smooth_noise(rng, size, 6) + 0.05 * _smooth_noise(rng, size, 18) + 0.03 * rng.standard_normal((size, size))
        furrows = 0.04 * np.sin(2 * np.pi * (depth**0.6) * rng.uniform(5, 10) + rng.uniform(0, 2 * np.pi))
        shade = 1.08 - 0.22 * depth + texture + furrows
        ground = ground_rgb * shade[..., None]
        # soft horizon line (anti-aliased)
        alpha = np.clip((yy - h) * size + 0.5, 0, 1)[..., None]
        img = sky * (1 - alpha) + ground * alpha
    else:
        base = np.asarray(scene.wall_rgb, np.float64) / 255
        other = np.clip(base * 0.72, 0, 1)
        wall = WALLS[scene.background - len(GROUNDS)]
        period = scene.texture_scale
        if wall == "plain":
            pattern = np.zeros((size, size))
        elif wall == "striped":
            a = np.deg2rad(scene.texture_angle)
            u = xx * np.cos(a) + yy * np.sin(a)
            pattern = np.clip(3 * np.sin(2 * np.pi * u / period), -1, 1) * 0.5 + 0.5
        elif wall == "checkered":
            s = period * 0.8
            pattern = np.clip(4 * np.sin(np.pi * xx / s) * np.sin(np.pi * yy / s), -1, 1) * 0.5 + 0.5
        elif wall == "brick":
            bh = period * 0.6
            row = np.floor(yy / bh)
            xs = xx / (2 * bh) + 0.5 * (row % 2)
            mortar_y = np.abs((yy / bh) % 1 - 0.5) > 0.38
            mortar_x = np.abs(xs % 1 - 0.5) > 0.45
            pattern = (mortar_y | mortar_x).astype(np.float64)
            other = np.clip(base * 1.25 + 0.1, 0, 1)
        elif wall == "dotted":
            s = period
            d = np.hypot((xx / s) % 1 - 0.5, (yy / s) % 1 - 0.5)
            pattern = np.clip((0.25 - d) * size * s, 0, 1)
        else:  # pragma: no cover - WALLS is closed
            raise ValueError(wall)
        img = base * (1 - pattern[..., None]) + other * pattern[..., None]
        img = img * (1 + 0.035 * _smooth_noise(rng, size, 8)[..., None] + 0.02 * rng.standard_normal((size, size, 1)))
    return np.clip(img, 0, 1).astype(np.float32)


def _render(scene: SceneSpec, size: int, supersample: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render; returns image (size, size, 3) uint8, visible (K,) float32, background mean colour (3,) float32."""
    if size < 16:
        raise ValueError(f"image size must be >= 16 pixels, got {size}")
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    img = render_background(scene, size).astype(np.float64)
    bg = img.copy()
    masks = [object_mask(o, size, supersample).astype(np.float64) for o in scene.objects]
    yy, xx = np.mgrid[0:size, 0:size] / size
    for o, m in zip(scene.objects, masks):
        rgb = np.asarray(o.rgb, np.float64) / 255
        # gentle top-left lighting so objects are not perfectly flat
        light = 1.0 + 0.06 * ((o.cx - xx) + (o.cy - yy)) / max(o.radius, 1e-3)
        img = img * (1 - m[..., None]) + np.clip(rgb * light[..., None], 0, 1) * m[..., None]
    visible = np.zeros(len(masks), np.float32)
    cover = np.ones((size, size))
    for k in range(len(masks) - 1, -1, -1):
        visible[k] = float((masks[k] * cover).sum() / (size * size))
        cover = cover * (1 - masks[k])
    w = cover.sum()
    bg_rgb = (bg * cover[..., None]).sum((0, 1)) / w if w >= 1 else bg.mean((0, 1))
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), visible, bg_rgb.astype(np.float32)


def render_scene(scene: SceneSpec, size: int = 64, supersample: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Render a scene.

    Returns:
        image: (size, size, 3) uint8.
        visible: (K,) float32 visible area of each object (drawing order) as a fraction of the image.
    """
    image, visible, _ = _render(scene, size, supersample)
    return image, visible


# ------------------------------------------------------------------------------------------ labels
@dataclass
class StimulusLabels:
    """Structured labels of N images (objects padded to ``max_objects`` with -1 / 0).

    Attributes:
        n_objects: (N,) int16.
        category, colour, size, position: (N, K) int16, -1 where there is no object; indices into
            CATEGORIES, COLOUR_NAMES, SIZE_NAMES, POSITIONS. Objects are in drawing order.
        center: (N, K, 2) float32 object centre (x, y) as fractions of the image side.
        radius: (N, K) float32 object radius as a fraction of the image side.
        visible: (N, K) float32 visible area after occlusion, fraction of the image.
        background: (N,) int16 index into BACKGROUNDS.
        sky: (N,) int16 index into SKY_NAMES or -1 (walls).
        background_rgb: (N, 3) float32 mean background colour in [0, 1] (the part not covered by objects).
    """

    n_objects: np.ndarray
    category: np.ndarray
    colour: np.ndarray
    size: np.ndarray
    position: np.ndarray
    center: np.ndarray
    radius: np.ndarray
    visible: np.ndarray
    background: np.ndarray
    sky: np.ndarray
    background_rgb: np.ndarray

    ARRAYS: tuple[str, ...] = (
        "n_objects", "category", "colour", "size", "position", "center", "radius", "visible", "background", "sky",
        "background_rgb",
    )

    def __len__(self) -> int:
        return int(self.n_objects.shape[0])

    @property
    def max_objects(self) -> int:
        return int(self.category.shape[1])

    def caption(self, i: int) -> str:
        """Caption of image ``i`` rebuilt from the labels (equals the stored caption)."""
        k = int(self.n_objects[i])
        objs = [(int(self.category[i, j]), int(self.colour[i, j]), int(self.size[i, j]), int(self.position[i, j])) for j in range(k)]
        return caption_from_labels(objs, int(self.background[i]))

    def objects(self, i: int) -> list[dict[str, Any]]:
        """Image ``i``'s objects as readable dicts (category, colour, size, position words, visible area)."""
        return [
            {
                "category": CATEGORIES[int(self.category[i, j])],
                "colour": COLOUR_NAMES[int(self.colour[i, j])],
                "size": SIZE_NAMES[int(self.size[i, j])],
                "position": POSITIONS[int(self.position[i, j])],
                "center": [float(v) for v in self.center[i, j]],
                "visible": float(self.visible[i, j]),
            }
            for j in range(int(self.n_objects[i]))
        ]

    def presence(self, field: str) -> np.ndarray:
        """Multi-hot (N, n_values) float32 of which values of ``field`` (category/colour/size/position)
        occur in each image."""
        vocab = {"category": CATEGORIES, "colour": COLOUR_NAMES, "size": SIZE_NAMES, "position": POSITIONS}
        if field not in vocab:
            raise KeyError(f"unknown label field {field!r} (use one of {sorted(vocab)})")
        values = getattr(self, field)
        out = np.zeros((len(self), len(vocab[field])), np.float32)
        rows, cols = np.nonzero(values >= 0)
        out[rows, values[rows, cols]] = 1.0
        return out

    def subset(self, index: np.ndarray) -> StimulusLabels:
        """Labels of the images ``index`` (in that order)."""
        return StimulusLabels(**{name: getattr(self, name)[index] for name in self.ARRAYS})

    @classmethod
    def concatenate(cls, parts: Sequence[StimulusLabels]) -> StimulusLabels:
        return cls(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in cls.ARRAYS})

    def validate(self) -> None:
        """Raise DataFormatError if arrays disagree in length or hold out-of-vocabulary values."""
        n = len(self)
        for name in self.ARRAYS:
            if getattr(self, name).shape[0] != n:
                raise DataFormatError(f"demo labels: {name} has {getattr(self, name).shape[0]} rows, expected {n}")
        for name, vocab in (("category", CATEGORIES), ("colour", COLOUR_NAMES), ("size", SIZE_NAMES), ("position", POSITIONS)):
            arr = getattr(self, name)
            if arr.max(initial=-1) >= len(vocab) or arr.min(initial=0) < -1:
                raise DataFormatError(f"demo labels: {name} values outside 0..{len(vocab) - 1}")
        if self.background.max(initial=0) >= len(BACKGROUNDS) or self.background.min(initial=0) < 0:
            raise DataFormatError("demo labels: background index out of range")


def labels_from_scenes(scenes: Sequence[SceneSpec], visible: Sequence[np.ndarray], background_rgb: np.ndarray, max_objects: int) -> StimulusLabels:
    """Pack scene specs (+ visible areas and mean background colours from rendering) into arrays."""
    n = len(scenes)
    lab = StimulusLabels(
        n_objects=np.zeros(n, np.int16),
        category=np.full((n, max_objects), -1, np.int16),
        colour=np.full((n, max_objects), -1, np.int16),
        size=np.full((n, max_objects), -1, np.int16),
        position=np.full((n, max_objects), -1, np.int16),
        center=np.zeros((n, max_objects, 2), np.float32),
        radius=np.zeros((n, max_objects), np.float32),
        visible=np.zeros((n, max_objects), np.float32),
        background=np.zeros(n, np.int16),
        sky=np.zeros(n, np.int16),
        background_rgb=np.asarray(background_rgb, np.float32).reshape(n, 3),
    )
    for i, (s, vis) in enumerate(zip(scenes, visible)):
        lab.n_objects[i] = len(s.objects)
        lab.background[i] = s.background
        lab.sky[i] = s.sky
        for j, o in enumerate(s.objects):
            lab.category[i, j] = o.category
            lab.colour[i, j] = o.colour
            lab.size[i, j] = o.size
            lab.position[i, j] = o.position
            lab.center[i, j] = (o.cx, o.cy)
            lab.radius[i, j] = o.radius
            lab.visible[i, j] = vis[j]
    return lab


def render_scenes(
    scenes: Sequence[SceneSpec], size: int = 64, supersample: int = 4, max_objects: int = 3, progress: bool = False
) -> tuple[np.ndarray, StimulusLabels, list[str]]:
    """Render many scenes.

    Returns:
        images: (N, size, size, 3) uint8.
        labels: :class:`StimulusLabels` for the N scenes.
        captions: N strings.
    """
    from tqdm.auto import tqdm

    n = len(scenes)
    images = np.empty((n, size, size, 3), np.uint8)
    visible: list[np.ndarray] = []
    bg_rgb = np.zeros((n, 3), np.float32)
    for i, s in enumerate(tqdm(scenes, desc="stimuli", unit="img", disable=not progress, leave=False)):
        images[i], vis, bg_rgb[i] = _render(s, size, supersample)
        visible.append(vis)
    labels = labels_from_scenes(scenes, visible, bg_rgb, max_objects)
    return images, labels, [caption(s) for s in scenes]
