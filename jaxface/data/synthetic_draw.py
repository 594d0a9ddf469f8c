"""Drawing the synthetic faces, distractors and backgrounds with OpenCV primitives.

Everything here is deterministic: a `FaceSpec` or `DistractorSpec` (sampled in
`jaxface.data.synthetic`) fully decides the pixels, and the only generator used is the one passed
to `draw_background` for clutter nobody annotates.

Coordinates are continuous pixel coordinates: pixel (i, j) covers [j, j+1) x [i, i+1), so its
centre is (j + 0.5, i + 0.5) and mirroring is `x' = W - x`, as in the reference augmentation.
OpenCV puts integer coordinates at pixel centres, hence the half-pixel shift in `_pt`; shapes are
drawn with 4 fractional bits, so sub-pixel positions are honoured.

A face lives in a local frame: u towards the image's right, v down, origin at the head centre,
rotated by `angle` degrees (clockwise on screen, OpenCV's sense). Features sit on
a sphere of radius ~0.92 a: a feature at azimuth phi appears at u = r sin(phi + yaw), which is
the yaw-like squeeze (the far eye narrows and moves towards the near one; the nose tip, standing
out from the sphere, moves furthest).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import cv2
import numpy as np

SHIFT = 4                 # fractional bits of every cv2 coordinate
_SCALE = 1 << SHIFT
_AA = cv2.LINE_AA
Color = tuple[float, float, float]   # BGR, 0..255


def ellipse_box(cx: float, cy: float, a: float, b: float, angle_deg: float) -> np.ndarray:
  """[4] x1 y1 x2 y2: the tight axis-aligned box of an ellipse (half-axes a, b) rotated by angle_deg."""
  t = np.deg2rad(angle_deg)
  ex = np.hypot(a * np.cos(t), b * np.sin(t))
  ey = np.hypot(a * np.sin(t), b * np.cos(t))
  return np.array([cx - ex, cy - ey, cx + ex, cy + ey])


@dataclasses.dataclass
class FaceSpec:
  """Everything that decides how one face looks (lengths in px unless said otherwise)."""
  cx: float
  cy: float
  a: float                  # head ellipse half-width (cheek to cheek / 2) before rotation
  b: float                  # head ellipse half-height (forehead to chin / 2)
  angle: float              # in-plane rotation, degrees, clockwise on screen
  yaw: float                # radians; > 0 turns the face towards the image's right
  # Feature layout: azimuths in radians, vertical positions in units of b, sizes in units of a.
  eye_phi: float
  eye_v: float
  eye_size: float           # eye half-width
  eye_aspect: float         # eye half-height / half-width
  nose_v: float
  nose_depth: float         # how far the tip stands out of the feature sphere
  nose_r: float             # radius of the nose-tip disc
  mouth_phi: float
  mouth_v: float
  upper_lip: float
  lower_lip: float
  smile: float              # > 0: the lip centre lies below the corners
  mouth_open: bool
  light: float              # direction of the light, radians in the local frame
  # Colours (BGR).
  skin: Color
  shadow: Color
  nose: Color
  lip: Color
  sclera: Color
  iris: Color
  pupil: Color
  hair: Color
  clothes: Color
  accessory: Color          # hat, glasses frame or sunglasses lenses
  hair_style: str           # 'none' | 'short' | 'long' | 'hat'
  hairline: float           # v of the fringe's lower edge, units of b (negative: above the centre)
  brows: bool
  beard: bool
  glasses: str              # 'none' | 'clear' | 'sun'
  body: bool

  @property
  def box(self) -> np.ndarray:
    """[4] x1 y1 x2 y2: the tight axis-aligned box of the rotated head ellipse (not clipped)."""
    return ellipse_box(self.cx, self.cy, self.a, self.b, self.angle)

  def to_image(self, uv: np.ndarray) -> np.ndarray:
    """Local-frame points [..., 2] (px) -> image points [..., 2]."""
    t = math.radians(self.angle)
    c, s = math.cos(t), math.sin(t)
    return np.asarray(uv, np.float64) @ np.array([[c, s], [-s, c]]) + np.array([self.cx, self.cy])

  def _u(self, phi: float, extra: float = 0.0) -> float:
    return (0.92 + extra) * self.a * np.sin(phi + self.yaw)

  def local_landmarks(self) -> np.ndarray:
    """[5, 2] eye centres, nose tip, mouth corners in the local frame (image-left first)."""
    b = self.b
    return np.array([[self._u(-self.eye_phi), self.eye_v * b],
                     [self._u(self.eye_phi), self.eye_v * b],
                     [self._u(0.0, self.nose_depth), self.nose_v * b],
                     [self._u(-self.mouth_phi), self.mouth_v * b],
                     [self._u(self.mouth_phi), self.mouth_v * b]])

  def landmarks(self) -> np.ndarray:
    """[5, 2] the five landmarks in image coordinates: exactly where the features are drawn."""
    return self.to_image(self.local_landmarks())

  def eye_half_sizes(self) -> np.ndarray:
    """[2, 2] (half-width, half-height) of the left and right eye; the far eye is foreshortened."""
    base = self.eye_size * self.a
    squeeze = np.maximum(np.cos(np.array([-self.eye_phi, self.eye_phi]) + self.yaw), 0.3) / np.cos(self.eye_phi)
    return np.stack([base * squeeze, np.full(2, base * self.eye_aspect)], axis=-1)

  def pupil_radius(self) -> np.ndarray:
    """[2] the pupil discs' radii (the iris is twice as wide)."""
    half = self.eye_half_sizes()
    return 0.55 * np.minimum(0.95 * half[:, 1], 0.6 * half[:, 0])

  def corner_radius(self) -> float:
    return 0.6 * max(self.upper_lip, self.lower_lip) * self.a

  def feature_colors(self) -> np.ndarray:
    """[5, 3] the colour the face itself paints at each landmark (before blur and photometric effects)."""
    eye = self.accessory if self.glasses == 'sun' else self.pupil
    return np.array([eye, eye, self.nose, self.lip, self.lip], np.float32)

  def feature_radii(self) -> np.ndarray:
    """[5] radius (px) of the solid disc of `feature_colors` centred on each landmark."""
    eyes = self.lens_half_axes().min(-1) if self.glasses == 'sun' else self.pupil_radius()
    corner = self.corner_radius()
    return np.array([eyes[0], eyes[1], self.nose_r * self.a, corner, corner], np.float32)

  def lens_half_axes(self) -> np.ndarray:
    """[2, 2] (half-width, half-height) of the sunglasses' lenses, foreshortened like the eyes,
    narrowed where needed so that the two never touch."""
    squeeze = self.eye_half_sizes()[:, 0] / (self.eye_size * self.a)
    half_w = 0.35 * self.a * squeeze
    lm = self.local_landmarks()
    half_w *= min(1.0, 0.9 * abs(lm[1, 0] - lm[0, 0]) / half_w.sum())
    return np.stack([half_w, np.full(2, 0.3 * self.a)], axis=-1)


# ----------------------------------------------------------------------------------------------
# Primitives in continuous coordinates.

def _pt(xy) -> tuple[int, int]:
  return (int(round((xy[0] - 0.5) * _SCALE)), int(round((xy[1] - 0.5) * _SCALE)))


def _len(r: float) -> int:
  return max(int(round(r * _SCALE)), 1)


def _c(color) -> tuple[float, ...]:
  return color if type(color) is tuple else tuple(float(v) for v in color)


def fill_ellipse(img, center, half_axes, angle, color, line=_AA):
  cv2.ellipse(img, _pt(center), (_len(half_axes[0]), _len(half_axes[1])), float(angle), 0, 360,
              _c(color), -1, line, SHIFT)


def ellipse_arc(img, center, half_axes, angle, start, end, color, thickness, line=_AA):
  cv2.ellipse(img, _pt(center), (_len(half_axes[0]), _len(half_axes[1])), float(angle), float(start),
              float(end), _c(color), max(int(round(thickness)), 1), line, SHIFT)


def fill_circle(img, center, radius, color, line=_AA):
  cv2.circle(img, _pt(center), _len(radius), _c(color), -1, line, SHIFT)


def ring(img, center, radius, color, thickness, line=_AA):
  cv2.circle(img, _pt(center), _len(radius), _c(color), max(int(round(thickness)), 1), line, SHIFT)


def _poly_array(points) -> np.ndarray:
  p = np.asarray(points, np.float64).reshape(-1, 2)
  return np.round((p - 0.5) * _SCALE).astype(np.int32)


def fill_poly(img, points, color, line=_AA):
  cv2.fillPoly(img, [_poly_array(points)], _c(color), line, SHIFT)


def polyline(img, points, color, thickness, closed=False, line=_AA):
  cv2.polylines(img, [_poly_array(points)], closed, _c(color), max(int(round(thickness)), 1), line, SHIFT)


@functools.lru_cache(maxsize=None)
def _bezier_weights(n: int) -> np.ndarray:
  t = np.linspace(0.0, 1.0, n)[:, None]
  return np.concatenate([(1 - t) ** 2, 2 * t * (1 - t), t ** 2], axis=1)   # [n, 3]


def _bezier(p0, p1, p2, n: int) -> np.ndarray:
  """[n, 2] points of the quadratic Bezier curve p0 -> p2 with control point p1."""
  return _bezier_weights(n) @ np.array([p0, p1, p2], np.float64)


@functools.lru_cache(maxsize=None)
def _unit_arc(start_deg: float, end_deg: float, n: int) -> np.ndarray:
  t = np.deg2rad(np.linspace(start_deg, end_deg, n))
  return np.stack([np.cos(t), np.sin(t)], axis=-1)


def ellipse_points(a: float, b: float, start_deg: float, end_deg: float, n: int, cu=0.0, cv=0.0) -> np.ndarray:
  """[n, 2] points of the axis-aligned ellipse arc centred at (cu, cv), angles as in cv2.ellipse."""
  return _unit_arc(start_deg, end_deg, n) * np.array([a, b]) + np.array([cu, cv])


def _clip255(v: float) -> float:
  return 0.0 if v < 0 else (255.0 if v > 255 else float(v))


def scale_color(color, k: float) -> Color:
  return tuple(_clip255(c * k) for c in color)


def mix_color(c1, c2, w: float) -> Color:
  return tuple(_clip255((1 - w) * x + w * y) for x, y in zip(c1, c2))


# ----------------------------------------------------------------------------------------------
# Faces.

def _detail(f: FaceSpec) -> int:
  """0: a few dots (tiny faces), 1: no small extras, 2: everything."""
  return 0 if f.b < 9 else (1 if f.b < 22 else 2)


def face_silhouette_parts(f: FaceSpec) -> list[tuple[str, np.ndarray]]:
  """The parts a face paints outside its head ellipse, as image polygons, in drawing order.

  They occlude whatever was drawn before (other faces included), so the occupancy map needs them.
  """
  a, b = f.a, f.b
  parts = []
  if f.body:
    shoulders = ellipse_points(2.3 * a, 1.1 * a, 180, 360, 24, cv=b + 1.6 * a)
    shoulders = np.concatenate([shoulders, [[2.3 * a, b + 3.2 * a], [-2.3 * a, b + 3.2 * a]]])
    parts.append(('clothes', f.to_image(shoulders)))
    neck = np.array([[-0.45 * a, 0.3 * b], [0.45 * a, 0.3 * b], [0.5 * a, b + 0.9 * a], [-0.5 * a, b + 0.9 * a]])
    parts.append(('neck', f.to_image(neck)))
  if f.hair_style == 'short':
    parts.append(('hair', f.to_image(ellipse_points(1.07 * a, 0.98 * b, 0, 360, 40, cv=-0.1 * b))))
  elif f.hair_style == 'long':
    top = ellipse_points(1.12 * a, 1.06 * b, 180, 360, 24, cv=-0.05 * b)
    down = np.array([[1.25 * a, 0.9 * b], [1.0 * a, 1.25 * b], [-1.0 * a, 1.25 * b], [-1.25 * a, 0.9 * b]])
    parts.append(('hair', f.to_image(np.concatenate([top, down]))))
  elif f.hair_style == 'hat':
    hv = f.hairline * b
    crown = np.array([[-0.95 * a, hv], [-0.8 * a, -1.35 * b], [0.8 * a, -1.35 * b], [0.95 * a, hv]])
    parts.append(('hat', f.to_image(crown)))
    parts.append(('hat', f.to_image(ellipse_points(1.45 * a, 0.14 * b, 0, 360, 24, cv=hv))))
  return parts


def draw_face(img: np.ndarray, f: FaceSpec) -> None:
  """Paints one face (body, hair, head, features) onto `img` in place."""
  a, b = f.a, f.b
  deg = f.angle
  detail = _detail(f)
  # Behind the head: body and back hair (a hat goes on after the head).
  for kind, poly in face_silhouette_parts(f):
    color = {'clothes': f.clothes, 'neck': scale_color(f.shadow, 0.95), 'hair': f.hair, 'hat': f.accessory}[kind]
    if kind != 'hat':
      fill_poly(img, poly, color)
  # Head: a shadowed ellipse, then the lit skin offset towards the light.
  centre = (f.cx, f.cy)
  fill_ellipse(img, centre, (a, b), deg, f.shadow)
  if detail:
    off = f.to_image(np.array([0.07 * a * np.cos(f.light), 0.05 * b * np.sin(f.light)]))
    fill_ellipse(img, off, (0.9 * a, 0.92 * b), deg, f.skin)
  else:
    fill_ellipse(img, centre, (0.85 * a, 0.88 * b), deg, f.skin)
  if f.beard and detail:
    chin = ellipse_points(0.97 * a, 0.97 * b, 20, 160, 20)
    chin = chin[chin[:, 1] > (f.mouth_v - 0.12) * b]
    fill_poly(img, f.to_image(chin), mix_color(f.hair, f.shadow, 0.3))
  # Fringe or hat over the top of the head.
  if f.hair_style in ('short', 'long'):
    top = ellipse_points(a, b, 180, 360, 30)
    top = top[top[:, 1] < f.hairline * b]
    if len(top) >= 3:
      fill_poly(img, f.to_image(top), f.hair)
  elif f.hair_style == 'hat':
    for _, poly in face_silhouette_parts(f)[-2:]:
      fill_poly(img, poly, f.accessory)
  lm = f.local_landmarks()
  _draw_eyes(img, f, lm, detail)
  _draw_nose(img, f, lm, detail)
  _draw_mouth(img, f, lm, detail)


def _draw_eyes(img, f: FaceSpec, lm: np.ndarray, detail: int) -> None:
  a = f.a
  half = f.eye_half_sizes()
  if f.brows and detail:
    for k in range(2):
      up = half[k, 1] + 0.16 * a
      pts = _bezier([lm[k, 0] - 1.1 * half[k, 0], lm[k, 1] - up + 0.05 * a], [lm[k, 0], lm[k, 1] - up - 0.1 * a],
                    [lm[k, 0] + 1.1 * half[k, 0], lm[k, 1] - up + 0.05 * a], 7)
      polyline(img, f.to_image(pts), scale_color(f.hair, 0.8), max(0.07 * a, 1))
  if f.glasses == 'sun':
    lens = f.lens_half_axes()
    polyline(img, f.to_image(np.array([lm[0], lm[1]])), (160, 160, 160), max(0.06 * a, 1))   # metal bridge
    for k in range(2):
      fill_ellipse(img, f.to_image(lm[k]), lens[k], f.angle, f.accessory)
    return
  pupil_r = f.pupil_radius()
  for k in range(2):
    centre = f.to_image(lm[k])
    if detail:
      fill_ellipse(img, centre, half[k], f.angle, f.sclera)
      fill_circle(img, centre, 2 * pupil_r[k], f.iris)
    fill_circle(img, centre, max(pupil_r[k], 0.5), f.pupil)
    if detail == 2 and pupil_r[k] >= 4:  # a highlight on the iris, clear of the pupil
      fill_circle(img, f.to_image(lm[k] + np.array([-0.92, -0.92]) * pupil_r[k]), 0.25 * pupil_r[k], (250, 250, 250))
  if f.glasses == 'clear' and detail:
    for k in range(2):
      ring(img, f.to_image(lm[k]), 1.5 * max(half[k, 0], 0.15 * a), f.accessory, max(0.04 * a, 1))
    mid = 0.5 * (lm[0] + lm[1])
    gap = 0.5 * abs(lm[1, 0] - lm[0, 0]) - 1.5 * max(half[:, 0].min(), 0.15 * a)
    if gap > 0:
      polyline(img, f.to_image(np.array([[mid[0] - gap, mid[1]], [mid[0] + gap, mid[1]]])), f.accessory,
               max(0.04 * a, 1))


def _draw_nose(img, f: FaceSpec, lm: np.ndarray, detail: int) -> None:
  a = f.a
  tip = lm[2]
  if detail:
    bridge_top = np.array([f._u(0.0, 0.5 * f.nose_depth), (f.eye_v + 0.08) * f.b])
    side = np.sign(np.cos(f.light)) or 1.0
    polyline(img, f.to_image(np.array([bridge_top, tip + np.array([-side * 0.6 * f.nose_r * a, 0.0])])),
             scale_color(f.shadow, 0.8), max(0.05 * a, 1))
  if detail == 2:
    for s in (-1.0, 1.0):
      nostril = tip + np.array([s * 1.3 * f.nose_r * a + 0.3 * a * np.sin(f.yaw), 0.7 * f.nose_r * a])
      fill_circle(img, f.to_image(nostril), 0.45 * f.nose_r * a, scale_color(f.shadow, 0.55))
  fill_circle(img, f.to_image(tip), max(f.nose_r * a, 0.5), f.nose)


def _draw_mouth(img, f: FaceSpec, lm: np.ndarray, detail: int) -> None:
  a = f.a
  left, right = lm[3], lm[4]
  mid = 0.5 * (left + right) + np.array([0.0, f.smile * a])
  up, lo = f.upper_lip * a, f.lower_lip * a
  if detail == 0:
    polyline(img, f.to_image(np.array([left, mid, right])), f.lip, max(up + lo, 1))
  else:
    upper = _bezier(left, mid - np.array([0.0, 2 * up]), right, 9)
    lower = _bezier(right, mid + np.array([0.0, 2 * lo]), left, 9)
    fill_poly(img, f.to_image(np.concatenate([upper, lower])), f.lip)
    if f.mouth_open:
      inset = 0.2 * (right - left)
      inner = np.concatenate([_bezier(left + inset, mid - np.array([0.0, 0.3 * up]), right - inset, 7),
                              _bezier(right - inset, mid + np.array([0.0, 1.2 * lo]), left + inset, 7)])
      fill_poly(img, f.to_image(inner), scale_color(f.lip, 0.3))
  r = f.corner_radius()
  for corner in (left, right):
    fill_circle(img, f.to_image(corner), max(r, 0.5), f.lip)


def draw_face_occupancy(occ: np.ndarray, f: FaceSpec, label: int) -> None:
  """Marks the face in the uint8 occupancy map: its silhouette parts 0 (they hide what is behind),
  then its head ellipse `label`. The same geometry as `draw_face`, without anti-aliasing."""
  for _, poly in face_silhouette_parts(f):
    fill_poly(occ, poly, (0,), cv2.LINE_8)
  fill_ellipse(occ, (f.cx, f.cy), (f.a, f.b), f.angle, (label,), cv2.LINE_8)


# ----------------------------------------------------------------------------------------------
# Occluders (drawn over a face, part of the annotation: they decide visibility).

@dataclasses.dataclass
class OccluderSpec:
  kind: str                 # 'rect' | 'blob' | 'mask' | 'bar'
  polygon: np.ndarray       # [P, 2] image coordinates
  color: Color
  detail_color: Color


def draw_occluder(img: np.ndarray, o: OccluderSpec) -> None:
  fill_poly(img, o.polygon, o.color)
  if o.kind in ('rect', 'mask') and len(o.polygon) >= 4:
    # A seam or stripe so that the occluder is not a flat patch.
    p = o.polygon
    polyline(img, [0.5 * (p[0] + p[1]), 0.5 * (p[len(p) // 2] + p[len(p) // 2 + 1])], o.detail_color, 1)


# ----------------------------------------------------------------------------------------------
# Distractors: face-sized, face-coloured things that are not faces (never annotated).

@dataclasses.dataclass
class DistractorSpec:
  kind: str                 # 'skin_blob' | 'two_dots' | 'back_of_head' | 'rings' | 'cyclops' | 'cartoon_eyes'
  cx: float
  cy: float
  a: float
  b: float
  angle: float
  color: Color
  color2: Color

  @property
  def box(self) -> np.ndarray:
    return ellipse_box(self.cx, self.cy, self.a, self.b, self.angle)


def draw_distractor(img: np.ndarray, d: DistractorSpec) -> None:
  c = (d.cx, d.cy)
  t = np.deg2rad(d.angle)
  rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])

  def at(u, v):
    return np.array([d.cx, d.cy]) + rot @ np.array([u, v])

  if d.kind == 'skin_blob':      # a hand, a knee, a bald head from behind: skin without a face
    fill_ellipse(img, c, (d.a, d.b), d.angle, scale_color(d.color, 0.8))
    fill_ellipse(img, at(0.08 * d.a, -0.05 * d.b), (0.88 * d.a, 0.9 * d.b), d.angle, d.color)
    for k in range(3):
      u = (k - 1) * 0.35 * d.a
      polyline(img, [at(u, 0.2 * d.b), at(u * 1.1, 0.95 * d.b)], scale_color(d.color, 0.7), max(0.04 * d.a, 1))
  elif d.kind == 'two_dots':     # buttons, an owl, a socket: a disc with two eyes and nothing else
    fill_ellipse(img, c, (d.a, d.b), d.angle, d.color)
    for s in (-1, 1):
      fill_circle(img, at(s * 0.4 * d.a, 0.0), 0.16 * d.a, d.color2)
  elif d.kind == 'back_of_head':  # hair all over, shoulders below
    fill_poly(img, [at(-2.2 * d.a, d.b + 1.8 * d.a), at(-1.6 * d.a, 0.9 * d.b), at(1.6 * d.a, 0.9 * d.b),
                    at(2.2 * d.a, d.b + 1.8 * d.a)], mix_color(d.color2, (120, 120, 120), 0.6))
    fill_ellipse(img, at(0.0, 0.75 * d.b), (0.45 * d.a, 0.3 * d.b), d.angle, scale_color(d.color, 0.8))
    fill_ellipse(img, c, (d.a, d.b), d.angle, d.color2)
  elif d.kind == 'rings':        # wheels, targets, clocks
    n = 3
    for k in range(n):
      fill_ellipse(img, c, (d.a * (1 - k / n), d.b * (1 - k / n)), d.angle, d.color if k % 2 == 0 else d.color2)
  elif d.kind == 'cyclops':      # skin, one eye, a mouth: the wrong structure
    fill_ellipse(img, c, (d.a, d.b), d.angle, d.color)
    fill_ellipse(img, at(0.0, -0.15 * d.b), (0.25 * d.a, 0.14 * d.a), d.angle, (235, 235, 235))
    fill_circle(img, at(0.0, -0.15 * d.b), 0.1 * d.a, d.color2)
    polyline(img, [at(-0.4 * d.a, 0.5 * d.b), at(0.4 * d.a, 0.5 * d.b)], scale_color(d.color, 0.5), max(0.1 * d.a, 1))
  elif d.kind == 'cartoon_eyes':  # two big eyes close together on a non-skin shape
    fill_ellipse(img, c, (d.a, d.b), d.angle, d.color)
    for s in (-1, 1):
      fill_ellipse(img, at(s * 0.22 * d.a, -0.3 * d.b), (0.2 * d.a, 0.3 * d.a), d.angle, (240, 240, 240))
      fill_circle(img, at(s * 0.22 * d.a, -0.25 * d.b), 0.09 * d.a, d.color2)
  else:
    raise ValueError(f'unknown distractor kind {d.kind!r}; known: {DISTRACTOR_KINDS}')


DISTRACTOR_KINDS = ('skin_blob', 'two_dots', 'back_of_head', 'rings', 'cyclops', 'cartoon_eyes')


# ----------------------------------------------------------------------------------------------
# Backgrounds and effects.

def _muted(colors: np.ndarray, saturation) -> np.ndarray:
  """Colours [..., 3] pulled towards their grey by `saturation` in [0, 1] (1 keeps them)."""
  grey = colors.mean(axis=-1, keepdims=True)
  return grey + np.asarray(saturation) * (colors - grey)


def draw_background(height: int, width: int, rng: np.random.Generator, skin_palette) -> np.ndarray:
  """A cluttered BGR uint8 background: a smooth colour field, blotchy texture, shapes, lines, text."""
  # A smooth colour field plus blotchy texture, both made at low resolution and scaled up once.
  cell = int(rng.integers(3, 20))
  small = (max(width // cell, 2), max(height // cell, 2))
  grid = _muted(rng.uniform(0, 255, (int(rng.integers(2, 5)), int(rng.integers(2, 5)), 3)), rng.uniform(0.15, 0.8))
  field = cv2.resize(grid.astype(np.float32), small, interpolation=cv2.INTER_CUBIC)
  tex = rng.normal(0.0, float(rng.uniform(3, 25)), (small[1], small[0], 1)).astype(np.float32)
  field += tex * rng.uniform(0.6, 1.0, 3).astype(np.float32)
  img = cv2.resize(np.clip(field, 0, 255).astype(np.uint8), (width, height), interpolation=cv2.INTER_CUBIC)
  # Shapes: every parameter drawn up front (one generator call per array, not per shape).
  n = int(rng.integers(10, 60))
  diag = float(np.hypot(height, width))
  kinds = rng.choice(7, n, p=[0.22, 0.2, 0.14, 0.16, 0.08, 0.05, 0.15])
  colors = _muted(rng.uniform(0, 255, (n, 3)), rng.uniform(0.1, 1.0, (n, 1)))
  skin = rng.random(n) < 0.12
  sizes = np.exp(rng.uniform(np.log(4), np.log(0.5 * diag), n))
  xy = rng.uniform(-0.1, 1.1, (n, 2)) * np.array([width, height])
  thick = np.where(rng.random(n) < 0.6, -1, rng.integers(1, 6, n))
  u = rng.random((n, 4))                       # shape-specific extras
  jitter = rng.normal(0.0, 1.0, (n, 10, 2))    # polygon vertices, blob offsets
  for k in range(n):
    color = skin_palette(rng) if skin[k] else tuple(colors[k])
    size, (x, y), th = float(sizes[k]), xy[k], int(thick[k])
    kind = kinds[k]
    if kind == 0:      # rectangle, sometimes rotated
      ang = np.pi * u[k, 0] if u[k, 1] < 0.4 else 0.0
      w, h = size, size * (0.2 + 1.8 * u[k, 2])
      corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
      rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
      pts = corners @ rot.T + xy[k]
      if th < 0:
        fill_poly(img, pts, color)
      else:
        polyline(img, pts, color, th, closed=True)
    elif kind == 1:    # ellipse or circle, or an arc of one
      axes = (0.5 * size, 0.5 * size * (0.3 + 0.7 * u[k, 0]))
      if th < 0:
        fill_ellipse(img, (x, y), axes, 180 * u[k, 1], color)
      else:
        ellipse_arc(img, (x, y), axes, 180 * u[k, 1], 0, 90 + 270 * u[k, 2], color, th)
    elif kind == 2:    # polygon
      m = 3 + int(4 * u[k, 0])
      fill_poly(img, xy[k] + np.clip(jitter[k, :m], -1.5, 1.5) * 0.33 * size, color)
    elif kind == 3:    # line
      ang = np.pi * u[k, 0]
      polyline(img, [xy[k], xy[k] + np.array([np.cos(ang), np.sin(ang)]) * size], color, max(th, 1))
    elif kind == 4:    # stripes (fences, blinds, shelves)
      ang = np.pi * u[k, 0]
      d = np.array([np.cos(ang), np.sin(ang)])
      gap = (3 + 12 * u[k, 1]) * np.array([-d[1], d[0]])
      for j in range(3 + int(9 * u[k, 2])):
        polyline(img, [xy[k] + gap * j, xy[k] + gap * j + d * size], color, max(th, 1))
    elif kind == 5:    # text
      chars = ''.join(chr(33 + int(58 * v)) for v in (0.5 + 0.25 * jitter[k, :2 + int(6 * u[k, 0])].ravel()) % 1)
      cv2.putText(img, chars, (int(x), int(y)), int(8 * u[k, 1]), 0.3 + 2.0 * u[k, 2], _c(color),
                  1 + int(3 * u[k, 3]), _AA)
    else:              # blob cluster (foliage, crowds of things)
      for j in range(3 + int(7 * u[k, 0])):
        fill_circle(img, xy[k] + 0.3 * size * jitter[k, j], (0.05 + 0.15 * ((u[k, 1] + 0.37 * j) % 1)) * size,
                    scale_color(color, 0.7 + 0.5 * ((u[k, 2] + 0.61 * j) % 1)))
  return img


def blur_region(img: np.ndarray, box, sigma: float) -> None:
  """Gaussian blur of `sigma` px inside a soft ellipse around `box` (x1 y1 x2 y2), in place.

  The blurred patch fades out towards its border, so no rectangular seam gives the face away;
  large sigmas are done at a reduced resolution.
  """
  h, w = img.shape[:2]
  pad = 0.35 * max(box[2] - box[0], box[3] - box[1]) + 3 * sigma
  x1, y1 = int(max(np.floor(box[0] - pad), 0)), int(max(np.floor(box[1] - pad), 0))
  x2, y2 = int(min(np.ceil(box[2] + pad), w)), int(min(np.ceil(box[3] + pad), h))
  if x2 - x1 < 2 or y2 - y1 < 2:
    return
  roi = img[y1:y2, x1:x2]
  rw, rh = x2 - x1, y2 - y1
  if sigma > 3:
    f = sigma / 1.5
    small = cv2.resize(roi, (max(int(rw / f), 2), max(int(rh / f), 2)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 1.5)
    blurred = cv2.resize(small, (rw, rh), interpolation=cv2.INTER_LINEAR)
  else:
    blurred = cv2.GaussianBlur(roi, (0, 0), sigma)
  # Soft mask: an ellipse over the face and its surroundings on a 32 x 32 grid, smoothed and scaled.
  # The ROI may be cut by the image border: place the ellipse where the full patch would have it.
  full = np.array([box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad])
  grid = np.zeros((32, 32), np.float32)
  sx, sy = 32 / rw, 32 / rh
  cxy = ((0.5 * (full[0] + full[2]) - x1) * sx, (0.5 * (full[1] + full[3]) - y1) * sy)
  axes = (0.5 * (full[2] - full[0]) * sx * 0.8, 0.5 * (full[3] - full[1]) * sy * 0.8)
  fill_ellipse(grid, cxy, axes, 0.0, (1.0,), cv2.LINE_8)
  grid = cv2.GaussianBlur(grid, (0, 0), 3.0)
  mask = cv2.resize(grid, (rw, rh), interpolation=cv2.INTER_LINEAR)
  roi[...] = cv2.blendLinear(blurred, roi, mask, 1.0 - mask)


def photometric(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Camera-like effects on the whole image: exposure, a colour cast, grey, blur, noise, JPEG."""
  if rng.random() < 0.6:
    alpha, beta = float(rng.uniform(0.7, 1.3)), float(rng.uniform(-30, 30))
    img = cv2.addWeighted(img, alpha, img, 0.0, beta)
  if rng.random() < 0.3:
    cast = rng.uniform(0.85, 1.15, 3)
    img = cv2.transform(img, np.diag(cast).astype(np.float32))
  if rng.random() < 0.07:
    img = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
  if rng.random() < 0.15:
    img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.4, 1.2)))
  if rng.random() < 0.6:     # sensor noise, uniform in [-amp, amp] per channel
    amp = int(rng.integers(3, 13))
    noise = (np.arange(256) % (2 * amp + 1)) - amp          # random bytes -> offsets, via lookup tables
    words = rng.bit_generator.random_raw(-(-img.size // 8))     # raw 64-bit words: the fastest random bytes
    raw = words.view(np.uint8)[:img.size].reshape(img.shape)
    img = cv2.add(img, cv2.LUT(raw, np.maximum(noise, 0).astype(np.uint8)))
    img = cv2.subtract(img, cv2.LUT(raw, np.maximum(-noise, 0).astype(np.uint8)))
  if rng.random() < 0.2:
    ok, buf = cv2.imencode('.jpg', img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(25, 90))])
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
  return img
