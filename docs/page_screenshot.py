"""Makes docs/page.png, the README's picture of `elman serve`'s page: the exports under
`saved_models/` (those of `elman demo`), each panel given one of its examples.

    python docs/page_screenshot.py [--base-dir saved_models] [--output docs/page.png]

Needs Chromium and its driver (Debian: apt-get install chromium chromium-driver).
"""

import argparse
import base64
import shutil
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

from elman import serving


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-dir", type=Path, default=Path("saved_models"))
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "page.png")
    parser.add_argument("--width", type=int, default=1000)
    args = parser.parse_args()

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     f"--window-size={args.width},1200", "--hide-scrollbars"):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    with serving.Server(args.base_dir, port=0, log=lambda *_: None) as server:
        try:
            browser.get(server.url + "/")
            wait = WebDriverWait(browser, 120)
            wait.until(lambda _: browser.execute_script("return document.body.dataset.ready"))
            for app, selector in (("imdb", "#imdb-examples button"),
                                  ("translation", "#translation-examples button:nth-child(2)"),
                                  ("captioning", "#captioning-examples button"),
                                  ("nextframe", "#nextframe-form button[type=submit]")):
                browser.find_element("css selector", selector).click()
                wait.until(lambda _: browser.find_element("id", app)
                           .get_attribute("data-state") in ("done", "error"))
                # The captioning example is fetched first, then captioned.
                time.sleep(1.0)
                wait.until(lambda _: browser.find_element("id", app)
                           .get_attribute("data-state") in ("done", "error"))
            # Stop the movies on a predicted frame.
            time.sleep(MOVIE_SECONDS)
            browser.find_element("id", "nextframe-pause").click()
            height = browser.execute_script("return document.documentElement.scrollHeight")
            shot = browser.execute_cdp_cmd("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": args.width, "height": height, "scale": 1}})
            args.output.write_bytes(base64.b64decode(shot["data"]))
            print(f"wrote {args.output} ({args.width} x {height})")
        finally:
            browser.quit()


MOVIE_SECONDS = 3.5  # 14 frames at 250 ms: the fourth predicted frame.

if __name__ == "__main__":
    main()
