"""The daily-usage bar chart, laid out on the server and drawn as inline SVG.

No JavaScript and no CDN (the machine may be offline). All geometry is
integer arithmetic on the invoice's own DayLine numbers.
"""

from dataclasses import dataclass

from invoices.formatting import format_credits, format_usd
from invoices.selectors import DayLine

WIDTH = 760
HEIGHT = 240
MARGIN_LEFT = 84
MARGIN_RIGHT = 12
MARGIN_TOP = 16
MARGIN_BOTTOM = 34


@dataclass(frozen=True)
class Bar:
    x: int
    y: int
    width: int
    height: int
    label_x: int
    day: str
    day_label: str
    show_label: bool
    credits: int
    title: str


@dataclass(frozen=True)
class Tick:
    y: int
    label: str


@dataclass(frozen=True)
class DailyUsageChart:
    width: int
    height: int
    plot_left: int
    plot_right: int
    plot_top: int
    plot_bottom: int
    bars: list[Bar]
    ticks: list[Tick]
    max_credits: int
    description: str

    @property
    def empty(self) -> bool:
        return self.max_credits == 0

    @property
    def center_x(self) -> int:
        return (self.plot_left + self.plot_right) // 2

    @property
    def center_y(self) -> int:
        return (self.plot_top + self.plot_bottom) // 2


def nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 × 10^k that is ≥ value (≥ 1)."""
    magnitude = 1
    while True:
        for step in (1, 2, 5):
            if step * magnitude >= value:
                return step * magnitude
        magnitude *= 10


def daily_usage_chart(days: list[DayLine]) -> DailyUsageChart:
    count = max(len(days), 1)
    plot_width = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_height = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    slot = plot_width // count
    bar_width = max(2, slot * 7 // 10)
    peak = max((day.used_credits for day in days), default=0)
    top = nice_ceiling(peak)
    plot_bottom = MARGIN_TOP + plot_height
    label_every = 1 if count <= 16 else 5

    bars = []
    for index, day in enumerate(days):
        height = day.used_credits * plot_height // top
        if day.used_credits > 0:
            height = max(height, 1)
        x = MARGIN_LEFT + index * slot + (slot - bar_width) // 2
        number = day.day.day
        bars.append(
            Bar(
                x=x,
                y=plot_bottom - height,
                width=bar_width,
                height=height,
                label_x=x + bar_width // 2,
                day=day.day.isoformat(),
                day_label=str(number),
                show_label=number == 1 or number % label_every == 0,
                credits=day.used_credits,
                title=(
                    f"{day.day.isoformat()}: {format_credits(day.used_credits)} credits "
                    f"({format_usd(day.used_usd)}), {format_credits(day.calls)} calls"
                ),
            )
        )

    steps = 4 if top >= 4 else top
    ticks = [
        Tick(y=plot_bottom - plot_height * i // steps, label=format_credits(top * i // steps)) for i in range(steps + 1)
    ]
    busiest = max(days, key=lambda d: d.used_credits, default=None)
    description = (
        "No usage in this period."
        if peak == 0 or busiest is None
        else f"Credits used per day; the busiest day was {busiest.day.isoformat()} "
        f"with {format_credits(busiest.used_credits)} credits."
    )
    return DailyUsageChart(
        width=WIDTH,
        height=HEIGHT,
        plot_left=MARGIN_LEFT,
        plot_right=WIDTH - MARGIN_RIGHT,
        plot_top=MARGIN_TOP,
        plot_bottom=plot_bottom,
        bars=bars,
        ticks=ticks,
        max_credits=peak,
        description=description,
    )
