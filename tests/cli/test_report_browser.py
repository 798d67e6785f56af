"""``scorebank report`` opened in a real headless browser (Chromium driven by Selenium): every
<img> loads (naturalWidth > 0), the console logs no error, and a screenshot is written for the
test log (into $SCOREBANK_TEST_ARTIFACTS when set, else the test's tmp_path).

CI installs Chromium and chromedriver (Debian packages) and selenium; the test is skipped
only when one of them is absent."""

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="chromium and chromedriver are not installed "
                                       "(apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,900", "--allow-file-access-from-files"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def load(browser, page: Path) -> tuple[list[tuple[str, int]], list[dict]]:
    """Open ``page``; return each image's (src, naturalWidth) once loading ended, and the
    browser's SEVERE console entries."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get_log("browser")  # drop earlier entries
    browser.get(page.as_uri())
    WebDriverWait(browser, 60).until(lambda d: d.execute_script(
        "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)"))
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])")
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    return [(src, int(w)) for src, w in images], severe


def screenshot(browser, tmp_path: Path, name: str) -> Path:
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1200, min(int(height) + 100, 16000))
    where = Path(os.environ.get("SCOREBANK_TEST_ARTIFACTS", tmp_path))
    where.mkdir(parents=True, exist_ok=True)
    path = where / name
    assert browser.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def test_the_checks_catch_a_broken_page(browser, tmp_path):
    """The same checks on a page with a missing image and a script error fail."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><img src="missing.png">'
                    '<script>undefinedFunction()</script></body></html>')
    images, severe = load(browser, page)
    assert images == [("missing.png", 0)]
    assert severe, "a missing image and a script error are SEVERE console entries"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A tiny noisy digits store with a one-cell pruning curve and its random baseline."""
    from scorebank.pipeline.config import resolve_config
    from scorebank.pipeline.prune_curve import prune_curve
    from scorebank.pipeline.scoring import score

    path = tmp_path_factory.mktemp("browser") / "noisy.zarr"
    cfg = resolve_config(dataset="digits", limit=120, model="mlp", width=16, epochs=3, batch_size=24,
                         label_noise=0.25, grand_epochs="0")
    score(cfg, (0, 1), path, device="cpu")
    prune_curve(path, score="el2n@1", strategies=["keep-highest", "random"], seeds=[0], fractions=[0.5],
                device="cpu")
    return path


def test_report_page_loads_in_chromium(browser, store, tmp_path):
    from scorebank.cli import report as report_cli
    import typer

    app = typer.Typer(pretty_exceptions_enable=False)
    report_cli.register(app)
    app.command("noop", hidden=True)(lambda: None)  # a group, so the command is named
    r = CliRunner().invoke(app, ["report", str(store), "--out", str(tmp_path / "report"), "--per-class", "3"])
    assert r.exit_code == 0, r.output
    page = tmp_path / "report" / "index.html"
    images, severe = load(browser, page)
    shown = {src for src, _ in images}
    for figure in ("curves", "margins", "forgetting", "spearman", "overlap", "pruning", "roc", "examples"):
        assert f"s0-{figure}.png" in shown, figure
    assert [src for src, width in images if width <= 0] == []
    assert severe == []
    assert screenshot(browser, tmp_path, "report-browser.png").stat().st_size > 10_000
