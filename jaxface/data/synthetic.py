"""The built-in synthetic face dataset: procedurally drawn faces, no download needed.

    ds = SyntheticFaces('train', num_images=10_000, seed=0)
    image, sample = ds[17]            # BGR uint8 [H, W, 3] and a `Sample`, drawn on demand
    gt = val_ground_truth(500)        # WIDER-style Easy/Medium/Hard ground truth of the val split

Each image is a pure function of (seed, split, index): any image can be redrawn alone, in any
process, and train and val never share one. An image is a cluttered background (a colour field,
texture, shapes, lines, stripes, text), face-like distractors that are NOT annotated (skin blobs,
discs with two dots, heads seen from behind, rings, one-eyed faces, cartoon eyes), then 0 to
`max_faces` faces drawn small to large, each perhaps with an occluder in front and a defocus blur,
and finally camera effects (exposure, colour cast, grey, blur, noise, JPEG).

Annotation rules (the constants below hold the numbers):

* **Box**: the tight axis-aligned box of the rotated head ellipse (forehead to chin, cheek to
  cheek; hair, hat and neck are outside it), clipped to the image [0, W] x [0, H].
  Coordinates are continuous: pixel (i, j) covers [j, j+1) x [i, i+1).
* **Landmarks**: exactly the drawn eye centres (pupil centres), nose tip and mouth corners; left =
  image-left. `landmark_valid` is True only when all five lie inside the image (then they are
  kept even where an occluder or another face hides them: the points are still where they are);
  otherwise they are zeros and invalid.
* **Visibility**: the fraction of the head ellipse's area that shows in the image, i.e. neither
  covered by an occluder, by a later face (its head, hair, hat or body) nor outside the image.
  It comes from an occupancy map drawn with the same geometry.
* **ignore**: faces with visibility below `IGNORE_BELOW_VISIBLE` (mostly hidden or mostly out of
  the image). They stay in the annotations so that a detection on them is neither a true nor a
  false positive, and they count in no difficulty setting. Faces showing less than
  `DROP_BELOW_VISIBLE` (a sliver behind someone's shoulder) are not annotated at all.
* **Difficulty** (WIDER settings, hard ⊇ medium ⊇ easy), by the clipped box height h:
  hard = every face not ignored; medium = hard with h >= `MEDIUM_MIN_HEIGHT` and visibility >=
  `MEDIUM_MIN_VISIBLE`; easy = medium with h >= `EASY_MIN_HEIGHT`, visibility >=
  `EASY_MIN_VISIBLE` and a defocus blur sigma <= `EASY_MAX_BLUR` * h.

Faces come in scene kinds (portrait, group, crowd, mixed, empty) with their own count and size
ranges; together the face heights run from 8 to 400 px (about log-uniform), and the val ground
truth groups images into one pseudo-event per scene kind (`0--Portrait`, ...).
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from jaxface.data import synthetic_draw as draw
from jaxface.data.sample import Sample
from jaxface.data.synthetic_draw import DistractorSpec, FaceSpec, OccluderSpec

SPLITS = {'train': 1, 'val': 2}
_STREAM_TAG = 0x5FACE5   # keeps these streams apart from `rng.sample_rng(seed, epoch, index)`

DROP_BELOW_VISIBLE = 0.05     # a face showing less than this fraction of its head is not annotated at all
IGNORE_BELOW_VISIBLE = 0.35   # ignore a face when less than this fraction of its head shows
MEDIUM_MIN_HEIGHT = 20.0      # px, clipped box height
MEDIUM_MIN_VISIBLE = 0.5
EASY_MIN_HEIGHT = 40.0
EASY_MIN_VISIBLE = 0.75
EASY_MAX_BLUR = 0.04          # defocus sigma / box height

MIN_FACE, MAX_FACE = 8.0, 400.0   # head heights (px) the scenes draw from
DEFAULT_SIDES = (320, 640)        # image height and width are each drawn from this range


@dataclasses.dataclass(frozen=True)
class SceneKind:
  name: str
  prob: float
  faces: tuple[int, int | None]   # inclusive count range (None: max_faces)
  heights: tuple[float, float]    # head height range (px), drawn log-uniformly


SCENE_KINDS = (
    SceneKind('portrait', 0.15, (1, 3), (60.0, MAX_FACE)),
    SceneKind('group', 0.30, (2, 10), (20.0, 150.0)),
    SceneKind('crowd', 0.18, (15, None), (MIN_FACE, 40.0)),
    SceneKind('mixed', 0.32, (1, 12), (MIN_FACE, MAX_FACE)),
    SceneKind('empty', 0.05, (0, 0), (MIN_FACE, MIN_FACE)),
)
EVENTS = tuple(f'{k}--{kind.name.capitalize()}' for k, kind in enumerate(SCENE_KINDS))


@dataclasses.dataclass
class Scene:
  """What one image shows, before any pixel is drawn (faces in drawing order: small to large)."""
  kind: str
  height: int
  width: int
  faces: list[FaceSpec]
  occluders: list[OccluderSpec | None]   # per face, drawn right after it
  blur: np.ndarray                        # [N] defocus sigma (px), 0 for sharp faces
  distractors: list[DistractorSpec]


@dataclasses.dataclass
class SyntheticImage:
  """One rendered image with its `Sample` and what the renderer knows beyond it (for tests and plots).

  Per-face arrays follow the sample's face order (the drawing order).
  """
  image: np.ndarray | None        # [H, W, 3] BGR uint8; None when rendered with pixels=False
  sample: Sample
  kind: str                       # scene kind
  visible: np.ndarray             # [N] float32 fraction of the head ellipse that shows
  all_landmarks: np.ndarray       # [N, 5, 2] float32 where the features are, even when invalid (outside)
  landmark_visible: np.ndarray    # [N, 5] bool: the landmark's pixel shows this face's head
  feature_colors: np.ndarray      # [N, 5, 3] BGR the face paints at each landmark (before blur and effects)
  feature_radii: np.ndarray       # [N, 5] radius (px) of the solid disc of that colour around each landmark
  blur_sigma: np.ndarray          # [N] defocus blur sigma (px); 0: sharp (always 0 when effects are off)
  occluder: tuple[str, ...]       # [N] occluder kind, '' for none
  medium: np.ndarray              # [N] bool
  easy: np.ndarray                # [N] bool (hard = ~sample.ignore)
  distractor_boxes: np.ndarray    # [D, 4] float32 x1 y1 x2 y2 (unclipped) of the unannotated look-alikes
  occupancy: np.ndarray           # [H, W] uint8: 1 + sample index of the face whose head shows there, else 0

  @property
  def hard(self) -> np.ndarray:
    return ~self.sample.ignore


class SyntheticFaces:
  """Procedurally drawn faces with boxes and five landmarks; see the module docstring for the rules.

  Args:
    split: 'train' or 'val' (separate random streams).
    num_images: the dataset's length.
    seed: different seeds give different datasets.
    image_size: (height, width) of every image; None draws each side from `DEFAULT_SIDES`.
    max_faces: at most this many faces per image (crowd scenes go up to it); <= 254.
    effects: blur and camera effects; False draws the same scene and annotations without them
      (sharp, exact colours, for checks).
  """

  def __init__(self, split: str, num_images: int, seed: int = 0, image_size: tuple[int, int] | None = None,
               max_faces: int = 32, effects: bool = True):
    if split not in SPLITS:
      raise ValueError(f'unknown split {split!r}; known: {sorted(SPLITS)}')
    if not 0 <= max_faces <= 254:
      raise ValueError(f'max_faces must be in [0, 254] (the occupancy map is uint8), got {max_faces}')
    if image_size is not None and (len(image_size) != 2 or min(image_size) < 16):
      raise ValueError(f'image_size must be (height, width) with sides >= 16, got {image_size}')
    self.split, self.num_images, self.seed = split, int(num_images), int(seed)
    self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
    self.max_faces, self.effects = int(max_faces), bool(effects)

  def __len__(self) -> int:
    return self.num_images

  def __getitem__(self, i: int) -> tuple[np.ndarray, Sample]:
    r = self.render(i)
    return r.image, r.sample

  def _streams(self, i: int) -> list[np.random.Generator]:
    """Independent generators for the layout, the background clutter and the camera effects."""
    if not 0 <= i < self.num_images:
      raise IndexError(f'image {i} out of range for {self.num_images} images')
    seq = np.random.SeedSequence([_STREAM_TAG, self.seed, SPLITS[self.split], int(i)])
    return [np.random.Generator(np.random.PCG64(s)) for s in seq.spawn(3)]

  def scene(self, i: int) -> Scene:
    return sample_scene(self._streams(i)[0], self.image_size, self.max_faces)

  def event(self, i: int) -> tuple[str, str]:
    """(event, name) of image i in `val_ground_truth`: where its prediction file goes."""
    kind = self.scene(i).kind
    return EVENTS[[k.name for k in SCENE_KINDS].index(kind)], f'synthetic_{i}'

  def render(self, i: int, *, pixels: bool = True, effects: bool | None = None) -> SyntheticImage:
    """Image i with everything known about it; `pixels=False` skips the drawing (annotations only)."""
    layout_rng, background_rng, effects_rng = self._streams(i)
    scene = sample_scene(layout_rng, self.image_size, self.max_faces)
    effects = self.effects if effects is None else effects
    image = draw_scene(scene, background_rng, effects_rng, effects) if pixels else None
    return annotate(scene, image, blur=effects, source=f'synthetic:{self.split}:{self.seed}:{i}')


# ----------------------------------------------------------------------------------------------
# Sampling a scene.

_SKIN = np.array([  # BGR anchors from very light to very dark
    [210, 229, 255], [178, 206, 241], [130, 172, 224], [98, 140, 198], [70, 105, 160], [50, 75, 120],
    [35, 50, 80], [28, 36, 55]], np.float64)
_HAIR = np.array([[18, 20, 25], [30, 40, 60], [45, 75, 110], [120, 180, 215], [30, 60, 150], [170, 170, 170],
                  [225, 230, 230], [40, 30, 30]], np.float64)
_IRIS = np.array([[30, 60, 100], [30, 35, 40], [150, 110, 60], [70, 120, 70], [40, 90, 110]], np.float64)


def skin_tone(rng: np.random.Generator, u: float | None = None) -> draw.Color:
  """A skin colour from a broad range (very light to very dark, `u` in [0, 1] picks where), jittered."""
  t = (rng.random() if u is None else u) * (len(_SKIN) - 1)
  k = min(int(t), len(_SKIN) - 2)
  return _color((1 - (t - k)) * _SKIN[k] + (t - k) * _SKIN[k + 1] + rng.normal(0, 6, 3))


def _pick(u: float, options, probs):
  """The option whose cumulative-probability interval holds `u` (uniform in [0, 1))."""
  total, acc = sum(probs), 0.0
  for option, p in zip(options, probs):
    acc += p / total
    if u < acc:
      return option
  return options[-1]


def _random_color(rng) -> draw.Color:
  return tuple(float(v) for v in rng.integers(0, 256, 3))


def _color(v) -> draw.Color:
  return tuple(min(max(float(x), 0.0), 255.0) for x in v)


def _apart(color: draw.Color, others, toward: draw.Color, min_diff: float = 18.0) -> draw.Color:
  """`color` mixed towards `toward` until it differs from each of `others` by `min_diff` in some channel."""
  for _ in range(8):
    if all(max(abs(x - y) for x, y in zip(color, o)) >= min_diff for o in others):
      break
    color = draw.mix_color(color, toward, 0.15)
  return color


def sample_face(rng: np.random.Generator, height: float) -> FaceSpec:
  """A face of head height `height` (px) centred at the origin (the caller places it)."""
  u = rng.random(30)          # one draw for the scalars, in the order they are used below
  g = rng.normal(0.0, 1.0, (5, 3))
  lerp = lambda k, lo, hi: lo + (hi - lo) * float(u[k])
  b = height / 2
  a = b / lerp(0, 1.15, 1.4)
  eye_v = -0.1 + lerp(1, -0.05, 0.05) + lerp(2, -0.08, 0.08)   # ... + pitch
  nose_v = eye_v + lerp(3, 0.3, 0.4)
  exposure = lerp(4, 0.65, 1.15)
  skin = draw.scale_color(skin_tone(rng, float(u[5])), exposure)
  hair_style = _pick(u[6], ('none', 'short', 'long', 'hat'), (0.15, 0.45, 0.28, 0.12))
  glasses = _pick(u[7], ('none', 'clear', 'sun'), (0.8, 0.13, 0.07))
  hair = _HAIR[int(u[8] * len(_HAIR))] + 8 * g[0] if u[9] < 0.92 else 255 * u[10:13]
  shadow = draw.scale_color(skin, lerp(26, 0.7, 0.85))
  # Nose tip and lips stand out from the skin around them (and the nose from its shaded bridge).
  nose = _apart(draw.mix_color(draw.scale_color(skin, lerp(27, 0.7, 0.8)), (70, 80, 190), 0.15),
                (skin, shadow, draw.scale_color(shadow, 0.8)), (60, 60, 200))
  lip = _apart(draw.mix_color(draw.scale_color(skin, 0.8), (80, 70, 185), lerp(28, 0.25, 0.5)), (skin, shadow, nose),
               (70, 50, 170))
  pupil = _color(12 + 3 * g[4, 2] + 2 * g[3])
  iris = np.array(draw.scale_color(_color(_IRIS[int(u[29] * len(_IRIS))] + 8 * g[2]), exposure))
  iris = _color(iris + max(0.0, 30.0 - float(np.max(iris - pupil))))   # the pupil stays visible
  f = FaceSpec(
      cx=0.0, cy=0.0, a=a, b=b,
      angle=float(np.clip(12 * g[4, 0], -30, 30)),
      yaw=lerp(13, -0.7, 0.7),
      eye_phi=lerp(14, 0.42, 0.55), eye_v=eye_v, eye_size=lerp(15, 0.14, 0.2), eye_aspect=lerp(16, 0.45, 0.65),
      nose_v=nose_v, nose_depth=lerp(17, 0.2, 0.4), nose_r=lerp(18, 0.07, 0.11),
      mouth_phi=lerp(19, 0.3, 0.45), mouth_v=nose_v + lerp(20, 0.25, 0.35),
      upper_lip=lerp(21, 0.04, 0.07), lower_lip=lerp(22, 0.05, 0.1), smile=lerp(23, -0.03, 0.1),
      mouth_open=bool(u[24] < 0.25), light=lerp(25, 0, 2 * np.pi),
      skin=skin, shadow=shadow,
      nose=nose, lip=lip,
      sclera=draw.scale_color(_color(225 + 20 * g[4, 1] / 3 + 5 * g[1]), exposure),
      iris=iris, pupil=pupil,
      hair=draw.scale_color(_color(hair), exposure),
      clothes=_random_color(rng),
      accessory=_color(rng.uniform(10, 50, 3)) if glasses == 'sun' else _random_color(rng),
      hair_style=hair_style, hairline=float(min(rng.uniform(-0.75, -0.5), eye_v - 0.42)),
      brows=bool(u[10] < 0.75), beard=bool(u[11] < 0.1), glasses=glasses, body=bool(u[12] < 0.8))
  # Keep every feature well inside the head: turn the face back towards the camera until it is.
  for _ in range(8):
    uv = f.local_landmarks() / np.array([f.a, f.b])
    if np.max(np.sum(uv ** 2, axis=-1)) <= 0.8:
      break
    f.yaw *= 0.8
  return f


def _occluder(rng: np.random.Generator, f: FaceSpec) -> OccluderSpec:
  r = 0.5 * (f.a + f.b)
  c = np.array([f.cx, f.cy])
  kind = _pick(rng.random(), ('rect', 'blob', 'mask', 'bar'), (0.35, 0.3, 0.15, 0.2))
  color, detail = _random_color(rng), _random_color(rng)
  alpha = rng.uniform(0, 2 * np.pi)
  d, n = np.array([np.cos(alpha), np.sin(alpha)]), np.array([-np.sin(alpha), np.cos(alpha)])
  if kind == 'rect':      # a sign, a shoulder, a door frame: a half-plane-like chunk from one side
    near, far = rng.uniform(-0.3, 0.75) * r, rng.uniform(1.2, 3.0) * r
    half = rng.uniform(0.7, 1.8) * r
    poly = np.array([c + d * near - n * half, c + d * far - n * half, c + d * far + n * half, c + d * near + n * half])
  elif kind == 'blob':    # a hand, a ball, a cup
    if rng.random() < 0.6:
      color = skin_tone(rng)
    centre = c + d * rng.uniform(0.2, 0.9) * r
    ax = rng.uniform(0.3, 0.7, 2) * f.a
    t = rng.uniform(0, 2 * np.pi)
    pts = draw.ellipse_points(ax[0], ax[1], 0, 360, 24)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    poly = centre + pts @ rot.T
  elif kind == 'mask':    # a face mask over nose and mouth
    top = (f.nose_v - 0.12) * f.b
    chin = draw.ellipse_points(0.98 * f.a, 0.98 * f.b, -10, 190, 32)
    poly = f.to_image(chin[chin[:, 1] >= top])
    color = [(230, 205, 160), (240, 240, 240), (35, 35, 35), color][int(rng.integers(4))]
  else:                   # a pole, a microphone stand, an arm
    off, half = rng.uniform(-0.6, 0.6) * r, rng.uniform(0.1, 0.25) * r
    poly = np.array([c + n * (off - half) - d * 3 * r, c + n * (off - half) + d * 3 * r,
                     c + n * (off + half) + d * 3 * r, c + n * (off + half) - d * 3 * r])
  return OccluderSpec(kind, np.asarray(poly, np.float64), tuple(float(v) for v in color), detail)


def _overlaps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """[A, B] intersection over the smaller area of boxes a [A, 4] and b [B, 4] (x1 y1 x2 y2)."""
  iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
  ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
  area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
  area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  return iw * ih / np.maximum(np.minimum(area_a[:, None], area_b[None, :]), 1e-6)


def sample_scene(rng: np.random.Generator, image_size: tuple[int, int] | None, max_faces: int) -> Scene:
  """The layout of one image: size, scene kind, faces, occluders, blur, distractors."""
  if image_size is None:
    height, width = (int(v) for v in rng.integers(DEFAULT_SIDES[0], DEFAULT_SIDES[1] + 1, 2))
  else:
    height, width = image_size
  kind = SCENE_KINDS[rng.choice(len(SCENE_KINDS), p=[k.prob for k in SCENE_KINDS])]
  lo, hi = kind.faces
  hi = max_faces if hi is None else min(hi, max_faces)
  lo = min(lo, hi)
  count = int(rng.integers(lo, hi + 1))
  top = min(kind.heights[1], 0.95 * min(height, width))
  bottom = min(kind.heights[0], top)
  # Place large faces first. A crowd recedes: the higher in the image, the smaller the face.
  depth = np.sort(rng.random(count))[::-1]
  heights = bottom * (top / bottom) ** depth
  rows = None
  if kind.name == 'crowd':
    heights = np.clip(heights * rng.uniform(0.85, 1.15, count), MIN_FACE, None)
    rows = height * (0.12 + 0.83 * depth)

  faces: list[FaceSpec] = []
  boxes = np.zeros((0, 4))
  size = np.array([width, height])
  for n, h in enumerate(heights):
    f = sample_face(rng, float(h))
    ex, ey = f.box[2], f.box[3]   # half extents (the face is at the origin)
    # 25 candidate centres at once; 12% of them may leave the face partly out of the image.
    u = rng.random((25, 3))
    half = np.array([ex, ey])
    inside = half + u[:, :2] * (size - 2 * half)   # (reversed when the face is larger than the image)
    outside = -0.3 * half + u[:, :2] * (size + 0.6 * half)
    centres = np.where(u[:, 2:] < 0.12, outside, inside)
    if rows is not None:
      centres[:, 1] = rows[n] + (u[:, 1] - 0.5) * 0.08 * height
    cand = np.concatenate([centres - half, centres + half], axis=1)              # [25, 4]
    ok = np.all(_overlaps(cand, boxes) <= 0.3, axis=1)
    if ok.any():
      k = int(np.argmax(ok))
      f.cx, f.cy = float(centres[k, 0]), float(centres[k, 1])
      faces.append(f)
      boxes = np.concatenate([boxes, cand[k:k + 1]])
  faces.reverse()                   # draw small (far) faces first, large (near) ones over them

  p_occ = 0.12 if kind.name == 'crowd' else 0.22
  occluders = [_occluder(rng, f) if f.b >= 6 and rng.random() < p_occ else None for f in faces]
  blur = np.zeros(len(faces))
  for k, f in enumerate(faces):
    if rng.random() < 0.2:
      rel = rng.uniform(0.01, 0.035) if rng.random() < 0.6 else rng.uniform(0.045, 0.075)
      blur[k] = max(rel * 2 * f.b, 0.5)

  distractors = []
  n_dis = int(rng.integers(2, 11)) if kind.name == 'empty' else int(rng.integers(0, 7))
  face_boxes = np.array([f.box for f in faces]).reshape(-1, 4)
  grown = face_boxes + np.array([-1, -1, 1, 1]) * 0.1 * (face_boxes[:, 2:] - face_boxes[:, :2]).max(-1, keepdims=True)
  dis_top = max(min(250.0, 0.6 * min(height, width)), 12.0)
  for _ in range(n_dis):
    size = float(np.exp(rng.uniform(np.log(10), np.log(dis_top))))
    dkind = draw.DISTRACTOR_KINDS[int(rng.integers(len(draw.DISTRACTOR_KINDS)))]
    skin_like = dkind in ('skin_blob', 'cyclops') or rng.random() < 0.35
    color = skin_tone(rng) if skin_like else _random_color(rng)
    if dkind == 'back_of_head':   # skin for the neck, hair for the head
      color, color2 = skin_tone(rng), _HAIR[rng.integers(len(_HAIR))]
    else:                         # color2: the dark dots
      color2 = rng.uniform(0, 60, 3)
    b = size / 2
    a = b / rng.uniform(1.0, 1.4)
    for _ in range(15):
      d = DistractorSpec(dkind, float(rng.uniform(0, width)), float(rng.uniform(0, height)), a, b,
                         float(rng.normal(0, 15)), tuple(float(v) for v in color), tuple(float(v) for v in color2))
      if not np.any(_overlaps(d.box[None], grown) > 0):
        distractors.append(d)
        break
  return Scene(kind.name, int(height), int(width), faces, occluders, blur, distractors)


# ----------------------------------------------------------------------------------------------
# Drawing and annotating a scene.

def draw_scene(scene: Scene, background_rng: np.random.Generator, effects_rng: np.random.Generator,
               effects: bool) -> np.ndarray:
  """BGR uint8 [H, W, 3]: background, distractors, faces (with occluders and blur), camera effects."""
  img = draw.draw_background(scene.height, scene.width, background_rng, skin_tone)
  for d in scene.distractors:
    draw.draw_distractor(img, d)
  for f, occ, sigma in zip(scene.faces, scene.occluders, scene.blur):
    draw.draw_face(img, f)
    if occ is not None:
      draw.draw_occluder(img, occ)
    if effects and sigma > 0:
      draw.blur_region(img, f.box, float(sigma))
  return draw.photometric(img, effects_rng) if effects else img


def occupancy_map(scene: Scene) -> np.ndarray:
  """[H, W] uint8: 1 + the index of the face whose head ellipse shows at each pixel, else 0."""
  occ = np.zeros((scene.height, scene.width), np.uint8)
  for k, (f, o) in enumerate(zip(scene.faces, scene.occluders)):
    draw.draw_face_occupancy(occ, f, k + 1)
    if o is not None:
      draw.fill_poly(occ, o.polygon, (0,), cv2.LINE_8)
  return occ


def annotate(scene: Scene, image: np.ndarray | None, blur: bool = True, source: str = '') -> SyntheticImage:
  """The `Sample` and the per-face facts of a scene (see the module docstring for the rules)."""
  h_img, w_img = scene.height, scene.width
  occ = occupancy_map(scene)
  faces = scene.faces
  n = len(faces)
  boxes = np.array([f.box for f in faces]).reshape(n, 4)
  boxes = np.clip(boxes, 0, [w_img, h_img, w_img, h_img]).astype(np.float32)
  counts = np.zeros(n)
  for k, b in enumerate(np.floor(boxes).astype(np.int64)):   # count inside each box: cheaper than the whole map
    counts[k] = np.count_nonzero(occ[b[1]:b[3] + 1, b[0]:b[2] + 1] == k + 1)
  visible = np.clip(counts / np.array([np.pi * f.a * f.b for f in faces]).reshape(n), 0, 1).astype(np.float32)
  # Faces hidden almost entirely are not in the picture: drop them, and renumber the map.
  keep = np.flatnonzero(visible >= DROP_BELOW_VISIBLE)
  if len(keep) < n:
    relabel = np.zeros(256, np.uint8)
    relabel[keep + 1] = np.arange(1, len(keep) + 1)
    occ = relabel[occ]
    faces, boxes, visible = [faces[k] for k in keep], boxes[keep], visible[keep]
  n = len(faces)
  if n == 0:
    z = np.zeros
    return SyntheticImage(image, Sample.empty('', source), scene.kind, z(0, np.float32), z((0, 5, 2), np.float32),
                          z((0, 5), bool), z((0, 5, 3), np.float32), z((0, 5), np.float32), z(0, np.float32), (),
                          z(0, bool), z(0, bool), _distractor_boxes(scene), occ)
  landmarks = np.array([f.landmarks() for f in faces])                 # [N, 5, 2]
  inside = np.all((landmarks >= 0) & (landmarks < np.array([w_img, h_img])), axis=-1)   # [N, 5]
  valid = inside.all(-1)
  px = np.clip(np.floor(landmarks).astype(np.int64), 0, [w_img - 1, h_img - 1])
  landmark_visible = inside & (occ[px[..., 1], px[..., 0]] == np.arange(1, n + 1)[:, None])
  ignore = visible < IGNORE_BELOW_VISIBLE
  height = boxes[:, 3] - boxes[:, 1]
  defocus = scene.blur[keep]
  medium = ~ignore & (height >= MEDIUM_MIN_HEIGHT) & (visible >= MEDIUM_MIN_VISIBLE)
  easy = medium & (height >= EASY_MIN_HEIGHT) & (visible >= EASY_MIN_VISIBLE) & (defocus <= EASY_MAX_BLUR * height)
  sample = Sample('', boxes, np.where(valid[:, None, None], landmarks, 0.0), valid, ignore, source)
  return SyntheticImage(
      image=image, sample=sample, kind=scene.kind, visible=visible, all_landmarks=landmarks.astype(np.float32),
      landmark_visible=landmark_visible,
      feature_colors=np.stack([f.feature_colors() for f in faces]),
      feature_radii=np.stack([f.feature_radii() for f in faces]),
      blur_sigma=(defocus if blur else np.zeros(n)).astype(np.float32),
      occluder=tuple('' if scene.occluders[k] is None else scene.occluders[k].kind for k in keep),
      medium=medium, easy=easy, distractor_boxes=_distractor_boxes(scene), occupancy=occ)


def _distractor_boxes(scene: Scene) -> np.ndarray:
  return np.array([d.box for d in scene.distractors], np.float32).reshape(-1, 4)


# ----------------------------------------------------------------------------------------------
# WIDER-style ground truth of the val split.

def wider_boxes(boxes_xyxy: np.ndarray) -> np.ndarray:
  """[G, 4] float x1 y1 x2 y2 -> int32 x y w h, corners rounded to the nearest pixel (x2 = x + w)."""
  r = np.floor(np.asarray(boxes_xyxy, np.float64).reshape(-1, 4) + 0.5).astype(np.int64)
  return np.concatenate([r[:, :2], r[:, 2:] - r[:, :2]], axis=1).astype(np.int32)


def val_ground_truth(num_images: int, seed: int = 0, image_size: tuple[int, int] | None = None,
                     max_faces: int = 32):
  """The `GroundTruth` of `SyntheticFaces('val', num_images, seed, image_size, max_faces)`.

  One pseudo-event per scene kind that occurs (`EVENTS`), images named `synthetic_<i>` in index
  order; every face is a box (ignored ones included, so that detecting them costs nothing), and
  the keep lists (0-based, as `GroundTruth` holds them) are the hard, medium and easy faces.
  Only the layout and the occupancy map are drawn, not the pixels.
  """
  from jaxface.evaluation.ground_truth import GroundTruth  # the evaluator is optional for training

  ds = SyntheticFaces('val', num_images, seed, image_size, max_faces)
  per_event = {e: ([], [], {'easy': [], 'medium': [], 'hard': []}) for e in EVENTS}
  for i in range(num_images):
    r = ds.render(i, pixels=False)
    names, boxes, keep = per_event[EVENTS[[k.name for k in SCENE_KINDS].index(r.kind)]]
    names.append(f'synthetic_{i}')
    boxes.append(wider_boxes(r.sample.boxes))
    keep['hard'].append(np.flatnonzero(r.hard))
    keep['medium'].append(np.flatnonzero(r.medium))
    keep['easy'].append(np.flatnonzero(r.easy))
  events = [e for e in EVENTS if per_event[e][0]]
  return GroundTruth(events=events, files=[per_event[e][0] for e in events],
                     boxes=[per_event[e][1] for e in events],
                     keep={s: [per_event[e][2][s] for e in events] for s in ('easy', 'medium', 'hard')})
