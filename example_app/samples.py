"""Stand-in media for simulated tasks, made in code.

``flask musiccallback simulate`` sends callbacks whose links point at a host that does not exist
(:data:`~flask_musiccallback.simulate.SIMULATED_MEDIA_HOST`), so that nothing simulated is ever
fetched from a real server, unless ``MUSICCALLBACK_SIMULATED_MEDIA_URL`` moves them: the example
app moves them under its own ``/samples/`` and answers them there (views.py), as the provider's
CDN would: a short tune for an audio link (a track, a WAV, a stem), a cover for an image link (a
track's cover, a cover task's images), a two-second video for a video link (see mp4.py), each
different per link. So the media archive fetches simulated media over real HTTP, through all of
its checks, as it fetches the provider's; and the page plays them from here until they are
archived.

A link's name alone decides the kind, whatever its folder: the names the simulator makes
(``{uuid}.mp3``, ``{uuid}-vocal.mp3``, ``image_{id}.jpeg``, ``{uuid}-cover-1.png``,
``{uuid}.mp4``, ``stream/{id}``) and any other. The content is what the app can make, not what the
suffix says: a WAV for an ``.mp3`` link, an SVG for a ``.jpeg`` one, with its true media type.
"""

from __future__ import annotations

import array
import colorsys
import hashlib
import io
import math
import wave
from functools import lru_cache
from pathlib import PurePosixPath

from . import mp4

RATE = 16000
#: A major pentatonic scale over two octaves, in semitones above the root.
_SCALE = (0, 2, 4, 7, 9, 12, 14, 16, 19, 21)
_NOTE_SECONDS = 0.3
_NOTES = 16


def _seed(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


@lru_cache(maxsize=32)
def tune(name: str) -> bytes:
    """A WAV file of a few seconds: a little pentatonic melody over a drone, seeded by ``name``."""
    seed = _seed(name)
    root = 220.0 * 2 ** ((seed[0] % 7) / 12)
    notes = [root * 2 ** (_SCALE[byte % len(_SCALE)] / 12) for byte in seed[1 : _NOTES + 1]]
    per_note = int(RATE * _NOTE_SECONDS)
    total = per_note * len(notes)
    samples = array.array("h", bytes(2 * total))
    two_pi = 2 * math.pi
    for index, frequency in enumerate(notes):
        start = index * per_note
        for offset in range(per_note):
            t = offset / RATE
            envelope = math.exp(-5 * t) * min(1.0, offset / 80)
            value = 0.45 * envelope * math.sin(two_pi * frequency * t)
            value += 0.12 * math.sin(two_pi * root / 2 * (start + offset) / RATE)
            samples[start + offset] = int(32767 * value)
    fade = RATE // 4
    for offset in range(fade):
        samples[total - 1 - offset] = int(samples[total - 1 - offset] * offset / fade)
    out = io.BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(RATE)
        file.writeframes(samples.tobytes())
    return out.getvalue()


def cover(name: str) -> bytes:
    """An SVG cover: a two-colour gradient, a sun and a few waves, seeded by ``name``."""
    seed = _seed(name)
    hue = seed[0] * 360 // 256
    other = (hue + 40 + seed[1] % 80) % 360
    sun_x, sun_y, sun_r = 120 + seed[2] % 160, 90 + seed[3] % 80, 40 + seed[4] % 40
    waves = "".join(
        f'<path d="M0 {y} Q 100 {y - 26 + seed[6 + i] % 20} 200 {y} T 400 {y} V 400 H 0 Z" '
        f'fill="hsl({(other + 20 * i) % 360} 55% {30 - 5 * i}%)" fill-opacity="0.55"/>'
        for i, y in enumerate((250, 290, 330))
    )
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 400 400" width="400" height="400">'
        '<defs><linearGradient id="sky" x1="0" y1="0" x2="0" y2="1">'
        f'<stop offset="0" stop-color="hsl({hue} 70% 62%)"/>'
        f'<stop offset="1" stop-color="hsl({other} 65% 40%)"/>'
        "</linearGradient></defs>"
        '<rect width="400" height="400" fill="url(#sky)"/>'
        f'<circle cx="{sun_x}" cy="{sun_y}" r="{sun_r}" fill="hsl({(hue + 180) % 360} 90% 85%)" '
        'fill-opacity="0.9"/>'
        f"{waves}</svg>"
    )
    return svg.encode()


#: The sample video's picture (whole macroblocks of 16 pixels), frames per second, and length.
VIDEO_SIZE = (160, 96)
VIDEO_FPS = 8
VIDEO_SECONDS = 2

_Colour = tuple[int, int, int]


def _ycbcr(hue: float, lightness: float, saturation: float) -> _Colour:
    """An HSL colour (hue in degrees, the others 0-1) in the video range of BT.601."""
    r, g, b = colorsys.hls_to_rgb(hue / 360, lightness, saturation)
    return (
        round(16 + 65.481 * r + 128.553 * g + 24.966 * b),
        round(128 - 37.797 * r - 74.203 * g + 112.0 * b),
        round(128 + 112.0 * r - 93.786 * g - 18.214 * b),
    )


@lru_cache(maxsize=8)
def video(name: str) -> bytes:
    """An MP4 of a few seconds in the cover's manner: a sun rising out of moving waves under a
    two-colour sky, seeded by ``name``."""
    seed = _seed(name)
    hue = seed[0] * 360 // 256
    other = (hue + 40 + seed[1] % 80) % 360
    width, height = VIDEO_SIZE
    sky = [
        _ycbcr(hue + (other - hue) * row / height, 0.62 - 0.22 * row / height, 0.68)
        for row in range(height)
    ]
    sun, sea = _ycbcr((hue + 180) % 360, 0.85, 0.9), _ycbcr(other, 0.3, 0.55)
    sun_x, radius = 40 + seed[2] % 80, 12 + seed[3] % 8
    count = VIDEO_FPS * VIDEO_SECONDS
    frames = []
    for index in range(count):
        time = index / count
        sun_y = height * (0.85 - 0.55 * time)
        phase = 2 * math.pi * time
        waves = [height * 0.7 + 5 * math.sin(3 * math.pi * x / width + phase) for x in range(width)]
        pixels = [
            [
                sea
                if y >= waves[x]
                else sun
                if (x - sun_x) ** 2 + (y - sun_y) ** 2 <= radius**2
                else sky[y]
                for x in range(width)
            ]
            for y in range(height)
        ]
        # 4:2:0: one chroma sample for each two by two pixels, taken from its top left one.
        corners = [pixels[y][x] for y in range(0, height, 2) for x in range(0, width, 2)]
        frames.append(
            mp4.Frame(
                y=bytes(pixel[0] for row in pixels for pixel in row),
                cb=bytes(pixel[1] for pixel in corners),
                cr=bytes(pixel[2] for pixel in corners),
            )
        )
    return mp4.encode(frames, width, height, VIDEO_FPS)


#: Link suffixes answered with a cover; a track's cover is also named ``image_<id>``.
_IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".webp"})


def render(path: str) -> tuple[bytes, str] | None:
    """The sample for a simulated link's path and its media type: an image link (``image_<id>``,
    or an image's suffix) is a cover, ``.mp4`` a video, any other name audio; ``None`` for a path
    with no name."""
    name = path.rsplit("/", 1)[-1]
    if not name:
        return None
    suffix = PurePosixPath(name).suffix.lower()
    seed = PurePosixPath(name).stem.removeprefix("image_")
    if name.startswith("image_") or suffix in _IMAGE_SUFFIXES:
        return cover(seed), "image/svg+xml"
    if suffix == ".mp4":
        return video(seed), "video/mp4"
    return tune(seed), "audio/wav"
