"""`harness site`: the pages it writes and their escaping, then, in headless Chromium, that they
work: no console error and no request outside the site, sorting, filtering, hiding columns,
links that resolve, labels that stay text, and a screenshot."""

from __future__ import annotations

import shutil
import struct
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pandas as pd
import pytest
from test_plots import cells

from harness.leaderboard import read_leaderboard, write_leaderboard
from harness.outcomes import outcomes_path, read_outcomes, write_outcomes

SCRIPT = "<script>alert(1)</script>"
IMAGE = '"><img src=x onerror=alert(1)>'
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
HOW = (
    "need Chromium and playwright: apt-get install -y chromium (Debian's package) and "
    "pip install -e '.[dev]' (playwright, pointed at that browser: nothing is downloaded)"
)


@pytest.fixture(scope="module")
def leaderboard(tmp_path_factory) -> Path:
    """The leaderboard of the plot tests (an MLP under PGD and FGSM over three seeds, a minimal-norm
    L2 attack), its MLP also adversarially trained (copied rows), and its CNN renamed to markup."""
    rows, outcomes = zip(*cells())
    frame = pd.DataFrame(list(rows)).assign(suite="<i>suite</i>", defense_plugin="standard")
    outcomes = pd.concat(outcomes, ignore_index=True)
    trained = frame[(frame["model"] == "mlp") & (frame["norm"] == "linf")]
    trained = trained.assign(defense="at", defense_plugin="advtrain", cell_id="at-" + trained["cell_id"])
    copied = outcomes[outcomes["cell_id"].isin(trained["cell_id"].str[3:])]
    outcomes = pd.concat([outcomes, copied.assign(cell_id="at-" + copied["cell_id"])], ignore_index=True)
    frame = pd.concat([frame, trained], ignore_index=True)
    cnn = frame["model"] == "cnn"
    frame.loc[cnn, "model"], frame.loc[cnn, "defense"] = SCRIPT, IMAGE
    path = tmp_path_factory.mktemp("board") / "board.csv"
    write_outcomes([outcomes], outcomes_path(path))
    write_leaderboard(frame.to_dict("records"), path)
    return path


@pytest.fixture(scope="module")
def site(leaderboard, tmp_path_factory) -> Path:
    from harness.cli import main

    other = tmp_path_factory.mktemp("other") / "other.csv"  # a second line in the index
    shutil.copy(leaderboard, other)
    shutil.copy(outcomes_path(leaderboard), outcomes_path(other))
    output = tmp_path_factory.mktemp("site") / "site"
    assert main(["site", str(leaderboard), str(other), "--output", str(output)]) == 0
    return output


class Page(HTMLParser):
    """The links, ids and tags of one page, and its tables (a list of rows of cell texts each)."""

    def __init__(self, text: str):
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.tags: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.in_cell = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append(tag)
        if "id" in attributes:
            self.ids.add(attributes["id"])
        for name in ("href", "src"):
            if name in attributes:
                self.links.append(attributes[name])
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.tables[-1][-1].append("")
            self.in_cell = True

    def handle_endtag(self, tag):
        self.in_cell = self.in_cell and tag not in ("td", "th")

    def handle_data(self, data):
        if self.in_cell:
            self.tables[-1][-1][-1] += data

    def table(self, header: str) -> pd.DataFrame:
        """The first table with a column named ``header``."""
        rows = next(t for t in self.tables if header in t[0])
        return pd.DataFrame(rows[1:], columns=rows[0])


def test_the_site_has_an_index_a_page_per_leaderboard_and_per_entry(site):
    from harness.site import _folders

    pages = sorted(path.relative_to(site).as_posix() for path in site.rglob("*.html"))
    assert {"index.html", "board/index.html", "other/index.html"} <= set(pages)
    assert len(pages) == 1 + 2 * (1 + 3)  # three (dataset, model, defense) entries each
    assert sorted(path.name for path in (site / "assets").iterdir()) == ["site.css", "site.js"]
    index = Page((site / "index.html").read_text()).table("suite")
    assert index["entries"].tolist() == ["3", "3"] and index["rows"].tolist() == ["30 / 0 / 0"] * 2
    twins = _folders([Path("a/board.csv"), Path("b/board.csv"), Path("c/other.csv")])
    assert len(set(twins)) == 3 and twins[2] == "other"


def test_every_link_resolves_and_nothing_comes_from_another_host(site):
    parsed = {path: Page(path.read_text()) for path in site.rglob("*.html")}
    for path, page in parsed.items():
        for link in page.links:
            parts = urlsplit(link)
            assert not parts.scheme and not parts.netloc, f"{path}: {link}"
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            assert target.is_file(), f"{path}: {link}"
            if parts.fragment and target.suffix == ".html":
                assert parts.fragment in parsed[target].ids, f"{path}: {link}"


def test_labels_and_parameters_are_text_never_markup(site):
    for path in site.rglob("*.html"):
        text = path.read_text()
        page = Page(text)
        assert page.tags.count("script") == 1 and "img" not in page.tags and "i" not in page.tags, path
        assert SCRIPT not in text and "<img" not in text
    text = (site / "board" / "index.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in text
    assert "<h1>&lt;i&gt;suite&lt;/i&gt;</h1>" in text


def test_entries_are_ranked_by_the_worst_case_over_attacks(site):
    table = Page((site / "board" / "index.html").read_text()).tables[1]  # the Linf table
    table = pd.DataFrame(table[1:], columns=table[0]).assign(rank=lambda t: t["rank"].astype(int))
    # mean over eps 0.1 and 0.2 of the worst case: the CNN keeps 50% and 15% (one attack), the MLP
    # 50% and 0% (PGD and FGSM break different samples), though PGD alone leaves it 25% at 0.2
    assert table["model"].tolist() == [SCRIPT, "mlp", "mlp"] and table["rank"].tolist() == [1, 2, 3]
    assert table["mean robust"].tolist() == ["32.5", "25.0", "25.0"] and table["eps 0.2"].tolist() == ["15.0", "0.0", "0.0"]
    assert table.set_index("defense").loc["none", "vs baseline"] == "baseline"
    assert table.set_index("defense").loc["at", "vs baseline"] == "no significant difference"


def test_an_entry_page_has_provenance_attacks_and_figures(site, leaderboard):
    [page] = [p for p in site.glob("board/*.html") if "mlp-none" in p.name]
    text = page.read_text()
    assert "<h2>Provenance</h2>" in text and text.count("<svg") == 3  # accuracy per norm, and the L2 attack's CDF
    attacks = [pd.DataFrame(t[1:], columns=t[0]) for t in Page(text).tables if "median L2" in t[0]]
    assert [set(t["attack"]) for t in attacks] == [{"linesearch"}, {"fgsm", "pgd", "worst case"}]
    cell_ids = set(read_leaderboard(leaderboard).query("model == 'mlp' and defense == 'none'")["cell_id"])
    assert all(cell_id in text for cell_id in cell_ids)


def test_errors_are_one_line_with_exit_2(cli, leaderboard, tmp_path):
    code, _, err = cli("site", tmp_path / "nope.csv", "--output", tmp_path / "site")
    assert code == 2 and "no such leaderboard file" in err and err.count("\n") == 1
    (tmp_path / "taken").write_text("")
    code, _, err = cli("site", leaderboard, "--output", tmp_path / "taken")
    assert code == 2 and "cannot write the site" in err and err.count("\n") == 1
    outcomes = read_outcomes(outcomes_path(leaderboard))
    assert len(outcomes)  # the fixture's files are untouched


# --- in a browser ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if BROWSER is None:
        pytest.skip(f"no Chromium on PATH: the site's browser tests {HOW}")
    sync_api = pytest.importorskip("playwright.sync_api", reason=f"no playwright: the site's browser tests {HOW}")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=BROWSER)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, site):
    """A page that records console messages, page errors, dialogs and requests outside the site."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(10_000)
    page.problems = []
    root = site.resolve().as_uri() + "/"
    page.on("console", lambda message: page.problems.append(f"console {message.type}: {message.text}"))
    page.on("pageerror", lambda error: page.problems.append(f"page error: {error}"))
    page.on("dialog", lambda dialog: (page.problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    page.on("request", lambda request: request.url.startswith(root) or page.problems.append(f"request: {request.url}"))
    yield page
    page.close()


def leaderboard_page(site: Path) -> str:
    return (site / "board" / "index.html").resolve().as_uri()


def column(page, table: str, index: int) -> list[str]:
    """The sort values (or texts) of a column, in the order the rows are shown."""
    return page.eval_on_selector_all(
        f"#{table} tbody tr:not([hidden])",
        f"rows => rows.map(row => row.cells[{index}].dataset.value ?? row.cells[{index}].textContent)",
    )


def test_pages_load_without_errors_or_requests_outside_the_site(page, site):
    for path in sorted(site.rglob("*.html")):
        page.goto(path.resolve().as_uri())
        page.wait_for_load_state("load")
        assert page.evaluate("document.querySelectorAll('table.sortable').length") >= 1
    assert page.problems == []


def test_every_link_resolves_in_the_browser(page, site):
    pages = sorted(site.rglob("*.html"))
    ids, links = {}, []
    for path in pages:
        page.goto(path.resolve().as_uri())
        ids[path.resolve().as_uri()] = set(page.eval_on_selector_all("[id]", "nodes => nodes.map(n => n.id)"))
        links += page.eval_on_selector_all("a[href]", "anchors => anchors.map(a => a.href)")  # as the browser resolves them
    assert len(links) > len(pages)
    for link in set(links):
        target, _, fragment = link.partition("#")
        assert target in ids, link
        assert not fragment or fragment in ids[target], link
    assert page.problems == []


def test_clicking_a_header_sorts_the_rows(page, site):
    page.goto(leaderboard_page(site))
    table = page.locator("table.sortable").nth(1).get_attribute("id")  # the Linf leaderboard
    headers = page.locator(f"#{table} thead th")
    clean = [headers.nth(i).inner_text().strip(" ↕") for i in range(headers.count())].index("clean")
    headers.nth(clean).locator("button").click()  # accuracies sort best first
    first = [float(v) for v in column(page, table, clean)]
    assert first == sorted(first, reverse=True) and len(set(first)) > 1
    assert headers.nth(clean).get_attribute("aria-sort") == "descending"
    headers.nth(clean).locator("button").click()
    assert [float(v) for v in column(page, table, clean)] == sorted(first)
    headers.nth(1).locator("button").click()  # text: the model labels, in order
    assert column(page, table, 1) == sorted(column(page, table, 1))
    assert page.problems == []


def test_the_search_box_hides_rows_and_columns_can_be_hidden(page, site):
    page.goto(leaderboard_page(site))
    table = page.locator("table.sortable").nth(1).get_attribute("id")
    rows = page.locator(f"#{table} tbody tr")
    search = page.locator(f'input[data-filter="{table}"]')
    search.fill("mlp at")
    assert [rows.nth(i).is_visible() for i in range(rows.count())] == [False, True, False]  # cnn, mlp at, mlp none
    search.fill("no such entry")
    assert not any(rows.nth(i).is_visible() for i in range(rows.count()))
    search.fill("")
    assert all(rows.nth(i).is_visible() for i in range(rows.count()))
    box = page.locator(f'input[data-table="{table}"][data-column="7"]')  # seeds
    box.locator("xpath=ancestor::details/summary").click()
    box.uncheck()
    assert not page.locator(f"#{table} thead th").nth(7).is_visible()
    assert not page.locator(f"#{table} tbody tr td:nth-child(8)").first.is_visible()
    box.check()
    assert page.locator(f"#{table} tbody tr td:nth-child(8)").first.is_visible()
    assert page.problems == []


def test_an_injected_label_stays_text(page, site):
    page.goto(leaderboard_page(site))
    assert page.get_by_text(SCRIPT, exact=True).count() == 1  # the model's link in the Linf table
    assert page.get_by_text(IMAGE, exact=True).count() == 1
    assert page.locator("img").count() == 0 and page.locator("script").count() == 1
    assert page.locator("h1").inner_text() == "<i>suite</i>"
    assert page.problems == []  # no alert() dialog


def test_a_screenshot_is_taken(page, site, tmp_path):
    page.goto(leaderboard_page(site))
    path = tmp_path / "leaderboard.png"
    page.screenshot(path=str(path), full_page=True)
    data = path.read_bytes()
    width, height = struct.unpack(">II", data[16:24])  # the PNG header's IHDR chunk
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and width == 1280 and height > 800 and len(data) > 20_000
