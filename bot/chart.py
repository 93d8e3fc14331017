"""A small PNG chart of ``bot.stats.Stats`` for `/stats`, drawn with the standard library only.

Why not a plotting library: the chart is three panels of bars with a few labels, and keel's
promise is a light process that starts fast and downloads nothing. matplotlib would bring numpy,
Pillow and a font cache it builds on first use (seconds, on the first /stats) for that. Here a
canvas of RGB pixels, a 5x7 bitmap font and a PNG encoder (zlib + CRC from the standard library)
do it in ~200 lines, deterministically: the same numbers always give the same bytes. Imported
only when /stats is asked, so it costs nothing at start-up.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

from bot.stats import Stats

Color = tuple[int, int, int]

WHITE: Color = (255, 255, 255)
INK: Color = (40, 40, 40)
GRID: Color = (225, 225, 225)
PALETTE: tuple[Color, ...] = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
                              (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127),
                              (188, 189, 34), (23, 190, 207))
STATUS_COLORS: dict[str, Color] = {
    "completed": (44, 160, 44), "failed": (214, 39, 40), "cancelled": (127, 127, 127),
    "budget_exceeded": (255, 127, 14), "timeout": (148, 103, 189), "step_limit": (140, 86, 75),
    "waiting_human": (31, 119, 180), "running": (23, 190, 207), "interrupted": (188, 189, 34)}

_GLYPHS: dict[str, tuple[str, ...]] = {
    "0": (" ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### "),
    "1": ("  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "),
    "2": (" ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####"),
    "3": ("#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### "),
    "4": ("   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # "),
    "5": ("#####", "#    ", "#### ", "    #", "    #", "#   #", " ### "),
    "6": ("  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### "),
    "7": ("#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   "),
    "8": (" ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### "),
    "9": (" ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  "),
    "A": (" ### ", "#   #", "#   #", "#####", "#   #", "#   #", "#   #"),
    "B": ("#### ", "#   #", "#   #", "#### ", "#   #", "#   #", "#### "),
    "C": (" ### ", "#   #", "#    ", "#    ", "#    ", "#   #", " ### "),
    "D": ("#### ", "#   #", "#   #", "#   #", "#   #", "#   #", "#### "),
    "E": ("#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#####"),
    "F": ("#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#    "),
    "G": (" ### ", "#   #", "#    ", "# ###", "#   #", "#   #", " ####"),
    "H": ("#   #", "#   #", "#   #", "#####", "#   #", "#   #", "#   #"),
    "I": (" ### ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "),
    "J": ("  ###", "   # ", "   # ", "   # ", "   # ", "#  # ", " ##  "),
    "K": ("#   #", "#  # ", "# #  ", "##   ", "# #  ", "#  # ", "#   #"),
    "L": ("#    ", "#    ", "#    ", "#    ", "#    ", "#    ", "#####"),
    "M": ("#   #", "## ##", "# # #", "# # #", "#   #", "#   #", "#   #"),
    "N": ("#   #", "#   #", "##  #", "# # #", "#  ##", "#   #", "#   #"),
    "O": (" ### ", "#   #", "#   #", "#   #", "#   #", "#   #", " ### "),
    "P": ("#### ", "#   #", "#   #", "#### ", "#    ", "#    ", "#    "),
    "Q": (" ### ", "#   #", "#   #", "#   #", "# # #", "#  # ", " ## #"),
    "R": ("#### ", "#   #", "#   #", "#### ", "# #  ", "#  # ", "#   #"),
    "S": (" ####", "#    ", "#    ", " ### ", "    #", "    #", "#### "),
    "T": ("#####", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  "),
    "U": ("#   #", "#   #", "#   #", "#   #", "#   #", "#   #", " ### "),
    "V": ("#   #", "#   #", "#   #", "#   #", "#   #", " # # ", "  #  "),
    "W": ("#   #", "#   #", "#   #", "# # #", "# # #", "# # #", " # # "),
    "X": ("#   #", "#   #", " # # ", "  #  ", " # # ", "#   #", "#   #"),
    "Y": ("#   #", "#   #", " # # ", "  #  ", "  #  ", "  #  ", "  #  "),
    "Z": ("#####", "    #", "   # ", "  #  ", " #   ", "#    ", "#####"),
    " ": ("     ",) * 7,
    ".": ("     ", "     ", "     ", "     ", "     ", " ##  ", " ##  "),
    ",": ("     ", "     ", "     ", "     ", " ##  ", "  #  ", " #   "),
    "$": ("  #  ", " ####", "# #  ", " ### ", "  # #", "#### ", "  #  "),
    "%": ("##   ", "##  #", "   # ", "  #  ", " #   ", "#  ##", "   ##"),
    "-": ("     ", "     ", "     ", "#####", "     ", "     ", "     "),
    "_": ("     ", "     ", "     ", "     ", "     ", "     ", "#####"),
    ":": ("     ", " ##  ", " ##  ", "     ", " ##  ", " ##  ", "     "),
    "/": ("     ", "    #", "   # ", "  #  ", " #   ", "#    ", "     "),
    "(": ("   # ", "  #  ", " #   ", " #   ", " #   ", "  #  ", "   # "),
    ")": (" #   ", "  #  ", "   # ", "   # ", "   # ", "  #  ", " #   "),
    "?": (" ### ", "#   #", "    #", "   # ", "  #  ", "     ", "  #  "),
}


class Canvas:
    """RGB pixels, rectangles and text, encoded as a PNG."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(WHITE) * (width * height))

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        """Fill [x0, x1) x [y0, y1), clipped to the canvas."""
        x0, x1 = max(0, min(x0, x1)), min(self.width, max(x0, x1))
        y0, y1 = max(0, min(y0, y1)), min(self.height, max(y0, y1))
        if x0 >= x1:
            return
        row = bytes(color) * (x1 - x0)
        for y in range(y0, y1):
            start = (y * self.width + x0) * 3
            self.pixels[start:start + len(row)] = row

    def text(self, x: int, y: int, text: str, color: Color = INK, scale: int = 2) -> int:
        """Draw ``text`` (upper-cased) with its top-left at (x, y); returns the x after it."""
        for ch in text.upper():
            glyph = _GLYPHS.get(ch, _GLYPHS["?"])
            for gy, line in enumerate(glyph):
                for gx, cell in enumerate(line):
                    if cell == "#":
                        self.rect(x + gx * scale, y + gy * scale, x + (gx + 1) * scale,
                                  y + (gy + 1) * scale, color)
            x += 6 * scale
        return x

    def png(self) -> bytes:
        stride = self.width * 3
        raw = b"".join(b"\x00" + bytes(self.pixels[y * stride:(y + 1) * stride])
                       for y in range(self.height))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return (struct.pack(">I", len(data)) + kind + data
                    + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


WIDTH, HEIGHT = 980, 760
PLOT_X0, PLOT_X1 = 100, 700
LEGEND_X = 720


def render_png(stats: Stats) -> bytes:
    """Three panels, one bar per day: spend per agent (stacked), runs by status (stacked), and
    the cache hit ratio."""
    canvas = Canvas(WIDTH, HEIGHT)
    first, last = stats.days[0].day, stats.days[-1].day
    canvas.text(PLOT_X0, 12, f"KEEL: LAST {len(stats.days)} DAYS ({first} TO {last}, UTC)",
                scale=2)
    agents = stats.agents
    agent_colors = {a: PALETTE[i % len(PALETTE)] for i, a in enumerate(agents)}
    _panel(canvas, 50, 240, "SPEND PER AGENT PER DAY",
           [[(agent_colors[a], d.spend_by_agent.get(a, 0.0)) for a in agents]
            for d in stats.days],
           top_label=lambda v: f"${v:.4f}", stats=stats,
           legend=[(agent_colors[a], f"{a} ${sum(d.spend_by_agent.get(a, 0.0) for d in stats.days):.4f}")
                   for a in agents])
    statuses = stats.statuses
    status_colors = {s: STATUS_COLORS.get(s, PALETTE[i % len(PALETTE)])
                     for i, s in enumerate(statuses)}
    _panel(canvas, 290, 480, "RUNS BY STATUS PER DAY",
           [[(status_colors[s], float(d.runs_by_status.get(s, 0))) for s in statuses]
            for d in stats.days],
           top_label=lambda v: f"{v:.0f}", stats=stats,
           legend=[(status_colors[s], f"{s} {sum(d.runs_by_status.get(s, 0) for d in stats.days)}")
                   for s in statuses])
    _panel(canvas, 530, 700, "CACHE HIT RATIO PER DAY",
           [[(PALETTE[0], d.cache_hit_ratio or 0.0)] for d in stats.days],
           top_label=lambda _: "100%", stats=stats, fixed_max=1.0, legend=[])
    return canvas.png()


def _panel(canvas: Canvas, top: int, bottom: int, title: str,
           bars: list[list[tuple[Color, float]]], *, top_label: Callable[[float], str], stats: Stats,
           legend: list[tuple[Color, str]], fixed_max: float | None = None) -> None:
    canvas.text(PLOT_X0, top, title, scale=2)
    y0, y1 = top + 30, bottom  # plot area (y grows downwards)
    peak = fixed_max or max((sum(v for _, v in day) for day in bars), default=0.0)
    label = top_label(peak) if peak else "0"
    canvas.text(PLOT_X0 - 8 - 6 * len(label), y0, label, scale=1)
    canvas.text(PLOT_X0 - 14, y1 - 7, "0", scale=1)
    for frac in (0.0, 0.5, 1.0):
        y = int(y1 - frac * (y1 - y0))
        canvas.rect(PLOT_X0, y, PLOT_X1, y + 1, GRID if frac else INK)
    slot = (PLOT_X1 - PLOT_X0) / max(1, len(bars))
    for i, day in enumerate(bars):
        x0 = int(PLOT_X0 + i * slot + slot * 0.15)
        x1 = int(PLOT_X0 + (i + 1) * slot - slot * 0.15)
        base = float(y1)
        for color, value in day:
            if value <= 0 or peak <= 0:
                continue
            height = value / peak * (y1 - y0)
            canvas.rect(x0, int(base - height), x1, int(base), color)
            base -= height
        canvas.text(x0, y1 + 4, stats.days[i].day[8:10], scale=1)
    for j, (color, text) in enumerate(legend[:12]):
        y = y0 + j * 14
        canvas.rect(LEGEND_X, y, LEGEND_X + 10, y + 10, color)
        canvas.text(LEGEND_X + 16, y + 2, text[:40], scale=1)
