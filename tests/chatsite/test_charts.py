"""The console's SVG charts: bars to scale, text escaped."""
import re

from chatsite.console.charts import HEIGHT, stacked_bars


def heights(svg: str, name: str) -> list[float]:
    return [float(h) for h in re.findall(rf'<rect class="{name}" [^>]*height="([\d.]+)"', svg)]


def test_bars_stack_and_scale_to_a_round_top():
    svg = stacked_bars(labels=["a", "b"], series={"free": [30, 10], "plus": [10, 0]}, title="t", unit="req")
    free, plus = heights(svg, "free"), heights(svg, "plus")
    assert len(free) == 2 and len(plus) == 1  # a zero draws nothing
    assert free[0] == 3 * free[1] and plus[0] == free[1]
    assert ">50<" in svg  # 40 at most: the axis goes to 50
    assert free[0] + plus[0] < HEIGHT


def test_tiny_values_still_show():
    svg = stacked_bars(labels=["d"], series={"cost": [0.000062]}, title="cost", unit="USD")
    assert heights(svg, "cost")[0] > 50  # 0.000062 of a 0.0001 top


def test_labels_and_titles_are_escaped():
    svg = stacked_bars(labels=["<script>alert(1)</script>"], series={"free": [1]}, title='"><img src=x>', unit="u")
    assert "<script>" not in svg and "<img" not in svg
    assert "&lt;script&gt;" in svg
