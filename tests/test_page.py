"""The web page in real Chromium, one behaviour per test, each leaving a screenshot under tests/artifacts/.

The page (genoembed/serve_static/index.html) is driven as a user would: paste, click, read the SVG it draws. The
numbers it shows are checked against the library (the same store searched in Python) and the GenBank features.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("selenium")

from conftest import CHLOROPLAST_FASTA, CHLOROPLAST_GENBANK  # noqa: E402
from test_serve import browser_or_skip, running  # noqa: E402

from genoembed.build import index  # noqa: E402
from genoembed.embedders.kmer import KmerEmbedder  # noqa: E402
from genoembed.serve import ServedStore  # noqa: E402
from genoembed.tiles import TilingSpec  # noqa: E402

pytestmark = pytest.mark.slow
ARTIFACTS = Path(__file__).parent / "artifacts"  # git-ignored: screenshots of the page as each test left it
CHROM = "NC_000932.1"
YCF2 = f"{CHROM}:90001-91000"  # inverted repeat: its best other hit is the copy on the opposite strand


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    store = index(CHLOROPLAST_FASTA, tmp_path_factory.mktemp("page") / "chloro", embedder=KmerEmbedder(k=4),
                  tiling=TilingSpec(strands="+"), annotations=[CHLOROPLAST_GENBANK], shard_rows=128)
    with running({"chloro": ServedStore("chloro", store.root)}) as base:
        yield base


@pytest.fixture
def page(url, request):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = browser_or_skip()
    browser.set_window_size(1200, 900)
    browser.get(url + "/")
    WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#store option"))
    yield browser
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"{request.node.name}.png"
    browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
    browser.quit()


def _search(browser, text: str, k: int = 5, exclude_self: bool | None = None) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    query = browser.find_element(By.ID, "query")
    query.clear()
    query.send_keys(text)
    box = browser.find_element(By.ID, "k")
    box.clear()
    box.send_keys(str(k))
    checkbox = browser.find_element(By.ID, "exclude-self")
    if exclude_self is not None and checkbox.is_selected() != exclude_self:
        checkbox.click()
    browser.find_element(By.ID, "search").click()
    WebDriverWait(browser, 30).until(
        lambda b: "searching" not in b.find_element(By.ID, "status").text and b.find_element(By.ID, "status").text)


def _attr(elements, name: str) -> list[str]:
    return [element.get_attribute(name) for element in elements]


def test_axis_has_ticks_in_order_with_labels(page):
    from selenium.webdriver.common.by import By

    _search(page, YCF2)
    ticks = [int(value) for value in _attr(page.find_elements(By.CSS_SELECTOR, "#track line.tick"), "data-position")]
    assert len(ticks) >= 4 and ticks == sorted(ticks) and ticks[0] == 0
    xs = [float(x) for x in _attr(page.find_elements(By.CSS_SELECTOR, "#track line.tick"), "x1")]
    assert xs == sorted(xs)  # positions drawn left to right in proportion
    labels = [label.text for label in page.find_elements(By.CSS_SELECTOR, "#track text.tick-label")]
    assert any(label.endswith("kb") for label in labels)


def test_hits_show_their_strand(page):
    from selenium.webdriver.common.by import By

    _search(page, YCF2, k=3)
    rows = page.find_elements(By.CSS_SELECTOR, "#hits tbody tr")
    strands = {row.get_attribute("data-strand") for row in rows}
    assert "-" in strands  # the other inverted-repeat copy matches on the opposite strand
    bars = page.find_elements(By.CSS_SELECTOR, "#track rect.hit")
    assert sorted(_attr(bars, "data-strand")) == sorted(row.get_attribute("data-strand") for row in rows)
    arrows = page.find_elements(By.CSS_SELECTOR, "#track polygon.strand")
    assert len(page.find_elements(By.CSS_SELECTOR, "#track polygon.strand.minus")) == \
        sum(row.get_attribute("data-strand") == "-" for row in rows) and len(arrows) == len(rows)


def test_feature_track_draws_the_stores_annotations(page):
    from selenium.webdriver.common.by import By

    from genoembed.features import read_annotations

    _search(page, YCF2, k=2)
    features = page.find_elements(By.CSS_SELECTOR, "#track rect.feature")
    want = read_annotations(CHLOROPLAST_GENBANK).num_rows
    assert len(features) == want  # every feature of the one contig drawn
    titles = " ".join(feature.find_element(By.TAG_NAME, "title").get_attribute("textContent") for feature in features)
    assert "ycf2" in titles and "psbA" in titles


def test_each_query_has_its_colour_and_a_legend(page):
    from selenium.webdriver.common.by import By

    _search(page, f"{CHROM}:1-1000\n{CHROM}:20001-21000", k=3)
    legend = page.find_elements(By.CSS_SELECTOR, "#legend span.entry")
    assert [entry.get_attribute("data-query") for entry in legend] == [f"{CHROM}:1-1000", f"{CHROM}:20001-21000"]
    colours = {}
    for bar in page.find_elements(By.CSS_SELECTOR, "#track rect.hit"):
        colours.setdefault(bar.get_attribute("data-query"), set()).add(bar.get_attribute("fill"))
    assert all(len(fills) == 1 for fills in colours.values()) and len(set.union(*colours.values())) == 2
    swatches = page.execute_script(
        "return [...document.querySelectorAll('#legend span.swatch')].map(s => getComputedStyle(s).backgroundColor)")
    assert len(set(swatches)) == 2


def test_clicking_a_hit_zooms_to_it(page):
    from selenium.webdriver.common.by import By

    _search(page, YCF2, k=3)
    first = page.find_elements(By.CSS_SELECTOR, "#hits tbody tr")[0]
    start, end = int(first.get_attribute("data-start")), int(first.get_attribute("data-end"))
    first.click()
    lane = page.find_element(By.CSS_SELECTOR, "#track g.lane")
    shown = int(lane.get_attribute("data-start")), int(lane.get_attribute("data-end"))
    assert shown[0] <= start and end <= shown[1] and shown[1] - shown[0] <= 10 * (end - start)
    ticks = [int(value) for value in _attr(page.find_elements(By.CSS_SELECTOR, "#track line.tick"), "data-position")]
    assert ticks and shown[0] <= ticks[0] and ticks[-1] <= shown[1]
    page.find_element(By.ID, "zoom-out").click()
    assert page.find_element(By.CSS_SELECTOR, "#track g.lane").get_attribute("data-start") == "0"


def test_region_queries_leave_themselves_out_by_default(page):
    from selenium.webdriver.common.by import By

    assert page.find_element(By.ID, "exclude-self").is_selected()
    _search(page, YCF2, k=3)
    for row in page.find_elements(By.CSS_SELECTOR, "#hits tbody tr"):
        start, end = int(row.get_attribute("data-start")), int(row.get_attribute("data-end"))
        assert not (start < 91000 and 90000 < end)  # never the query against itself


def test_an_error_clears_the_previous_answer(page):
    from selenium.webdriver.common.by import By

    _search(page, YCF2, k=3)
    assert page.find_elements(By.CSS_SELECTOR, "#hits tbody tr")
    _search(page, "chr9:1-100", k=3)
    status = page.find_element(By.ID, "status")
    assert "error" in status.get_attribute("class") and "chr9" in status.text
    assert not page.find_element(By.ID, "hits").is_displayed()
    assert not page.find_elements(By.CSS_SELECTOR, "#track") and not page.find_elements(By.CSS_SELECTOR, "#legend span")


def test_api_docs_render_offline_from_openapi(page, url):
    """/docs and /redoc list every endpoint from /openapi.json with no script from elsewhere (Swagger's CDN)."""
    import urllib.request

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    for path in ("/docs", "/redoc"):
        html = urllib.request.urlopen(url + path).read().decode()
        assert "<script src=" not in html and "http://" not in html and "https://" not in html  # nothing fetched
    page.get(url + "/docs")
    WebDriverWait(page, 20).until(lambda b: b.find_elements(By.CSS_SELECTOR, "section.endpoint"))
    ids = {section.get_attribute("id") for section in page.find_elements(By.CSS_SELECTOR, "section.endpoint")}
    assert {"post-/search", "post-/sql", "get-/track", "get-/stores", "get-/healthz"} <= ids
    search = page.find_element(By.ID, "post-/search").text
    assert "evalue" in search and "exclude_self" in search
