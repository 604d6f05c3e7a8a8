"""The attention explorer page in a real browser: headless Chromium driven by Selenium types a
sentence, presses Translate, and checks the translation and the heatmap against the API.

Needs Debian's `chromium` and `chromium-driver` (`make test` installs them when it runs as root);
without them the test is skipped and says why. Run on its own against a running server, this
file saves the page's screenshot for the docs:

    python tests/test_serving_browser.py http://127.0.0.1:8000/ "A man is riding a bike." \\
        docs/figures/serve_page.png
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SENTENCE = "The young woman sees the small dogs in the park."


def browser():
    """Headless Chromium under Selenium, with a fresh profile and nothing that calls home."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console
    profile = tempfile.mkdtemp(prefix="attnkit-chromium-")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.profile_dir = profile
    return driver


def close(driver) -> None:
    driver.quit()
    shutil.rmtree(driver.profile_dir, ignore_errors=True)


def translate_on_page(driver, url: str, text: str, *, nbest: int = 1, timeout: float = 60) -> None:
    """Open the page, type `text`, press Translate, and wait for the heatmap."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver.get(url)
    wait = WebDriverWait(driver, timeout)
    wait.until(lambda d: d.find_element(By.ID, "layer").find_elements(By.TAG_NAME, "option"))
    Select(driver.find_element(By.ID, "nbest")).select_by_value(str(nbest))
    driver.find_element(By.ID, "source").send_keys(text)
    driver.find_element(By.ID, "translate").click()
    wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#heatmap .cell")))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny trained Transformer behind a real server on a free port."""
    from conftest import run_cli, tiny_training

    from attnkit.serving.server import make_server

    root = tmp_path_factory.mktemp("browser")
    done = run_cli("data", "synth", "--out", str(root / "data"), "--size", "300")
    assert done.returncode == 0, done.stderr
    overrides = ("train.max_steps=2", "model.n_heads=2", "decode.max_len_b=8")
    done = run_cli("train", *tiny_training(root / "data", root / "run", *overrides))
    assert done.returncode == 0, done.stderr
    server = make_server([root / "run"], port=0, log=None).start()
    yield server
    server.stop()


@pytest.mark.slow
def test_the_page_translates_and_draws_the_attention(served, tmp_path):
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    if missing:
        pytest.skip(
            f"no {' or '.join(missing)}: install Debian's chromium and chromium-driver "
            "(`make test` does, as root) to test the page in a browser"
        )
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    host, port = served.address
    url = f"http://{host}:{port}/"
    request = urllib.request.Request(
        url + "translate",
        data=json.dumps({"text": [SENTENCE], "attention": True}).encode(),
        headers={"Content-Type": "application/json"},
    )
    expected = json.loads(urllib.request.urlopen(request, timeout=60).read())
    attention = expected["attention"][0]
    driver = browser()
    try:
        translate_on_page(driver, url, SENTENCE)
        shown = driver.find_element(By.CSS_SELECTOR, "#results .result .best").text
        assert shown.startswith(expected["translations"][0])  # then its score
        rows, cols = len(attention["output"]), len(attention["source"])
        cells = driver.find_elements(By.CSS_SELECTOR, "#heatmap .cell")
        assert len(cells) == rows * cols
        weights = [
            [float(c.get_attribute("data-weight")) for c in cells[r * cols : (r + 1) * cols]]
            for r in range(rows)
        ]
        assert weights == attention["weights"]
        labels = [
            e.get_attribute("title") for e in driver.find_elements(By.CSS_SELECTOR, "#heatmap .col")
        ]
        assert labels == attention["source"]
        # Pointing at the first output piece lights its row and shades the source strip by it.
        ActionChains(driver).move_to_element(cells[0]).perform()
        lit = driver.find_elements(By.CSS_SELECTOR, "#heatmap .cell.on")
        assert [c.get_attribute("data-row") for c in lit] == ["0"] * cols
        strip = driver.find_elements(By.CSS_SELECTOR, "#strip .chip")
        assert [float(c.get_attribute("data-weight")) for c in strip] == attention["weights"][0]
        assert [c.find_element(By.CLASS_NAME, "w").text for c in strip] == [
            f"{w:.2f}" for w in attention["weights"][0]
        ]
        # Choosing one head asks again, and the heatmap shows that head.
        from selenium.webdriver.support.ui import Select, WebDriverWait

        Select(driver.find_element(By.ID, "head")).select_by_value("2")
        WebDriverWait(driver, 60).until(
            lambda d: "head 2 of 2" in d.find_element(By.ID, "which").text
        )
        driver.save_screenshot(str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").stat().st_size > 10_000
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []
    finally:
        close(driver)


def main(url: str, text: str, out: str) -> None:
    """Translate `text` on the page at `url` (3-best) and save a screenshot of the whole page,
    pointing at the third output piece, to `out`."""
    import base64

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver = browser()
    try:
        translate_on_page(driver, url, text, nbest=3)
        cells = driver.find_elements(By.CSS_SELECTOR, "#heatmap .cell")
        columns = len(driver.find_elements(By.CSS_SELECTOR, "#heatmap .col"))
        ActionChains(driver).move_to_element(cells[2 * columns + 2]).perform()
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
        )
        Path(out).write_bytes(base64.b64decode(shot["data"]))
    finally:
        close(driver)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
